"""Plain image behaviour cloning (`bc` preset): the no-reasoning reference every new method is measured against.

A plain image BC policy, which reached 70 % on the six-task Meta-World set in 10 CPU minutes (one seed):

    image (B,3,64,64) ─ conv 3→32→64→64 (stride 2 each) → 64 (stride 1) ─ flatten ─ Linear(256) + LayerNorm ─┐
    instruction ─ mean of learned token embeddings (64-d)  ───────────────────────────────────────────────────┤─ MLP
    proprio (normalized, + small Gaussian noise while training) ────────────────────────────────────────────┘ 512-512
                                                                                                   → chunk (B,H,A)

trained with the masked L1 chunk loss (the random-shift augmentation is the dataset's, pad 4). The instruction
embedding is a bag of the shared tokenizer's ids, so any instruction string works (the baseline's task-id
embedding is the special case of one instruction per task) and no task list has to travel with a checkpoint.

It speaks the same two verbs as `LatentVLA` (`compute_loss`, `sample_actions`), so the dataset, training loop,
`Policy`, evaluation, latency bench and server run it unchanged. It has no reasoning tokens: its modes are "none"
(the default) and "latent", which run the same network; "explicit" is refused (there is no CoT to write).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from latentvla.constants import ACTION, ACTION_IS_PAD, OBS_IMAGES, OBS_STATE, TASK
from latentvla.models.curriculum import StageSpec, final_stage
from latentvla.models.masking import mean_over_valid_steps
from latentvla.models.sampling import SampleOptions, SampleOutput
from latentvla.models.sequence import to_device_async
from latentvla.models.tokenizer import Tokenizer


@dataclass(frozen=True)
class BCConfig:
    """Sizes of the BC policy (as measured: 1.59 M parameters at 64 px, one camera, chunk 8 x 4)."""

    channels: tuple[int, ...] = (32, 64, 64, 64)  # conv widths; all but the last have stride 2
    feature_dim: int = 256  # image features after flatten -> Linear -> LayerNorm
    text_dim: int = 64  # instruction embedding
    hidden: int = 512  # MLP width (two hidden layers)
    state_noise: float = 0.01  # std of Gaussian noise on the normalized proprio while training

    def __post_init__(self) -> None:
        if len(self.channels) < 1 or min(self.channels) < 1:
            raise ValueError(f"BCConfig.channels must be >= 1 positive widths, got {self.channels}")
        if min(self.feature_dim, self.text_dim, self.hidden) < 1 or self.state_noise < 0:
            raise ValueError("feature_dim, text_dim, hidden must be >= 1 and state_noise >= 0")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))


class ConvEncoder(nn.Module):
    """(B,3,S,S) in [0,1] -> (B, feature_dim): strided ReLU convs, flatten, Linear + LayerNorm."""

    def __init__(self, channels: tuple[int, ...], image_size: int, feature_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, side = 3, image_size
        for i, cout in enumerate(channels):
            stride = 2 if i < len(channels) - 1 else 1
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU()]
            cin, side = cout, (side + 2 - 3) // stride + 1
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.proj = nn.Sequential(nn.Linear(cin * side * side, feature_dim), nn.LayerNorm(feature_dim))

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(self.convs(images * 2.0 - 1.0))


class BCPolicyModel(nn.Module):
    """Conv encoder per camera (shared weights) + instruction embedding + proprio -> MLP -> action chunk."""

    def __init__(self, cfg) -> None:  # cfg: latentvla.config.PolicyConfig (config imports models)
        super().__init__()
        self.cfg, bc = cfg, cfg.bc
        self.final: StageSpec = final_stage(cfg.curriculum)
        self.stage = self.final  # the one stage it has (checkpoints record it; `set_stage` checks the name)
        self.tokenizer = Tokenizer(cfg.backbone.extra_words, cfg.num_action_bins)
        self.encoder = ConvEncoder(bc.channels, cfg.image_size, bc.feature_dim)
        self.text_embed = nn.EmbeddingBag(self.tokenizer.vocab_size, bc.text_dim, mode="mean")
        state_dim = cfg.state_dim if cfg.use_state else 0
        inp = bc.feature_dim * len(cfg.cameras) + bc.text_dim + state_dim
        self.mlp = nn.Sequential(
            nn.Linear(inp, bc.hidden),
            nn.ReLU(),
            nn.Linear(bc.hidden, bc.hidden),
            nn.ReLU(),
            nn.Linear(bc.hidden, cfg.horizon * cfg.action_dim),
        )
        self._token_cache: dict[str, list[int]] = {}

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """The encoders train at the backbone LR, the MLP at the head LR (the loop's two groups)."""
        head = list(self.mlp.parameters())
        ids = {id(p) for p in head}
        return {"backbone": [p for p in self.parameters() if id(p) not in ids], "head": head}

    def on_optimizer_step(self, step: int, total_steps: int | None = None) -> None:  # no EMA target
        return None

    def _instruction(self, tasks: list[str], device: torch.device) -> Tensor:
        ids, offsets = [], []
        for t in tasks:
            if t not in self._token_cache:
                self._token_cache[t] = self.tokenizer.encode(t.strip()) or [self.tokenizer.pad_id]
            offsets.append(len(ids))
            ids += self._token_cache[t]
        # host lists -> device without a blocking copy (a pageable host-to-device copy waits for the device)
        return self.text_embed(
            to_device_async(torch.tensor(ids), device), to_device_async(torch.tensor(offsets), device)
        )

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """Normalized action chunk (B, H, A); `generator` draws the proprio noise (training only)."""
        feats = [self.encoder(batch[f"{OBS_IMAGES}.{cam}"]) for cam in self.cfg.cameras]
        parts = [*feats, self._instruction(list(batch[TASK]), feats[0].device)]
        if self.cfg.use_state:
            state = batch[OBS_STATE].to(feats[0].dtype)
            if self.training and self.cfg.bc.state_noise > 0:
                dev = generator.device if generator is not None else state.device
                noise = torch.randn(state.shape, generator=generator, device=dev).to(state)
                state = state + self.cfg.bc.state_noise * noise
            parts.append(state)
        out = self.mlp(torch.cat(parts, dim=-1))
        return out.view(-1, self.cfg.horizon, self.cfg.action_dim)

    def compute_loss(
        self, batch: dict, stage: StageSpec, generator: torch.Generator | None = None, *, step: int | None = None
    ):
        """Per-sample masked L1 over the chunk (B,) and metrics."""
        pred = self(batch, generator)
        l1 = (pred - batch[ACTION]).abs().mean(dim=-1)  # (B, H)
        loss = stage.w_head * mean_over_valid_steps(l1, batch.get(ACTION_IS_PAD))
        mean = loss.detach().mean()  # a tensor: the loop reads metrics on the host only at log steps
        return loss, {"loss_l1": mean, "loss": mean}

    def set_stage(self, name: str) -> None:
        if name != self.final.name:
            raise ValueError(f"the bc policy has one stage, {self.final.name!r}, not {name!r}")

    @property
    def modes(self) -> tuple[str, ...]:
        """No reasoning: "none" (the default) and "latent" run the same network; there is no CoT to write."""
        return ("none", "latent")

    @torch.no_grad()
    def sample_actions(self, batch: dict, options: SampleOptions | None = None, **overrides) -> SampleOutput:
        """The chunk for each observation; every mode runs the same network (there is nothing to reason with),
        and the recurrent / flow options (iterations, halting, steps, noise) do not apply."""
        opts = replace(options or SampleOptions(), **overrides)
        if opts.mode is not None and opts.mode not in self.modes:
            raise ValueError(f"the bc policy has no reasoning to write: mode must be one of {self.modes}")
        return SampleOutput(self(batch))
