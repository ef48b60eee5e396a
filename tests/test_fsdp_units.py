"""FSDP2 layout and precision (train/parallel.py) on 2 gloo processes, a tiny tied-embedding Qwen-style HF LM:

- under the bf16 policy the LM blocks compute in bf16 but the batch, the flow time t, the noise target and the
  losses stay fp32, as under DDP + autocast (on main the root's default `cast_forward_inputs=True` cast the whole
  batch to bf16 on CUDA; on CPU main ignored `bf16` altogether, so this test fails there on the bf16 check);
- the vision tower, the (tied) embedding + LM head and the action expert are FSDP units of their own;
- with gradient accumulation only the last micro-batch reduce-scatters (same count as without accumulation);
- the EMA update gathers the online tower in ONE all-gather and gets the same target as per-tensor gathers.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from latentvla.config import apply_overrides, get_preset, use_backbone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg, dataset: str) -> None:  # noqa: PLR0915 - one scenario, read top to bottom
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import copy
    from collections import defaultdict

    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group

    from latentvla.data.dataset import VLADataset, make_normalizer
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.models import ema as ema_lib
    from latentvla.models import flow_matching as fm
    from latentvla.policy import Policy
    from latentvla.train import loop, parallel

    dist.init_process_group("gloo", rank=rank, world_size=2)
    reader = LeRobotDatasetReader(dataset)
    cfg = loop.fit_policy_to_dataset(cfg, reader)
    torch.manual_seed(0)
    model = Policy(cfg.policy, make_normalizer(reader)).model
    loss_module = parallel.wrap(loop.LossModule(model), model, "fsdp", torch.device("cpu"), 2, bf16=True)
    bb = model.backbone

    # -- precision: record what the flow loss sees
    seen: dict[str, list[torch.dtype]] = defaultdict(list)
    interpolate, flow_loss = fm.interpolate, fm.flow_matching_loss

    def spy_interpolate(noise, target, t):
        seen["noise"].append(noise.dtype), seen["actions"].append(target.dtype), seen["t"].append(t.dtype)
        return interpolate(noise, target, t)

    def spy_loss(pred, target, *args):
        out = flow_loss(pred, target, *args)
        seen["flow_target"].append(target.dtype), seen["flow_loss"].append(out.dtype)
        return out

    fm.interpolate, fm.flow_matching_loss = spy_interpolate, spy_loss
    block = parallel.transformer_blocks(bb)[0]
    block.register_forward_pre_hook(
        lambda m, args, kw: seen["block_input"].append(kw.get("hidden_states", args[0] if args else None).dtype),
        with_kwargs=True,
    )  # noqa: E501

    # -- reduce-scatters: with accumulation, none during the first micro-batch; the last one reduces every unit
    reduced: list[str] = []
    foreach_reduce = _fsdp_param_group.foreach_reduce

    def counting(fsdp_params, *args, **kwargs):
        reduced.append(fsdp_params[0]._param_fqn)
        return foreach_reduce(fsdp_params, *args, **kwargs)

    _fsdp_param_group.foreach_reduce = counting
    at_micro_start: list[int] = []
    to_device = loop.to_device
    loop.to_device = lambda batch, device: (at_micro_start.append(len(reduced)), to_device(batch, device))[1]
    stage = next(s for s in cfg.policy.curriculum.stages() if s.train_head)  # stage III: everything trains
    data = VLADataset(
        dataset,
        chunk_size=cfg.policy.horizon,
        cameras=list(cfg.policy.cameras),
        normalizer=make_normalizer(reader),
        augment=False,
    )
    full = next(iter(torch.utils.data.DataLoader(data, batch_size=8, shuffle=False)))

    def cut(b: dict, i: int, n: int) -> dict:
        return {k: v[i : i + n] if torch.is_tensor(v) or isinstance(v, list) else v for k, v in b.items()}

    mine = cut(full, rank * 4, 4)
    autocast = torch.autocast("cpu", torch.bfloat16)
    units = []
    for batches in ([mine], [cut(mine, 0, 2), cut(mine, 2, 2)]):
        loss_module.zero_grad(set_to_none=True)
        reduced.clear(), at_micro_start.clear()
        loop.accumulate_gradients(
            loss_module,
            iter(batches),
            stage,
            len(batches),
            torch.device("cpu"),
            autocast,
            defaultdict(list),
            step=5,
        )
        units.append(set(reduced))
        assert all(p.grad is not None for p in model.head.parameters())
    assert seen["block_input"] and set(seen["block_input"]) == {torch.bfloat16}  # the policy is applied ...
    for key in ("noise", "actions", "t", "flow_target", "flow_loss"):  # ... but not to inputs and losses
        assert seen[key] and set(seen[key]) == {torch.float32}, (key, seen[key])
    assert at_micro_start == [0, 0], at_micro_start  # the first micro-batch's backward reduced nothing
    assert len(units[0]) == 6 and units[1] == units[0], units  # 2 blocks, vision, embeddings, head, root

    # -- units of their own
    for unit in [
        *parallel.transformer_blocks(bb),
        *parallel.vision_units(bb),
        *parallel.embedding_units(bb),
        model.head,
    ]:
        assert isinstance(unit, FSDPModule), type(unit).__name__
    assert bb.lm.get_input_embeddings().weight is bb.lm.get_output_embeddings().weight  # still tied

    # -- EMA: one all-gather for the whole online tower, same result as gathering tensor by tensor
    gathers = {"n": 0}
    all_gather = dist.all_gather_single

    def counting_gather(*args, **kwargs):
        gathers["n"] += 1
        return all_gather(*args, **kwargs)

    expected = copy.deepcopy(model.ema_vision)
    with torch.no_grad():
        for (_, t), (_, o) in zip(expected.named_parameters(), bb.vision.named_parameters()):
            t.lerp_(o.full_tensor(), 0.1)
    dist.all_gather_single = counting_gather
    ema_lib.ema_update(model.ema_vision, bb.vision, 0.9)
    dist.all_gather_single = all_gather
    assert gathers["n"] == 1, gathers
    for (n, a), (_, b) in zip(model.ema_vision.named_parameters(), expected.named_parameters()):
        assert torch.equal(a, b), n
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from latentvla.data.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "ds", num_episodes=2, length=8, image_size=32)


@pytest.mark.slow
def test_fsdp2_units_fp32_inputs_no_sync_accumulation_and_batched_ema_gather(dataset, tmp_path):
    from latentvla.testing.tiny_hf import save_tiny

    cfg = use_backbone(get_preset("lara", "micro"), str(save_tiny("qwen2", tmp_path / "qwen2")))
    cfg = apply_overrides(cfg, ["policy.horizon=4", "augment=false"])
    mp.spawn(_worker, args=(_free_port(), cfg, str(dataset)), nprocs=2, join=True)
