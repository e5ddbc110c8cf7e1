"""Two CPU processes (gloo, strategy="ddp"): run by test_distributed.py in a subprocess.

Usage: python ddp_script.py SCENARIO OUTDIR, SCENARIO one of
  shards  every rank sees a known shard of the global data (the statistics are compared with one
          process over the global batch); validation is measured too (eval_stages), with a
          different number of batches on each rank, and must neither hang nor reach the
          training windows;
  branch  rank 1 runs one more activation than rank 0 (a data-dependent branch).
(A failure on one rank is tested in-process with a fake strategy: test_distributed.py.)
Each rank writes OUTDIR/rank<r>.json: snapshots, findings, warnings, hooks left after fit.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from prod_models import Classifier, OutputOptions, RuleOptions, SnapshotRecorder, diagnostics, hook_count, loader, mlp, trainer

GLOBAL_SAMPLES = 32
PER_RANK_BATCH = 4
STEPS = 4
INTERVAL = 2
THRESHOLDS = {"dead-units.preflight_unit_rate": 0.5, "dead-units.evidence": 0.1}  # 4 silent samples decide (0.5^4 < 0.1)


def net() -> torch.nn.Module:
    """Fixed seed; half the first layer's units get a bias of -10 (dead: a dead-units finding)."""
    torch.manual_seed(0)
    n = mlp()
    with torch.no_grad():
        n[0].bias[: n[0].out_features // 2] = -10.0
    return n


class Sharded(Classifier):
    """Rank r trains on samples r, r + world, r + 2 * world, ... (a known shard, no Lightning sampler)."""

    def __init__(self, branch: bool = False) -> None:
        # lr=0 keeps the weights fixed, so counts and moments can be compared exactly.
        super().__init__(net=net(), lr=0.0)
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = super().forward(x)
        return torch.tanh(h) if self.branch and self.global_rank == 1 else h

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])

    def val_dataloader(self) -> Any:
        # Rank 0 gets two batches, rank 1 one: rank-dependent evaluation windows.
        data = loader(n=GLOBAL_SAMPLES).dataset
        return torch.utils.data.DataLoader(torch.utils.data.Subset(data, range(PER_RANK_BATCH * (2 - self.global_rank))), batch_size=PER_RANK_BATCH)

    def train_dataloader(self) -> Any:
        data = loader(n=GLOBAL_SAMPLES).dataset
        shard = torch.utils.data.Subset(data, range(self.global_rank, GLOBAL_SAMPLES, self.trainer.world_size))
        return torch.utils.data.DataLoader(shard, batch_size=PER_RANK_BATCH, shuffle=False)


def stats_dict(snap: Any) -> dict:
    return {"step": snap.step, "window_steps": snap.window_steps, "stats": {n: st.to_dict() for n, st in snap.stats.items()}}


def main(scenario: str, out: str) -> None:
    # Few samples per unit in this tiny run: let dead-units judge them.
    shards = scenario == "shards"
    cb = diagnostics(log_every_n_steps=INTERVAL, rules=RuleOptions(thresholds=THRESHOLDS), outputs=OutputOptions(),
                     eval_stages=["validate"] if shards else None)
    rec = SnapshotRecorder(cb)
    m = Sharded(branch=scenario == "branch")
    from pytorch_lightning.loggers import CSVLogger

    t = trainer(out, [cb, rec], devices=2, strategy="ddp", max_steps=STEPS, log_every_n_steps=INTERVAL,
                use_distributed_sampler=False, logger=CSVLogger(out, name="csv", version=0),
                limit_val_batches=None if shards else 0, val_check_interval=INTERVAL if shards else None)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        t.fit(m)
    result = {
        "rank": t.global_rank,
        "global_step": t.global_step,
        "snapshots": [stats_dict(s) for s in rec.snapshots],
        "findings": [[f.rule, f.site, f.step, f.severity] for f in cb.engine.findings],
        "warnings": [[r.category.__name__, str(r.message)] for r in records if r.category.__module__.startswith("act_diagnostics")],
        "hooks_left": hook_count(m),
        "report_dir": cb.report_dir,  # set by the rank that wrote the report
        "eval_windows": {stage: s.window_steps for stage, s in cb.eval_snapshots.items()},
        "steps": cb.steps,
    }
    with open(os.path.join(out, f"rank{t.global_rank}.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    # "all" runs every scenario in one launch of the two processes (the process group is reused).
    for name in (("shards", "branch") if sys.argv[1] == "all" else (sys.argv[1],)):
        os.makedirs(os.path.join(sys.argv[2], name), exist_ok=True)
        main(name, os.path.join(sys.argv[2], name))
