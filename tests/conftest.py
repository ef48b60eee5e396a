"""Shared test setup: one torch thread (tiny ops on a shared 2-core machine are fastest single-threaded)."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model / data hub (latentvla/hub.py)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the client tests run without torch
    pass


# ---------------------------------------------------------------------------------- shared fixtures
# Session-scoped and read-only: tests must not write into them (copy first).
try:
    import pytest

    @pytest.fixture(scope="session")
    def synthetic_dataset(tmp_path_factory):
        """A 2-episode x 12-frame synthetic LeRobot v3.0 dataset at 32 px with CoT annotation."""
        from latentvla.data.synthetic import write_synthetic_dataset

        return write_synthetic_dataset(
            tmp_path_factory.mktemp("shared") / "ds", num_episodes=2, length=12, image_size=32
        )

    @pytest.fixture(scope="session")
    def micro_backbone():
        """The smallest built-in backbone (random init, seed 0) at 32 px."""
        import torch

        from latentvla.models.backbones import BackboneConfig, build_backbone

        torch.manual_seed(0)
        return build_backbone(BackboneConfig(size="micro"), image_size=32).eval()
except ImportError:  # pragma: no cover
    pass
