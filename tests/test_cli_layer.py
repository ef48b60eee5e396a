"""The CLI layer itself: one `UserError` -> `error: ...` and exit 2, `--help` lists read from the registries,
`--nproc` forwarding the command as typed, and configs composed with `dataclasses.replace` equal to the ones the
old `key=value` override strings produced."""

from __future__ import annotations

import argparse

import pytest

from latentvla.cli import main
from latentvla.config import PRESETS, apply_overrides, get_preset
from latentvla.envs.registry import SIMULATORS
from latentvla.errors import UserError, message, user_errors
from latentvla.models.backbones import BACKBONE_SIZES as SIZES


def _help(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: no name broken at a hyphen
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def _option_line(text: str, option: str) -> str:
    return next(line for line in text.splitlines() if line.strip().startswith(option))


@pytest.mark.parametrize(
    ("command", "option", "names"),
    [
        (("train",), "--preset", PRESETS),
        (("train",), "--size", SIZES),
        (("bench", "latency"), "--preset", PRESETS),
        (("bench", "latency"), "--size", SIZES),
        (("bench", "memory"), "--preset", PRESETS),
        (("annotate",), "--env", SIMULATORS),
        (("collect",), "--env", SIMULATORS),
        (("eval",), "--env", SIMULATORS),
        (("rl",), "--env", SIMULATORS),
    ],
)
def test_help_lists_every_registered_name(capsys, monkeypatch, command, option, names):
    line = _option_line(_help(capsys, monkeypatch, *command), option)
    listed = [w.strip(",:") for w in line.split()]
    missing = [name for name in names if name not in listed]
    assert not missing, line
    assert "{" not in line  # every placeholder filled in


def test_help_follows_a_new_registry_entry(capsys, monkeypatch):
    import latentvla.envs.registry

    monkeypatch.setitem(latentvla.envs.registry.SIMULATORS, "toysim", "nowhere:SIMULATOR")
    assert "toysim" in _option_line(_help(capsys, monkeypatch, "eval"), "--env").split()


def test_top_level_help_imports_no_registry(capsys):
    """`latentvla --help` stays instant: the preset table (which imports torch) is read only for a command's help."""
    import subprocess
    import sys

    code = (
        "import sys; from latentvla.cli import build_parser; build_parser().format_help(); "
        "print('latentvla.config' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_user_error_is_one_line_and_exit_2(capsys):
    assert main(["bench", "latency"]) == 2
    assert capsys.readouterr().err == "error: give a checkpoint/run dir or --preset NAME (not both)\n"
    assert main(["train", "--preset", "lara-rdd", "--dataset", "d", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown preset 'lara-rdd'.") and "Did you mean" in err and err.count("\n") == 1


def test_user_errors_converts_only_the_named_types():
    with pytest.raises(UserError, match="^no such key$") as info, user_errors(KeyError, ValueError):
        raise KeyError("no such key")
    assert isinstance(info.value.__cause__, KeyError)
    assert message(KeyError("k")) == "k" and message(ValueError("v")) == "v"
    with pytest.raises(RuntimeError), user_errors(ValueError):
        raise RuntimeError("a bug stays a bug")


def test_nproc_forwards_the_command_as_typed(monkeypatch, capsys, tmp_path):
    """torchrun runs exactly the argv the user typed (flag order, `=` forms, overrides, --nproc itself), not a
    reconstruction; torchrun's own parser never sees it (`--nproc` is ambiguous there)."""
    import torch.distributed.run

    launched = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.distributed.run, "run", launched.append)
    argv = [
        "train",
        "--preset=bc",
        "--dataset",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "policy.horizon=4",
        "seed=3",
        "--nproc",
        "2",
    ]
    assert main(argv) == 0
    (launch,) = launched
    assert launch.training_script_args == argv
    assert (launch.module, launch.training_script, launch.nproc_per_node, launch.standalone) == (
        True,
        "latentvla.cli",
        "2",
        True,
    )
    assert main([*argv[:-2], "--batch-size", "3", "--nproc", "2"]) == 2  # still checked before launching
    assert "--batch-size 3 is not divisible by --nproc 2" in capsys.readouterr().err
    assert len(launched) == 1


def _demo_args(**kw) -> argparse.Namespace:
    from latentvla.scripts import demo

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo"])
    return argparse.Namespace(**{**vars(args), **kw})


@pytest.mark.parametrize(
    ("model", "steps", "minutes", "batch", "kw"),
    [
        ("rdvla", 100_000, 3.2345678901, 32, {}),
        ("lara-rd", 100_000, 1.0, 8, {"camera": "corner4,topview", "image_size": 32, "loader_workers": 0}),
        ("bc", 50, None, 64, {"seed": 7}),
        ("lara", 20, None, 16, {"camera": "corner"}),
    ],
)
def test_demo_config_equals_the_old_override_strings(model, steps, minutes, batch, kw):
    from latentvla.scripts.demo import demo_config

    args = _demo_args(**kw)
    cpu = ["policy.recurrent.mean_recurrence=12", "policy.iterations=12"] if model in ("rdvla", "lara-rd") else []
    old = apply_overrides(
        get_preset(model),
        [
            f"policy.cameras={args.camera}",
            f"policy.image_size={args.image_size}",
            f"num_workers={args.loader_workers}",
            *cpu,
            f"steps={steps}",
            f"minutes={minutes}",
            f"batch_size={batch}",
            f"seed={args.seed}",
            f"save_every={steps}",
            "log_every=25",
        ],
    )
    new = demo_config(model, args, steps, minutes, batch)
    assert new == old
    assert new != get_preset(model)  # the comparison sees the fields it sets


@pytest.mark.parametrize(
    ("preset", "seed", "steps", "overrides"),
    [("lara", 1, 30, []), ("lara-no-cot", 0, 5, ["policy.horizon=4", "steps=999", "seed=5", "lr_head=2e-3"])],
)
def test_ablation_run_config_equals_the_old_override_strings(preset, seed, steps, overrides):
    from latentvla.scripts.ablations import run_config

    old = apply_overrides(
        get_preset(preset), [*overrides, f"steps={steps}", f"seed={seed}", f"save_every={steps}"]
    )
    assert run_config(preset, seed, steps, overrides) == old
    assert (old.steps, old.seed, old.save_every) == (steps, seed, steps)


@pytest.mark.parametrize("overrides", [[], ["batch_size=3", "augment=true", "policy.horizon=4", "num_workers=2"]])
def test_bench_configs_equal_the_old_override_strings(overrides):
    from latentvla.bench.train_throughput import bench_config

    old = apply_overrides(get_preset("rdvla", "tiny"), ["batch_size=16", "augment=false", *overrides])
    assert bench_config("rdvla", 16, overrides) == old
    # bench data's training rate: the loader workers come first, the user's overrides still win
    old = apply_overrides(get_preset("bc", "tiny"), ["batch_size=8", "augment=false", "num_workers=0", *overrides])
    assert bench_config("bc", 8, overrides, num_workers=0) == old


def test_demo_retrains_a_run_left_with_only_a_partial_checkpoint(monkeypatch, tmp_path):
    """Checkpoint discovery is `train.checkpoint`'s: a run killed while writing its first checkpoint (only
    `000010.tmp`) has none, so the demo trains it again instead of evaluating nothing."""
    import json

    import latentvla.eval.evaluate
    import latentvla.train.loop

    out = tmp_path / "demo"
    (out / "data" / "meta").mkdir(parents=True)
    (out / "data" / "meta" / "info.json").write_text(json.dumps({"latentvla_collect": {"tasks": ["reach"]}}))
    (out / "runs" / "bc" / "checkpoints" / "000010.tmp").mkdir(parents=True)
    trained = []

    class Stop(Exception):
        pass

    def fake_train(cfg, data, run, **kw):
        trained.append(run.name)
        return {"end_step": 3, "seconds": 1.0, "samples_per_s": 1.0}

    monkeypatch.setattr(latentvla.train.loop, "train", fake_train)
    monkeypatch.setattr(latentvla.eval.evaluate, "evaluate", lambda *a, **k: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        main(["demo", "--out", str(out), "--models", "bc", "--steps", "3"])
    assert trained == ["bc"]


@pytest.mark.parametrize("command", [[], ["bench"], ["analyze"], ["dataset"]])
def test_a_missing_subcommand_prints_that_groups_help_and_exits_2(command, capsys):
    assert main(command) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['latentvla', *command])} [-h]")
