set -u
source <(sed -n '2,13p' /work/exp/s18/sbs_train.sh)
I11="augment=true policy.cameras=corner4 policy.recurrent.mean_recurrence=12 policy.iterations=12"
for rep in 3 4; do
  run new $NEW lara,rdvla i11_new_r1_$rep.json $I11 policy.expert.repeats=1
  run old03e8 /work/exp/s18/old03e8 lara,rdvla i11_old_$rep.json $I11
done
