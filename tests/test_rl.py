"""RL post-training: likelihoods, advantages, PPO / GRPO, the loop on a toy simulator registered through
the simulator protocol, exact resume, and that the output is an ordinary checkpoint (eval / from_pretrained)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentvla.cli import main as cli
from latentvla.models import flow_matching as fm
from latentvla.rl.advantages import gae, group_advantages
from latentvla.rl.likelihood import flow_noise_log_prob, flow_noise_sample, gaussian_log_prob
from latentvla.rl.losses import clipped_surrogate
from rl_toy_sim import NAME, register, start_checkpoint

BC_TINY = ("policy.bc.channels=8,8", "policy.bc.feature_dim=16", "policy.bc.hidden=32")


# ------------------------------------------------------------------------------------------- pure maths


def test_flow_noise_chain_log_prob_equals_direct_gaussian_density():
    """Tiny case: v(x, t) = w * x + t, K = 3 steps, per-step std. The chain's log-probability (sum over steps of
    the transition densities) equals a float64 computation of the multivariate Gaussian densities."""
    torch.manual_seed(0)
    w = 0.7
    vel = lambda x, t: w * x + t[:, None, None]  # noqa: E731
    K, B, H, A = 3, 2, 2, 1
    log_std = torch.tensor([[-1.0], [-1.5], [-0.5]])
    chain = flow_noise_sample(
        vel, torch.randn(B, H, A, dtype=torch.float64), log_std.double(), K, torch.Generator().manual_seed(1)
    )
    assert chain.shape == (B, K + 1, H, A)
    ours = flow_noise_log_prob(vel, chain, log_std.double()).sum(dim=(1, 2, 3)).numpy()
    c = chain.numpy()
    direct = np.zeros(B)
    for b in range(B):
        for k in range(K):
            mean = c[b, k] + (1 / K) * (w * c[b, k] + k / K)
            var = math.exp(2 * float(log_std[k, 0])) * np.eye(H * A)
            d = (c[b, k + 1] - mean).reshape(-1)
            direct[b] += -0.5 * d @ np.linalg.inv(var) @ d - 0.5 * np.log(np.linalg.det(2 * np.pi * var))
    np.testing.assert_allclose(ours, direct, rtol=1e-10)
    # sigma = 0 (log_std None) is the ordinary Euler sampler of the flow expert
    x0 = torch.randn(B, H, A, dtype=torch.float64)
    torch.testing.assert_close(flow_noise_sample(vel, x0, None, K)[:, -1], fm.euler_integrate(vel, x0, K))


def test_gaussian_log_prob_matches_torch_normal():
    x, m, ls = torch.randn(5, 3), torch.randn(5, 3), torch.randn(3)
    ref = torch.distributions.Normal(m, ls.exp()).log_prob(x)
    torch.testing.assert_close(gaussian_log_prob(x, m, ls), ref)


def test_gae_equals_direct_sums():
    r, v = torch.tensor([0.0, 0.5, 1.0, 0.0]), torch.tensor([0.2, 0.1, 0.4, 0.3])
    gamma, lam, boot = 0.9, 0.8, 0.25
    adv, ret = gae(r, v, boot, gamma, lam)
    nxt = torch.cat([v[1:], torch.tensor([boot])])
    delta = r + gamma * nxt - v
    direct = torch.tensor([sum((gamma * lam) ** (j - t) * delta[j] for j in range(t, 4)) for t in range(4)])
    torch.testing.assert_close(adv, direct)
    torch.testing.assert_close(ret, direct + v)
    # lam = 1: Monte-Carlo return minus the value
    adv1, _ = gae(r, v, 0.0, 1.0, 1.0)
    torch.testing.assert_close(adv1 + v, torch.flip(torch.cumsum(torch.flip(r, [0]), 0), [0]))


def test_grpo_advantages_are_zero_mean_per_group():
    returns = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 3.0, 1.0, 2.0, 0.5])
    groups = torch.arange(12) // 4
    adv = group_advantages(returns, groups)
    for g in range(3):
        assert abs(float(adv[groups == g].mean())) < 1e-6
    assert torch.all(adv[groups == 1] == 0)  # all-equal group: nothing to learn
    assert float(adv[groups == 0].std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_clipped_surrogate_at_ratio_one_is_the_policy_gradient():
    logp = torch.randn(4, 6, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    loss, ratio, clipfrac = clipped_surrogate(logp, logp.detach(), adv, 0.2, "element")
    assert torch.all(ratio == 1) and float(clipfrac) == 0
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None].expand(4, 6) / 24)
    # a ratio far outside the clip range on the advantage's side gets no gradient
    lp = torch.zeros(1, 1, requires_grad=True)
    loss, _, frac = clipped_surrogate(lp, torch.tensor([[-1.0]]), torch.tensor([1.0]), 0.2, "chunk")
    loss.backward()
    assert float(lp.grad) == 0 and float(frac) == 1


# ------------------------------------------------------------------------------- the loop on a toy sim


def _rl(tmp_path, init, out, *extra):
    return cli(["rl", str(init), "--env", NAME, "--tasks", NAME, "--out", str(out), "--no-progress", *extra])


@pytest.fixture
def toy(monkeypatch):
    register(monkeypatch)


def test_rl_raises_success_and_writes_an_ordinary_checkpoint(tmp_path, toy):
    """A poor (untrained) bc policy: PPO raises held-out success from 0 to >= 80 % in seconds; the output loads
    with Policy.from_pretrained and `latentvla eval` measures the same held-out success."""
    from latentvla.policy import Policy

    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    out = tmp_path / "rl"
    assert _rl(tmp_path, init, out, "--algo", "ppo", "--updates", "15", "--set", "lr=1e-3", "eval_every=15") == 0
    summary = json.loads((out / "rl_summary.json").read_text())
    assert summary["before"][NAME] <= 10.0 and summary["after"][NAME] >= 80.0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(16))
    for key in ("loss_pg", "loss_value", "approx_kl", "log_std", "entropy", "env_steps", "rollout_success"):
        assert key in rows[-1]
    assert (out / "tensorboard").is_dir()
    policy = Policy.from_pretrained(out)  # strict load: no RL-only tensors in the policy weights
    assert policy.config.preset == "bc"
    ev = tmp_path / "eval"
    assert (
        cli(
            [
                "eval",
                str(out),
                "--env",
                NAME,
                "--tasks",
                NAME,
                "--episodes",
                "10",
                "--workers",
                "1",
                "--quiet",
                "--out",
                str(ev),
            ]
        )
        == 0
    )
    info = json.loads((ev / "eval_info.json").read_text())
    assert info["overall"]["pc_success"] == pytest.approx(summary["after"][NAME])


def test_grpo_dense_reward_raises_success(tmp_path, toy):
    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    out = tmp_path / "rl"
    assert (
        _rl(
            tmp_path,
            init,
            out,
            "--algo",
            "grpo",
            "--num-envs",
            "8",
            "--group-size",
            "4",
            "--updates",
            "20",
            "--set",
            "lr=1e-3",
            "reward=dense",
            "eval_every=20",
        )
        == 0
    )
    s = json.loads((out / "rl_summary.json").read_text())
    assert s["algorithm"] == "grpo" and s["after"][NAME] >= s["before"][NAME] + 50


def _actor_and_rollout(tmp_path, preset, algo="ppo", *overrides):
    from latentvla.envs.registry import get_simulator
    from latentvla.policy import Policy
    from latentvla.rl.actor import Actor
    from latentvla.rl.config import RLConfig
    from latentvla.rl.rollout import Slots, collect

    start_checkpoint(tmp_path / preset, preset, *overrides)
    cfg = RLConfig(
        init=str(tmp_path / preset),
        env=NAME,
        tasks=(NAME,),
        algo=algo,
        num_envs=2,
        group_size=2,
        max_steps=8,
        minibatches=2,
    )
    policy = Policy.from_pretrained(tmp_path / preset)
    actor = Actor(policy, cfg, execute=4)
    slots = Slots.build(get_simulator(NAME), [NAME], cfg, policy, 4)
    ro = collect(actor, slots, [3, 5], torch.Generator().manual_seed(0), 0, None)
    return actor, ro, cfg


@pytest.mark.parametrize("preset", ["bc", "rdvla", "lara", "lara-rd"])
def test_ppo_ratio_is_exactly_one_on_the_first_epoch(tmp_path, toy, preset):
    """Every head: the first minibatch of an update sees ratio exactly 1 (old log-probs recomputed on the update's
    code path); the rollout's own log-probs agree to float rounding."""
    from latentvla.rl.loop import advantages, build_optimizer, update

    actor, ro, cfg = _actor_and_rollout(tmp_path, preset, "ppo", *(BC_TINY if preset == "bc" else ()))
    E = {"bc": 4, "rdvla": 4, "lara": actor.K * 8, "lara-rd": 4}[preset]  # executed steps x 1; flow: K x H x 1
    kind = {"bc": "bc", "rdvla": "recurrent", "lara": "flow", "lara-rd": "recurrent"}[preset]
    assert actor.kind == kind and ro.logp.shape[1] == E
    with torch.enable_grad():
        fresh = actor.distribution(ro.batch, ro.aux).log_prob().detach()
    torch.testing.assert_close(fresh, ro.logp, atol=1e-4, rtol=1e-4)
    adv, ret = advantages(ro, cfg)
    metrics = update(actor, ro, adv, ret, build_optimizer(actor, cfg), cfg, torch.Generator().manual_seed(0))
    assert metrics["ratio_dev_first"] == 0.0
    assert math.isfinite(metrics["loss_value"])


def test_lara_latent_reasoning_receives_gradient(tmp_path, toy, monkeypatch):
    """The thinking tokens (each the previous Coconut pass's last hidden state fed back as an input) are on the
    RL loss's gradient path: every thought gets a non-zero gradient."""
    from latentvla.models import thinking

    actor, ro, _ = _actor_and_rollout(tmp_path, "lara")
    assert actor.model.stage.num_thinking > 0
    with torch.no_grad():  # AdaLN-Zero: an untrained expert ignores its context; open the gates like training does
        for name, p in actor.model.head.named_parameters():
            if "ada" in name:
                p.normal_(0.0, 0.05)
    thoughts = []
    original = thinking._thought

    def recording(backbone, h):
        t = original(backbone, h)
        t.retain_grad()
        thoughts.append(t)
        return t

    monkeypatch.setattr(thinking, "_thought", recording)
    logp = actor.distribution(ro.batch, ro.aux).log_prob()
    (-(logp.sum(1) * torch.linspace(-1, 1, len(logp))).mean()).backward()
    assert len(thoughts) == actor.model.stage.num_thinking
    for t in thoughts:
        assert t.grad is not None and float(t.grad.abs().sum()) > 0


def _weights(run):
    from latentvla.train.checkpoint import latest_checkpoint, load_training_state

    last = latest_checkpoint(run)
    return load_file(str(last / "model.safetensors")), load_training_state(last)


def test_resume_equals_an_uninterrupted_run(tmp_path, toy):
    """Stop after 2 updates, --resume to 4: the same weights, RL parameters and optimizer as 4 in one go."""
    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    common = ("--algo", "ppo", "--num-envs", "4", "--set", "lr=1e-3", "save_every=2", "eval_every=2")
    assert _rl(tmp_path, init, tmp_path / "a", "--updates", "4", *common) == 0
    assert _rl(tmp_path, init, tmp_path / "b", "--updates", "2", *common) == 0
    assert _rl(tmp_path, init, tmp_path / "b", "--updates", "4", "--resume", *common) == 0
    (wa, sa), (wb, sb) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert torch.equal(sa["log_std"], sb["log_std"])
    assert all(torch.equal(sa["value_head"][k], sb["value_head"][k]) for k in sa["value_head"])
    assert sa["env_steps"] == sb["env_steps"] and sa["heldout"] == sb["heldout"]
    ra = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_pg"] for r in ra[1:]] == [r["loss_pg"] for r in rb[1:]]


def test_one_line_errors(tmp_path, toy, capsys):
    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    assert _rl(tmp_path, tmp_path / "nothing", tmp_path / "o1", "--updates", "1") == 2
    assert "No checkpoint at" in capsys.readouterr().err
    assert cli(["rl", str(init), "--env", NAME, "--tasks", "reach1e", "--out", str(tmp_path / "o2")]) == 2
    assert "did you mean" in capsys.readouterr().err.lower()
    assert cli(["rl", str(init), "--env", "metawrld", "--tasks", "reach", "--out", str(tmp_path / "o3")]) == 2
    assert "metaworld" in capsys.readouterr().err
    assert _rl(tmp_path, init, tmp_path / "o4", "--algo", "grpo", "--num-envs", "6", "--group-size", "4") == 2
    assert "group_size" in capsys.readouterr().err
    out = tmp_path / "o5"
    assert _rl(tmp_path, init, out, "--updates", "1", "--num-envs", "2") == 0
    capsys.readouterr()
    assert _rl(tmp_path, init, out, "--updates", "1", "--num-envs", "2") == 2  # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert _rl(tmp_path, init, out, "--updates", "2", "--num-envs", "2", "--resume", "--set", "clip=0.1") == 2
    err = capsys.readouterr().err
    assert "clip" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lara", "rdvla"])
@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_every_reasoning_head_runs_both_algorithms_and_loads(tmp_path, toy, preset, algo):
    """`latentvla rl` from lara and rdvla checkpoints with PPO and GRPO (bc: the tests above); the output loads
    with Policy.from_pretrained (what `serve` does) and acts."""
    from latentvla.policy import Policy

    init = tmp_path / "init"
    start_checkpoint(init, preset)
    out = tmp_path / "rl"
    assert (
        _rl(
            tmp_path,
            init,
            out,
            "--algo",
            algo,
            "--num-envs",
            "2",
            "--group-size",
            "2",
            "--updates",
            "1",
            "--eval-episodes",
            "1",
            "--set",
            "max_steps=8",
            "lr=1e-3",
            "reward=dense",
        )
        == 0
    )
    # (dense reward: an untrained policy's binary successes are all 0, and GRPO would see no signal)
    policy = Policy.from_pretrained(out)
    before = Policy.from_pretrained(init)
    changed = [k for k, v in policy.model.state_dict().items() if not torch.equal(v, before.model.state_dict()[k])]
    assert changed  # the update moved the policy's own weights
    obs = {
        "observation.images.corner4": np.zeros((32, 32, 3), np.uint8),
        "observation.state": np.zeros(1),
        "task": "reach the green mark",
    }
    assert policy.infer(obs)["actions"].shape == (policy.config.horizon, 1)


def test_summary_script_on_a_toy_run(tmp_path, toy):
    """runs/rl_metaworld.sh's last step (python -m latentvla.rl.summary) on the same layout from a toy run:
    before/after from `latentvla eval`, minutes and env steps from the RL run, the plot."""
    from latentvla.rl import summary

    root, init = tmp_path / "root", tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    assert _rl(tmp_path, init, root / "rl" / "bc_ppo", "--updates", "6", "--set", "lr=1e-3") == 0
    for name, ckpt in (("bc_before", init), ("bc_ppo_after", root / "rl" / "bc_ppo")):
        assert (
            cli(
                [
                    "eval",
                    str(ckpt),
                    "--env",
                    NAME,
                    "--tasks",
                    NAME,
                    "--episodes",
                    "10",
                    "--workers",
                    "1",
                    "--quiet",
                    "--out",
                    str(root / "eval" / name),
                ]
            )
            == 0
        )
    out = tmp_path / "docs"
    assert summary.main(["--root", str(root), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    run = json.loads((root / "rl" / "bc_ppo" / "rl_summary.json").read_text())
    entry = s["bc"]
    assert entry["algorithm"] == "ppo" and entry["source"] == "latentvla eval"
    assert entry["env_steps"] == run["env_steps"] and entry["updates"] == 6
    assert entry[NAME] == {"before": run["before"][NAME], "after": run["after"][NAME]}  # same held-out episodes
    assert (out / "rl.png").stat().st_size > 0


@pytest.mark.slow
def test_kill_during_rl_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGKILL in the middle of a run (subprocess), then --resume: the same weights as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rl_toy_sim import __file__ as toy_file

    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([os.path.dirname(toy_file), os.environ.get("PYTHONPATH", "")]),
    }
    code = (
        "import sys, rl_toy_sim; from latentvla.envs import registry; "
        "registry.SIMULATORS['reach1d'] = 'rl_toy_sim:SIMULATOR'; from latentvla.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )

    def cmd(out, *extra):
        return [
            sys.executable,
            "-c",
            code,
            "rl",
            str(init),
            "--env",
            NAME,
            "--tasks",
            NAME,
            "--out",
            str(out),
            "--no-progress",
            "--updates",
            "12",
            "--num-envs",
            "4",
            "--set",
            "lr=1e-3",
            "save_every=1",
            *extra,
        ]

    subprocess.run(cmd(tmp_path / "a"), env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.is_dir() and any(p.name == "000004" for p in ckpts.iterdir())):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "rl_summary.json").exists()  # killed before the end
    subprocess.run(cmd(tmp_path / "b", "--resume"), env=env, check=True, capture_output=True)
    (wa, sa), (wb, sb) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert sa["update"] == sb["update"] == 12
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and torch.equal(sa["log_std"], sb["log_std"])


@pytest.mark.sim
@pytest.mark.slow
def test_metaworld_smoke(tmp_path):
    """One PPO update on Meta-World reach from a tiny untrained policy shaped for it (64 px corner4 camera)."""
    pytest.importorskip("metaworld")
    from latentvla.envs.registry import get_simulator

    sim = get_simulator("metaworld")
    init = tmp_path / "init"
    _sized_checkpoint(init, sim, "bc", *BC_TINY)
    out = tmp_path / "rl"
    assert (
        cli(
            [
                "rl",
                str(init),
                "--env",
                "metaworld",
                "--tasks",
                "reach",
                "--out",
                str(out),
                "--no-progress",
                "--updates",
                "1",
                "--num-envs",
                "2",
                "--eval-episodes",
                "1",
                "--set",
                "max_steps=8",
            ]
        )
        == 0
    )
    s = json.loads((out / "rl_summary.json").read_text())
    assert s["tasks"] == ["reach-v3"] and s["env_steps"] == 16


def _sized_checkpoint(path, sim, preset, *overrides, size: int = 64):
    from dataclasses import replace

    from latentvla.config import apply_overrides, get_preset
    from latentvla.constants import ACTION, OBS_STATE
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    cfg = apply_overrides(get_preset(preset, "micro"), [f"policy.image_size={size}", *overrides])
    pcfg = replace(cfg.policy, state_dim=sim.state_dim, action_dim=sim.action_dim, cameras=sim.default_cameras[:1])
    z = lambda n, v: [float(v)] * n  # noqa: E731
    S, A = sim.state_dim, sim.action_dim
    stats = {
        OBS_STATE: {"mean": z(S, 0), "std": z(S, 1), "min": z(S, -1), "max": z(S, 1)},
        ACTION: {"mean": z(A, 0), "std": z(A, 1), "min": z(A, -1), "max": z(A, 1)},
    }
    torch.manual_seed(0)
    Policy(pcfg, Normalizer(stats)).save_pretrained(path)


@pytest.mark.libero
@pytest.mark.slow
def test_libero_smoke(tmp_path, preset="lara"):
    """`--env libero` runs the same loop: a few GRPO updates on one task with a tiny lara (flow head; ~110 s, most
    of it building the LIBERO environments)."""
    pytest.importorskip("libero")
    from latentvla.envs.registry import get_simulator

    sim = get_simulator("libero")
    init = tmp_path / "init"
    _sized_checkpoint(init, sim, preset, *(BC_TINY if preset == "bc" else ()))
    out = tmp_path / "rl"
    assert (
        cli(
            [
                "rl",
                str(init),
                "--env",
                "libero",
                "--tasks",
                "libero_object:0",
                "--algo",
                "grpo",
                "--out",
                str(out),
                "--no-progress",
                "--updates",
                "2",
                "--num-envs",
                "2",
                "--group-size",
                "2",
                "--eval-episodes",
                "1",
                "--set",
                "max_steps=8",
            ]
        )
        == 0
    )
    s = json.loads((out / "rl_summary.json").read_text())
    assert s["updates"] == 2 and s["env_steps"] == 2 * 2 * 8


def test_kl_anchor_keeps_the_policy_near_its_start(tmp_path, toy):
    """kl_coef > 0: the exact Gaussian KL to the starting policy is logged and holds the policy's actions closer to
    the starting policy's (on held-out observations) than the same run without it."""
    from latentvla.policy import Policy
    from rl_toy_sim import SIMULATOR

    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    env = SIMULATOR.make(NAME, image_size=32)
    obs = [env.reset(episode=i, split="eval")[0] for i in range(8)]
    start = Policy.from_pretrained(init).sample(obs)[0]
    moved = {}
    for kl in ("0", "30"):
        out = tmp_path / f"kl{kl}"
        assert (
            _rl(tmp_path, init, out, "--updates", "4", "--num-envs", "4", "--set", "lr=1e-3", f"kl_coef={kl}") == 0
        )
        moved[kl] = float(np.abs(Policy.from_pretrained(out).sample(obs)[0] - start).mean())
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert ("kl_ref" in rows[-1]) == (kl != "0")
    assert moved["30"] < 0.5 * moved["0"]


@pytest.mark.slow
def test_ray_workers_give_the_same_rollout(tmp_path, toy, monkeypatch):
    """`--ray-workers 2` (local Ray, ray.init(num_cpus=2)): the environments step on two Ray actors and the
    rollout is identical to the in-process one (every episode is seeded by its reset)."""
    import os

    ray = pytest.importorskip("ray")
    import rl_toy_sim
    from latentvla.envs.registry import get_simulator
    from latentvla.policy import Policy
    from latentvla.rl.actor import Actor
    from latentvla.rl.config import RLConfig
    from latentvla.rl.rollout import Slots, collect

    here = os.path.dirname(rl_toy_sim.__file__)  # the workers import the toy simulator by its registry entry
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    start_checkpoint(tmp_path / "init", "bc", *BC_TINY)
    cfg = RLConfig(init=str(tmp_path / "init"), env=NAME, tasks=(NAME,), num_envs=4, max_steps=12)
    policy = Policy.from_pretrained(tmp_path / "init")
    actor = Actor(policy, cfg, execute=4)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outs = []
        for workers in (0, 2):
            slots = Slots.build(get_simulator(NAME), [NAME], cfg, policy, 4, ray_workers=workers)
            try:
                outs.append(collect(actor, slots, [11, 12, 13, 14], torch.Generator().manual_seed(0), 0, None))
            finally:
                slots.close()
    finally:
        ray.shutdown()
    local, remote = outs
    assert type(slots.backend).__name__ == "RayEnvs"
    assert local.env_steps == remote.env_steps and np.array_equal(local.success, remote.success)
    assert torch.equal(local.logp, remote.logp) and torch.equal(local.reward, remote.reward)
    img = "observation.images.corner4"
    assert torch.equal(local.batch[img], remote.batch[img])


def test_sigterm_finishes_the_update_and_writes_a_checkpoint(tmp_path, toy, monkeypatch, capsys):
    """SIGTERM during an update: the update finishes, a checkpoint is written, exit 128 + 15; --resume continues
    to the same weights as an uninterrupted run."""
    import os
    import signal

    from latentvla.rl import loop

    init = tmp_path / "init"
    start_checkpoint(init, "bc", *BC_TINY)
    common = ("--updates", "3", "--num-envs", "4", "--set", "lr=1e-3", "save_every=10")
    assert _rl(tmp_path, init, tmp_path / "a", *common) == 0
    original, calls = loop.update, []

    def update_then_sigterm(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(loop, "update", update_then_sigterm)
    assert _rl(tmp_path, init, tmp_path / "b", *common) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "SIGTERM: stopped after update 1" in err and "--resume" in err
    assert (tmp_path / "b" / "checkpoints" / "000001").is_dir()
    assert _rl(tmp_path, init, tmp_path / "b", *common, "--resume") == 0
    (wa, _), (wb, _) = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_rl_progress_bar_shows_rl_metrics_not_a_missing_loss(tmp_path):
    """RL rows have no `loss` or LR: the bar used to read `loss=nan, lr=0.00e+00`; it shows the RL metrics."""
    from latentvla.rl.loop import RL_POSTFIX
    from latentvla.train.logging import MetricsLogger

    logger = MetricsLogger(tmp_path, 3, show_progress=True, desc="rl", postfix_keys=RL_POSTFIX)
    logger.log(0, "rl", {"heldout_success": 60.0, "env_steps": 0.0}, 6)
    assert logger._bar.postfix == "heldout_success=60"
    logger.log(1, "rl", {"approx_kl": 1.5e-4, "rollout_success": 50.0, "loss_pg": -2e-4}, 6)
    assert "nan" not in logger._bar.postfix and "approx_kl=0.00015" in logger._bar.postfix
    logger.close()
    train_logger = MetricsLogger(tmp_path / "t", 3, show_progress=True)  # a training run's bar is unchanged
    train_logger.log(1, "III", {"loss": 0.5, "lr_backbone": 1e-3}, 8)
    assert "loss=0.5000" in train_logger._bar.postfix and "lr=1.00e-03" in train_logger._bar.postfix
    train_logger.close()
