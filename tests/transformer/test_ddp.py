"""Under torch.distributed (two CPU processes, gloo) the transformer statistics travel in the
snapshot's one all-gather and come out global: each rank measures its half of a batch, and the
reduced max logit, log Z and router shares equal one process's over the whole batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny_models import LMWithMoE, copy_batches, lm_loss

from act_diagnostics.core import ActivationMonitor

WORLD = 2


def _values(snap) -> dict:
    attention = snap.stats["lm.blocks.0:attention"]
    z, r = snap.log_z["cross_entropy"], snap.routers["moe:router"]
    return {
        "max_logit_heads": attention.max_logit_heads,
        "log_z": [z.rows, z.mean, z.max, z.min],
        "router": [r.tokens, *r.shares],
        "calls": attention.calls,
    }


def _measure(rank: int | None) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LMWithMoE()
    x = next(copy_batches())
    gather = None
    if rank is not None:
        x = x.chunk(WORLD)[rank]

        def gather(t: torch.Tensor) -> torch.Tensor:
            parts = [torch.empty_like(t) for _ in range(WORLD)]
            dist.all_gather(parts, t)
            return torch.stack(parts)

    with ActivationMonitor(model) as mon:
        lm_loss(model, x).backward()
        return _values(mon.snapshot(all_gather=gather))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(_measure(rank)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_give_the_single_process_values(tmp_path) -> None:
    # fork: the children need not import torch again (spawn costs ~20 s per run on a loaded machine)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    single = _measure(None)
    assert ranks[0] == ranks[1]  # every rank gets the global values
    got = ranks[0]
    assert got["calls"] == 2 * single["calls"]  # two ranks' calls
    assert got["max_logit_heads"] == pytest.approx(single["max_logit_heads"], rel=1e-5)
    assert got["log_z"] == pytest.approx(single["log_z"], rel=1e-5)
    assert got["router"] == pytest.approx(single["router"], rel=1e-6)
