#!/usr/bin/env bash
# bench head side by side: previous main (a5c17d9) vs this code, batch 1 and 8, alternating
set -u
PY=/work/main/.venv/bin/python; O=/work/exp/s18/head; mkdir -p $O
NEW=${NEW:-/work/wt/lead}
b() { local name=$1 dir=$2 batch=$3 rep=$4
  (cd $dir && PYTHONPATH=$dir/src $PY -m latentvla.cli bench head --width 896 --heads 8 --context 577 --batch $batch \
     --iterations 1,4,8,12 --repeats ${REPEATS:-5} --threads 1 --json $O/${name}_b${batch}_$rep.json > $O/${name}_b${batch}_$rep.log 2>&1)
  python3 -c "import json;r=json.load(open('$O/${name}_b${batch}_$rep.json'));print('$name b$batch rep$rep', 'cached %.2f uncached %.2f ratio %.3f diff %.1e'%(r['cached']['per_iteration_ms'],r['uncached']['per_iteration_ms'],r['per_iteration_ratio'],r['max_abs_diff']))"
}
for rep in 1 2; do b new $NEW 1 $rep; b old /work/exp/s18/oldmain 1 $rep; done
REPEATS=2 b new $NEW 8 1; REPEATS=2 b old /work/exp/s18/oldmain 8 1
