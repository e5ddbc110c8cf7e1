"""Two CPU processes (gloo) training a model sharded with FSDP2 (``fully_shard``), monitored by
ActivationMonitor without Lightning (Lightning runs FSDP only on GPUs). Run by test_fsdp.py.

Usage: python fsdp_script.py OUTDIR PORT. Each rank writes OUTDIR/rank<r>.json: the reduced
statistics, each site's feeding-layer gradient norm computed by hand from the full (unsharded)
gradients, and whether the monitor failed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

STEPS = 3
FEEDING = {"1": 0, "3": 2}  # site -> index of the Linear that feeds it


def run(rank: int, world: int, out: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from act_diagnostics.core import ActivationMonitor

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 2))
    mesh = init_device_mesh("cpu", (world,))
    for layer in (net[0], net[2], net[4]):
        fully_shard(layer, mesh=mesh)
    fully_shard(net, mesh=mesh)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def all_gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        return torch.stack(parts)

    by_hand = {site: 0.0 for site in FEEDING}
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        mon = ActivationMonitor(net).attach()
        torch.manual_seed(1 + rank)
        for _ in range(STEPS):
            mon.begin_step(detail=True)
            F.cross_entropy(net(torch.randn(32, 8)), torch.randint(0, 2, (32,))).backward()
            mon.measure_param_grads()
            for site, i in FEEDING.items():  # full_tensor() gathers the shards (a collective)
                by_hand[site] += sum(float(p.grad.full_tensor().double().pow(2).sum()) for p in net[i].parameters())
            opt.step()
            opt.zero_grad()
            mon.end_step()
        snap = mon.snapshot(all_gather=all_gather)
        mon.detach()
    result = {
        "stats": {name: st.to_dict() for name, st in snap.stats.items()},
        "param_grad_norm_by_hand": {site: math.sqrt(sq / STEPS) for site, sq in by_hand.items()},
        "failure": repr(mon.failure) if mon.failure else None,
        "warnings": [str(r.message) for r in records if r.category.__module__.startswith("act_diagnostics")],
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    dist.barrier()  # both ranks have written their results before either tears down
    dist.destroy_process_group()
    # Leave without interpreter finalisation. After destroy_process_group() returned, about one
    # exit in four aborted in C++ static destruction ("terminate called without an active
    # exception", SIGABRT: a native thread of torch.distributed still joinable when its owner is
    # destroyed), failing the run although both ranks had finished. Nothing is left to flush: the
    # result file is closed and the process group is gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
