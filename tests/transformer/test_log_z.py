"""output-logit-divergence: log Z of the logits reaching F.cross_entropy, checked against plain
torch; an LM trained with Adam at a high rate on a task it can learn exactly drifts its log Z and is
flagged; the same LM at a sane rate, or with PaLM's z-loss, is not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_models import TinyLM, counting_batches, only, train, z_loss

from act_diagnostics.core import ActivationMonitor, Snapshot
from act_diagnostics.core.logits import LogZStats, log_z
from act_diagnostics.rules.output_logit_divergence import bfloat16_spacing


def test_log_z_reads_the_class_dim_and_the_leading_rows() -> None:
    x = torch.randn(3, 5, 7) * 4  # (N, C, L): classes on dim 1
    ref = torch.logsumexp(x.movedim(1, -1), -1).reshape(-1)
    assert torch.allclose(log_z(x, 1), ref)
    assert torch.allclose(log_z(x, 1, max_elements=5 * 4), ref[:4])  # 4 rows of 5 classes
    assert torch.allclose(log_z(x[0, :, 0], 1), torch.logsumexp(x[0, :, 0], 0).reshape(1))  # one sample


def test_monitor_reports_each_cross_entropy_call_against_the_oracle() -> None:
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 5))
    x, y = torch.randn(32, 6) * 3, torch.randint(0, 5, (32,))
    with ActivationMonitor(model) as mon:
        out = model(x)
        (F.cross_entropy(out, y) + nn.CrossEntropyLoss()(out[:8] * 3, y[:8])).backward()
        snap = mon.snapshot()
    first, second = snap.log_z["cross_entropy"], snap.log_z["cross_entropy#1"]
    with torch.no_grad():
        ref1, ref2 = torch.logsumexp(out, -1), torch.logsumexp(out[:8] * 3, -1)
    assert first.rows == 32 and second.rows == 8
    assert math.isclose(first.mean, float(ref1.mean()), rel_tol=1e-5)
    assert math.isclose(first.max, float(ref1.max()), rel_tol=1e-5) and math.isclose(first.min, float(ref1.min()), rel_tol=1e-5)
    assert math.isclose(second.max, float(ref2.max()), rel_tol=1e-5)
    # Two ranks with the same data: rows add up, the mean and extremes stay (sum and max columns).
    torch.manual_seed(0)
    with ActivationMonitor(model) as mon:
        F.cross_entropy(model(x), y).backward()
        both = mon.snapshot(all_gather=lambda t: torch.stack((t, t))).log_z["cross_entropy"]
    assert both.rows == 64 and math.isclose(both.mean, first.mean, rel_tol=1e-6) and both.min == first.min


def test_no_log_z_on_steps_the_tracer_skips() -> None:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 5))
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    mon = ActivationMonitor(model, structure_steps=1).attach()
    mon.begin_step()
    F.cross_entropy(model(x), y).backward()
    mon.end_step()
    assert mon.snapshot().log_z["cross_entropy"].rows == 8  # the structure step traces
    mon.begin_step()  # no detail, structure learned, no functional site: the tracer stays off
    F.cross_entropy(model(x), y).backward()
    mon.end_step()
    assert mon.snapshot().log_z == {}
    mon.detach()


def _drift_run(lr: float, loss=None, steps: int = 150):
    torch.manual_seed(0)
    model = TinyLM(layers=1)
    seen: dict[int, float] = {}

    def oracle(step, snap, x):
        with torch.no_grad():
            seen[step] = float(torch.logsumexp(model(x[:, :-1]), -1).mean())

    kw = {"loss_fn": loss} if loss is not None else {}
    findings = train(model, steps, lr, only("output-logit-divergence"), batches=counting_batches(), log_every=10, detail_every=10, on_snapshot=oracle, **kw)
    return [f for f in findings if f.rule == "output-logit-divergence"], seen


def test_high_rate_on_a_learnable_task_drifts_log_z_and_is_flagged() -> None:
    findings, seen = _drift_run(0.1)
    assert findings, f"log Z seen by the oracle: {seen}"
    f = findings[0]
    assert f.site == "loss:cross_entropy" and f.evidence["drift"] >= 20
    assert seen[f.step] >= 20  # independent: the model's own logsumexp at that log step
    assert "z-loss" in f.recommendation


@pytest.mark.parametrize("lr, coefficient", [(1e-3, 0.0), (0.1, 1e-4)])
def test_sane_rate_or_z_loss_raise_nothing(lr: float, coefficient: float) -> None:
    findings, seen = _drift_run(lr, z_loss(coefficient) if coefficient else None)
    assert findings == [] and max(seen.values()) < 20


@pytest.mark.parametrize(
    "mean, severity, spacing, direction",
    [
        (19.9, None, None, None),  # ln C of any vocabulary plus room: quiet
        (20.0, "warning", "0.125", "above"),  # logits 16-32: bfloat16 numbers 1/8 apart
        (48.3, "warning", "0.25", "above"),  # the corpus's 4-class ReLU classifier after 30 steps
        (50.0, "error", "0.25", "above"),
        (-70.0, "error", "0.5", "below"),  # every logit pushed down together
    ],
)
def test_drift_is_judged_on_log_z_and_the_message_states_what_it_costs(mean, severity, spacing, direction) -> None:
    """Two windows at the same log Z: the severity follows |mean|; the message gives the bfloat16
    spacing at that size and claims no cause the statistic cannot tell (a shift of every logit and
    a growing margin raise log Z alike)."""
    engine = only("output-logit-divergence")
    findings = []
    for step in (10, 20):
        z = LogZStats(rows=64, mean=mean, max=mean + 30, min=mean - 25)
        findings += engine.evaluate(Snapshot(step=step, window_steps=10, stats={}, sites={}, log_z={"cross_entropy": z}))
    if severity is None:
        assert findings == []
        return
    (f,) = findings
    assert (f.severity, f.site, f.evidence["drift"]) == (severity, "loss:cross_entropy", abs(mean))
    assert f"{abs(mean):.3g} {direction} 0" in f.message and f"{spacing} apart" in f.message
    assert "as a whole" not in f.message


@pytest.mark.parametrize("magnitude, spacing", [(1.0, 2**-7), (16.0, 0.125), (31.9, 0.125), (32.0, 0.25), (100.0, 0.5), (0.0, 0.0)])
def test_bfloat16_spacing_matches_torch(magnitude: float, spacing: float) -> None:
    assert bfloat16_spacing(magnitude) == spacing
    if magnitude:  # the next bfloat16 number above the magnitude, as torch rounds
        x = torch.tensor(magnitude, dtype=torch.bfloat16)
        assert float(torch.nextafter(x, torch.tensor(math.inf, dtype=torch.bfloat16)) - x) == spacing
