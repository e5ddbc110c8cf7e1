"""DDP on two CPU processes (gloo): one collective per log step over one packed tensor.

Both scenarios of ddp_script.py run in one subprocess (plain strategy="ddp" relaunches its script; a
subprocess also bounds a hang with a timeout). The rank check's decisions are also tested in-process
with a fake two-rank strategy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ddp_script
import pytest
import torch
from prod_models import Classifier, RuleOptions, SnapshotRecorder, diagnostics, loader, mlp, trainer

SCRIPT = Path(__file__).with_name("ddp_script.py")
SCENARIOS = ("shards", "branch")
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Both scenarios in one launch of two processes; a subprocess bounds a hang with a timeout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"
    out = tmp_path_factory.mktemp("ddp")
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "all", str(out)], env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"DDP run hung (> {TIMEOUT_S} s)")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return {s: [json.loads((out / s / f"rank{r}.json").read_text()) for r in (0, 1)] for s in SCENARIOS}


def _single_process_reference(tmp_path: Path) -> list:
    """One process over the global batch (both shards), same weights and schedule."""
    torch.manual_seed(0)
    # warn=False: its findings are compared below, not warned (rank zero of the DDP run warns them)
    cb = diagnostics(log_every_n_steps=ddp_script.INTERVAL, rules=RuleOptions(thresholds=ddp_script.THRESHOLDS, warn=False))
    rec = SnapshotRecorder(cb)
    t = trainer(tmp_path, [cb, rec], max_steps=ddp_script.STEPS, log_every_n_steps=ddp_script.INTERVAL)
    t.fit(Classifier(net=ddp_script.net(), lr=0.0), loader(n=ddp_script.GLOBAL_SAMPLES, batch_size=2 * ddp_script.PER_RANK_BATCH))
    return [ddp_script.stats_dict(s) for s in rec.snapshots], [[f.rule, f.site, f.step, f.severity] for f in cb.engine.findings]


COMPARED = ("elements", "sampled", "units", "firing_rate", "dead_fraction", "mean", "std", "rms", "max_abs",
            "nonfinite", "nonfinite_share", "input_std", "grad_rms", "param_grad_norm")


@pytest.mark.slow  # the two-process launch
def test_reduced_statistics_equal_one_process_over_global_data(ranks, tmp_path):
    r0, r1 = ranks["shards"]
    ref_snaps, ref_findings = _single_process_reference(tmp_path)
    assert r0["global_step"] == r1["global_step"] == ddp_script.STEPS
    assert [s["step"] for s in r0["snapshots"]] == [s["step"] for s in ref_snaps] == [0, 1, 3]
    for got0, got1, want in zip(r0["snapshots"], r1["snapshots"], ref_snaps):
        assert got0["stats"] == got1["stats"]  # every rank holds the same reduced statistics
        assert sorted(got0["stats"]) == sorted(want["stats"])
        for site, w in want["stats"].items():
            g = got0["stats"][site]
            assert g["calls"] == 2 * w["calls"]  # forward calls: one per rank per step
            for key in COMPARED:
                if isinstance(w[key], float):
                    assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), (site, key)
                else:
                    assert g[key] == w[key], (site, key)
    assert r0["findings"] == r1["findings"] == ref_findings
    assert any(f[0] == "dead-units" for f in ref_findings)
    # Validation (2 batches on rank 0, 1 on rank 1) ran in rank-local windows of its own: no hang,
    # nothing added to the training windows compared above, no training step counted.
    assert r0["eval_windows"] == {"validate": 2} and r1["eval_windows"] == {"validate": 1}
    assert r0["steps"] == r1["steps"] == ddp_script.STEPS


@pytest.mark.slow  # the two-process launch
def test_warnings_from_rank_zero_only(ranks):
    r0, r1 = ranks["shards"]
    assert [w for w in r0["warnings"] if w[0] == "ActivationWarning"]
    assert r1["warnings"] == []
    # each finding is warned once
    messages = [w[1] for w in r0["warnings"]]
    assert len(messages) == len(set(messages)) == len(r0["findings"])
    assert r0["hooks_left"] == r1["hooks_left"] == 0
    # logger scalars: one row per log step, written once (rank zero)
    import csv

    rows = list(csv.DictReader(open(Path(r0["report_dir"]).parent / "metrics.csv")))
    logged = [int(r["step"]) for r in rows if r.get("act/net.1/firing_rate")]
    assert logged == [0, 1, 3]
    # the report is written once, by rank zero
    assert r0["report_dir"] and os.path.exists(os.path.join(r0["report_dir"], "report.json"))
    assert r1["report_dir"] is None


@pytest.mark.slow  # the two-process launch
def test_site_mismatch_across_ranks_warns_once_and_finishes(ranks):
    r0, r1 = ranks["branch"]
    assert r0["global_step"] == r1["global_step"] == ddp_script.STEPS
    mismatch = [w for w in r0["warnings"] if w[0] == "DistributedMismatch"]
    assert len(mismatch) == 1 and "rank 0: 3, rank 1: 4" in mismatch[0][1], r0["warnings"]
    assert not [w for w in r1["warnings"] if w[0] == "DistributedMismatch"]
    # statistics continue per rank: rank 1 has its extra site
    assert len(r0["snapshots"]) == len(r1["snapshots"]) == 3
    assert set(r1["snapshots"][-1]["stats"]) - set(r0["snapshots"][-1]["stats"]) == {":tanh"}


class _FakeStrategy:
    """all_gather over two simulated ranks: this process is rank 0, ``other`` is what rank 1 sends."""

    root_device = torch.device("cpu")

    def __init__(self, other) -> None:
        self.other = other
        self.calls = 0

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.stack((t, self.other(t)))


class _FakeTrainer:
    world_size = 2
    is_global_zero = True

    def __init__(self, other) -> None:
        self.strategy = _FakeStrategy(other)


def _monitored(cb) -> None:
    from act_diagnostics.core.monitor import ActivationMonitor

    model = mlp()
    cb.monitor = ActivationMonitor(model, cb.monitor_config).attach()
    cb.monitor.begin_step()
    model(torch.randn(4, 8))
    cb.monitor.end_step()


def test_failure_on_another_rank_stops_gathering_with_one_warning():
    from act_diagnostics.callbacks._core import DistributedMismatch

    cb = diagnostics(rules=False)
    _monitored(cb)
    t = _FakeTrainer(lambda mine: torch.zeros_like(mine))  # rank 1 reports "unhealthy"
    with pytest.warns(DistributedMismatch, match=r"internal error on rank\(s\) \[1\]"):
        assert cb._rank_check.agree(t, cb.monitor, healthy=True) is False
    assert cb._rank_check.agree(t, cb.monitor, healthy=True) is False  # decided once: no further collective, no warning
    assert t.strategy.calls == 1


def test_agreeing_ranks_gather_once_per_log_step():
    cb = diagnostics(rules=False)
    _monitored(cb)
    t = _FakeTrainer(lambda mine: mine.clone())  # rank 1 has the same layout
    assert cb._rank_check.agree(t, cb.monitor, healthy=True) is True
    cb._publish(t, step=0, preflight=False)  # check + statistics: two collectives in all
    assert t.strategy.calls == 3  # (the first check above, then two in _publish)
