"""Curriculum schedules: every Table-4 ablation differs from `lara` in one factor; Coconut stage mixing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from latentvla.config import get_preset
from latentvla.models.curriculum import CurriculumConfig, StageSpec
from latentvla.train.curriculum import stage_at, stage_boundaries, training_stage

ABLATIONS = ("lara-latent-text", "lara-explicit", "lara-no-cot")


def _steps_per_stage(preset: str, total: int) -> list[tuple[StageSpec, int]]:
    b = stage_boundaries(get_preset(preset).policy.curriculum, total)
    ends = [s for s, _ in b[1:]] + [total]
    return [(stage, end - start) for (start, stage), end in zip(b, ends)]


@pytest.mark.parametrize("preset", ABLATIONS)
def test_ablations_differ_from_lara_in_one_factor(preset):
    lara, abl = get_preset("lara"), get_preset(preset)
    assert abl.policy.head == lara.policy.head == "flow"
    assert abl.steps == lara.steps
    total = 1000
    head = lambda p: sum(n for s, n in _steps_per_stage(p, total) if s.train_head)  # noqa: E731
    assert head(preset) == head("lara") == 500  # same expert budget (lara-no-cot used to get all 1000)
    assert not any(s.visual_latents for s in abl.policy.curriculum.stages())  # visual latents: lara only
    final = abl.policy.curriculum.stages()[-1]
    assert final.train_head and not final.discrete_actions  # acts through the flow expert
    want_text = preset == "lara-explicit"
    assert bool(final.explicit_components) == want_text


def test_ecot_is_its_own_token_action_preset():
    stages = get_preset("ecot").policy.curriculum.stages()
    assert len(stages) == 1 and stages[0].discrete_actions and not stages[0].train_head
    assert stages[0].explicit_components == ("subtask", "bbox", "reasoning")


def test_stage_spec_is_keyword_only():
    with pytest.raises(TypeError):
        StageSpec("I", (), (), False, True, False)  # noqa
    s = StageSpec(
        name="x",
        latent_components=(),
        explicit_components=(),
        visual_latents=False,
        discrete_actions=True,
        train_head=False,
    )
    assert dataclasses.is_dataclass(s)


def test_stage_types_live_below_train():
    import latentvla.models.vla as vla
    import latentvla.policy as policy

    for mod in (vla, policy):
        src = Path(mod.__file__).read_text()
        assert "latentvla.train" not in src, mod.__name__


def test_training_stage_mixes_earlier_stages_at_the_configured_rate():
    cfg = CurriculumConfig("lara", mix_prob=0.3)
    total = 4000
    names = [s.name for _, s in stage_boundaries(cfg, total)]
    counts = {n: 0 for n in names}
    n_iii = 0
    for step in range(total):
        scheduled = stage_at(step, cfg, total)
        got = training_stage(step, cfg, total, seed=7)
        assert names.index(got.name) <= names.index(scheduled.name)  # never a later stage
        if scheduled.name == "I":
            assert got is scheduled  # nothing earlier to mix in
        if scheduled.name == "III":
            n_iii += 1
            counts[got.name] += 1
    assert counts["III"] / n_iii == pytest.approx(0.7, abs=0.04)
    for n in ("I", "II-1", "II-2", "II-3"):  # uniform over the four earlier stages
        assert counts[n] / n_iii == pytest.approx(0.3 / 4, abs=0.025)


def test_training_stage_is_a_function_of_seed_and_step_only():
    """Every DDP rank calls it with the run seed (not seed + rank), so all ranks train the same stage."""
    cfg = CurriculumConfig("lara", mix_prob=0.5)
    a = [training_stage(s, cfg, 500, seed=3).name for s in range(500)]
    np.random.seed(123)  # global RNG state must not matter
    assert [training_stage(s, cfg, 500, seed=3).name for s in range(500)] == a
    assert [training_stage(s, cfg, 500, seed=4).name for s in range(500)] != a
    off = CurriculumConfig("lara", mix_prob=0.0)
    assert all(training_stage(s, off, 500, seed=3) is stage_at(s, off, 500) for s in range(500))
    with pytest.raises(ValueError, match="mix_prob"):
        CurriculumConfig("lara", mix_prob=1.5)
