"""Scenario suite: healthy set-ups stay quiet, each faulty one is flagged by the right rule, and every
fault is confirmed independently of the monitor (by hand, from the model's own tensors)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from act_diagnostics.rules.activation_loss import softmax_ce_floor
from act_diagnostics.scenarios import SCENARIOS, train

HEALTHY = [n for n, s in SCENARIOS.items() if s.healthy]
FAULTY = [n for n, s in SCENARIOS.items() if not s.healthy]


def fresh(name: str):
    """The scenario's set-up exactly as train(name, seed=0) builds it, untrained."""
    torch.manual_seed(0)
    return SCENARIOS[name].build(torch.Generator().manual_seed(0))


def outputs_of(model: nn.Module, x: torch.Tensor, cls: type[nn.Module]) -> list[torch.Tensor]:
    """Outputs of every ``cls`` module for input ``x``, in forward order (no grad)."""
    seen: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone())) for m in model.modules() if isinstance(m, cls)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def dead_fraction(a: torch.Tensor) -> float:
    return float(((a > 0).float().mean(0) < 0.01).float().mean())


@pytest.mark.parametrize("default_schedule", [False, True], ids=["every-step", "default-schedule"])
@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_scenarios_raise_nothing_and_learn(name, default_schedule):
    run = train(name, default_schedule=default_schedule)
    assert [f for f in run.findings if f.severity != "info"] == [], [f.text() for f in run.findings]
    assert sum(run.losses[-10:]) / 10 < 0.8 * sum(run.losses[:10]) / 10  # it really trains


@pytest.mark.parametrize("name", FAULTY)
def test_faulty_scenarios_are_flagged_with_the_right_rule(name):
    run = train(name)
    assert set(SCENARIOS[name].expects) <= run.rules("warning"), [f.text() for f in run.findings]


def test_born_dead_units_confirmed_by_hand():
    s = fresh("born_dead_relu_mlp")
    acts = outputs_of(s.model, s.inputs, nn.ReLU)
    assert dead_fraction(acts[2]) >= 0.5  # by hand on all 2048 samples at initialisation
    run = train("born_dead_relu_mlp")
    f = next(f for f in run.findings if f.rule == "dead-units" and f.site == "5")
    assert f.step == 1 and f.evidence["born_dead"] > f.evidence["died_later"]


def test_units_that_die_later_confirmed_by_hand():
    s = fresh("dying_relu_mlp")
    assert max(dead_fraction(a) for a in outputs_of(s.model, s.inputs, nn.ReLU)) < 0.1
    run = train("dying_relu_mlp")
    after = outputs_of(run.setup.model, run.setup.inputs, nn.ReLU)
    f = next(f for f in run.findings if f.rule == "dead-units")
    site_index = [n for n, m in run.setup.model.named_modules() if isinstance(m, nn.ReLU)].index(f.site)
    assert dead_fraction(after[site_index]) >= 0.25
    assert f.evidence["died_later"] > f.evidence["born_dead"] and "learning rate" in f.recommendation


def test_deep_sigmoid_gradient_vanishes_by_hand():
    s = fresh("deep_sigmoid_mlp")
    acts: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        acts.append(out)

    hooks = [m.register_forward_hook(keep) for m in s.model if isinstance(m, nn.Sigmoid)]
    s.loss_fn(s.model(s.inputs[:256]), s.targets[:256]).backward()
    for h in hooks:
        h.remove()
    rms = [float(a.grad.pow(2).mean().sqrt()) for a in acts]
    assert rms[0] / rms[-1] < 1e-3
    run = train("deep_sigmoid_mlp")
    assert {f.severity for f in run.findings if f.rule == "saturating-hidden-activation"} == {"warning"}


def test_softmax_into_cross_entropy_hits_the_loss_floor():
    run = train("softmax_into_cross_entropy", steps=60)
    floor = softmax_ce_floor(10)
    assert min(run.losses) >= floor - 1e-6  # ln(1 + 9/e) = 1.461: cannot be beaten
    (f,) = [f for f in run.findings if f.rule == "activation-loss-mismatch"]
    assert f.severity == "error" and f.evidence["loss_floor"] == pytest.approx(floor, abs=1e-4)


def test_sigmoid_into_bce_with_logits_squeezes_predictions():
    run = train("sigmoid_into_bce_with_logits")
    with torch.no_grad():
        p = torch.sigmoid(run.setup.model(run.setup.inputs))
    assert p.min() >= 0.5 and p.max() <= 1 / (1 + math.exp(-1)) + 1e-6


def test_softmax_over_size_one_is_constant():
    run = train("softmax_dim1_size1")
    with torch.no_grad():
        assert torch.equal(run.setup.model(run.setup.inputs), torch.ones(len(run.setup.inputs), 1))
    assert run.losses[0] == run.losses[0] and len(set(round(v, 4) for v in run.losses)) > 1  # data varies, model doesn't


def test_relu_on_logits_are_never_negative():
    run = train("relu_on_logits")
    with torch.no_grad():
        assert run.setup.model(run.setup.inputs).min() >= 0


def test_exploding_activations_by_hand():
    s = fresh("exploding")
    acts = outputs_of(s.model, s.inputs, nn.ReLU)
    assert float(acts[-1].pow(2).mean().sqrt()) / float(acts[0].pow(2).mean().sqrt()) > 100


def test_nan_first_site_by_hand():
    s = fresh("nan_producing")
    with torch.no_grad():
        logged = torch.log(s.model.act(s.model.fc1(s.inputs)))
    assert torch.isfinite(s.model.act(s.model.fc1(s.inputs))).all() and not torch.isfinite(logged).all()
    run = train("nan_producing")
    assert run.findings[0].rule == "non-finite" and run.findings[0].site == "relu"  # tanh itself is finite
    assert math.isnan(run.losses[0])


def test_poor_init_signal_collapse_by_hand():
    s = fresh("poorly_initialised_mlp")
    pre = outputs_of(s.model, s.inputs, nn.Linear)[:-1]
    stds = [float(p.std()) for p in pre]
    assert max(stds) / min(stds) > 10
    run = train("poorly_initialised_mlp")
    (f,) = [f for f in run.findings if f.rule == "signal-propagation"]
    assert f.evidence["direction"] == -1


def test_saturated_tanh_by_hand():
    s = fresh("saturated_tanh_mlp")
    (first, _) = outputs_of(s.model, s.inputs, nn.Tanh)
    assert float((first.abs() > 0.99).float().mean()) > 0.5


def test_near_dead_gelu_units_flagged_and_confirmed_by_hand():
    from act_diagnostics.core import ActivationMonitor
    from act_diagnostics.core.kinds import smooth_tail_threshold
    from act_diagnostics.rules import RULE_IDS, RuleEngine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].bias[:20] = -20.0  # 20 of 32 units: pre-activations far below GELU's flat tail
    x = torch.randn(512, 16)
    with torch.no_grad():
        in_tail = (model[0](x) < smooth_tail_threshold("gelu")).float().mean(0)
    by_hand = float((in_tail > 0.99).float().mean())
    assert by_hand == 20 / 32
    engine = RuleEngine(disable=[r for r in RULE_IDS if r != "near-dead-units"])
    mon = ActivationMonitor(model).attach()
    try:
        for window in range(2):  # two steps of 512 rows: 1024 tail tests per unit per window
            for _ in range(2):
                mon.begin_step(detail=True)  # GELU's tail is read on detail steps
                model(x).sum().backward()
                mon.end_step()
            engine.evaluate(mon.snapshot(step=window))
    finally:
        mon.detach()
    (f,) = engine.findings
    assert (f.rule, f.site, f.severity) == ("near-dead-units", "1", "warning")
    assert f.evidence["near_dead_fraction"] == pytest.approx(by_hand) and f.evidence["near_dead_units"] == 20


@pytest.mark.parametrize(
    "head,make_target",
    [(nn.Sigmoid, lambda: torch.randn(256, 1) * 3), (nn.ReLU, lambda: torch.rand(256, 1) - 0.5),
     (nn.Sigmoid, lambda: torch.randn(256, 1) * 0.2 + 0.5), (nn.Sigmoid, lambda: torch.rand(256, 1))],
)
@pytest.mark.parametrize("swapped", [False, True], ids=["pred_first", "target_first"])
def test_regression_targets_out_of_the_output_range_confirmed_by_hand(head, make_target, swapped):
    """Also with the arguments swapped, F.mse_loss(target, prediction): the loss is symmetric."""
    import torch.nn.functional as F

    from act_diagnostics.core import ActivationMonitor
    from act_diagnostics.core.kinds import output_range
    from act_diagnostics.rules import RULE_IDS, RuleEngine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), head())
    x, target = torch.randn(256, 4), make_target()
    low, high = output_range("sigmoid" if head is nn.Sigmoid else "relu", {})
    by_hand = float(((target < low) | (target > high)).float().mean())
    engine = RuleEngine(disable=[r for r in RULE_IDS if r != "output-activation-mismatch"])
    mon = ActivationMonitor(model).attach()
    try:
        mon.begin_step(detail=True)  # the first steps track structure: losses and their targets
        out = model(x)
        (F.mse_loss(target, out) if swapped else F.mse_loss(out, target)).backward()
        mon.end_step()
        snap = mon.snapshot(step=0)
    finally:
        mon.detach()
    assert snap.stats["3"].target_outside == pytest.approx(by_hand)
    expected = "error" if by_hand >= 0.1 else "warning" if by_hand > 0.01 else None
    assert [(f.site, f.severity, f.evidence["loss"]) for f in engine.evaluate(snap, preflight=True)] == (
        [("3", expected, "mse_loss")] if expected else []
    )


@pytest.mark.parametrize(
    "head, loss_of, expected",
    [
        # (N, L, C) softmax over the classes, reshaped to (N * L, C) for the loss: the usual double softmax.
        (lambda o: torch.softmax(o, -1), lambda p, t: F.cross_entropy(p.reshape(-1, 4), t.reshape(-1)), ("error", None, 4)),
        (lambda o: torch.log_softmax(o, 0), lambda p, t: F.nll_loss(p[:, 0], t[:, 0]), None),  # a slice: not judged
        (lambda o: torch.log_softmax(o[:, 0], 0), lambda p, t: F.nll_loss(p, t[:, 0]), ("error", 0, 4)),
        (lambda o: torch.softmax(o[:, 0], 0), lambda p, t: F.nll_loss(torch.log(p), t[:, 0]), ("error", 0, 4)),
        (lambda o: torch.log_softmax(o[:, 0], -1), lambda p, t: F.nll_loss(p, t[:, 0]), None),  # correct
    ],
    ids=["reshaped_softmax_ce", "sliced", "log_softmax_over_batch", "softmax_over_batch_log_nll", "log_softmax_ok"],
)
def test_class_losses_judge_the_dim_the_loss_reads(head, loss_of, expected):
    """Whether a (log-)softmax ran over the classes is judged on the tensor the loss received:
    a reshape for the loss is fine, a normalisation over the batch is an error whatever the loss."""

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            return head(self.fc(x))

    torch.manual_seed(0)
    got = _class_loss_findings(Head(), lambda model, x, t: loss_of(model(x), t), torch.randn(16, 5, 6), torch.randint(0, 4, (16, 5)))
    assert got == ([expected] if expected else [])


def _class_loss_findings(model: nn.Module, loss_of, x: torch.Tensor, t: torch.Tensor) -> list[tuple]:
    """(severity, softmax_dim, classes) of activation-loss-mismatch after one step of ``loss_of(model, x, t)``."""
    from act_diagnostics.core import ActivationMonitor
    from act_diagnostics.rules import RULE_IDS, RuleEngine

    engine = RuleEngine(disable=[r for r in RULE_IDS if r != "activation-loss-mismatch"])
    mon = ActivationMonitor(model).attach()
    try:
        mon.begin_step()
        loss_of(model, x, t).backward()
        mon.end_step()
        found = engine.evaluate(mon.snapshot(step=0), preflight=True)
    finally:
        mon.detach()
    return [(f.severity, f.evidence.get("softmax_dim"), f.evidence["classes"]) for f in found]


@pytest.mark.parametrize(
    "head, loss_of, expected",
    [
        # (N, L, C) -> (N, C, L), the layout nll_loss documents for sequences; with L == C the shape
        # alone would put the classes on the softmax's wrong side.
        (lambda o: torch.log_softmax(o, -1), lambda p, t: F.nll_loss(p.transpose(1, 2), t), None),
        (lambda o: torch.log_softmax(o, -1), lambda p, t: F.nll_loss(p.permute(0, 2, 1).contiguous(), t), None),
        (lambda o: torch.log_softmax(o, -1), lambda p, t: F.nll_loss(torch.movedim(p, 2, 1), t), None),
        (lambda o: torch.softmax(o, -1), lambda p, t: F.cross_entropy(p.transpose(1, 2), t), ("error", None, 4)),
        (lambda o: torch.log_softmax(o, -1), lambda p, t: F.nll_loss(p, t), ("error", 2, 4)),  # not transposed: wrong
    ],
    ids=["transpose", "permute_contiguous", "movedim", "double_softmax_transposed", "untransposed"],
)
def test_class_losses_after_a_transpose_of_a_square_output(head, loss_of, expected):
    """A sequence model with as many positions as classes: which dim holds the classes follows the
    transpose, not the (unchanged) shape."""
    torch.manual_seed(0)
    got = _class_loss_findings(
        nn.Linear(6, 4), lambda model, x, t: loss_of(head(model(x)), t), torch.randn(16, 4, 6), torch.randint(0, 4, (16, 4))
    )
    assert got == ([expected] if expected else [])


@pytest.mark.parametrize(
    "loss_of, expected",
    [
        (lambda o, t: F.kl_div(torch.softmax(o, -1), t, reduction="batchmean"), ("error", None, 4)),
        (lambda o, t: F.kl_div(torch.log(torch.softmax(o, -1)), t, reduction="batchmean"), ("info", None, 4)),
        (lambda o, t: F.kl_div(torch.log_softmax(o, -1), t, reduction="batchmean"), None),  # correct
        (lambda o, t: F.binary_cross_entropy(torch.softmax(o, -1), (t > 0.25).float()), ("warning", None, 4)),  # multi-label
        (lambda o, t: F.binary_cross_entropy(torch.softmax(o, -1)[:, 1], (t[:, 1] > 0.25).float()), None),  # one class
        (lambda o, t: F.binary_cross_entropy(torch.sigmoid(o), (t > 0.25).float()), ("info", None, 4)),
    ],
    ids=["softmax_kl_div", "log_softmax_by_hand_kl_div", "log_softmax_kl_div", "softmax_bce", "one_class_bce", "sigmoid_bce"],
)
def test_probability_losses_judge_what_their_input_must_be(loss_of, expected):
    """kl_div reads log-probabilities; BCE reads independent per-class probabilities, which a
    softmax over the classes cannot give (its rows sum to 1) unless the loss reads one class."""
    torch.manual_seed(0)
    target = torch.softmax(torch.randn(16, 4), -1)
    got = _class_loss_findings(nn.Linear(6, 4), lambda model, x, t: loss_of(model(x), t), torch.randn(16, 6), target)
    assert got == ([expected] if expected else [])


def test_one_class_of_a_softmax_over_sequences_of_varying_length_is_sound():
    """probs[..., 1] into BCE with sequence lengths that vary: a slice of every call's output, whatever
    the first call's shape (N x 20 elements once equalled N x 10 x 2)."""
    from act_diagnostics.core import ActivationMonitor
    from act_diagnostics.rules import RULE_IDS, RuleEngine

    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    engine = RuleEngine(disable=[r for r in RULE_IDS if r != "activation-loss-mismatch"])
    mon = ActivationMonitor(model).attach()
    try:
        for length in (10, 20):  # the structure steps: losses are traced on both
            mon.begin_step()
            probs = torch.softmax(model(torch.randn(4, length, 6)), -1)
            F.binary_cross_entropy(probs[..., 1], torch.randint(0, 2, (4, length)).float()).backward()
            mon.end_step()
        found = engine.evaluate(mon.snapshot(step=1), preflight=True)
    finally:
        mon.detach()
    assert mon.sites[":softmax"].partial_losses == {"binary_cross_entropy"} and found == []


@pytest.mark.parametrize(
    "loss_of, expected",
    [
        (lambda p, y: F.binary_cross_entropy(p[y[:, 0] > 0.5], y[y[:, 0] > 0.5]), "warning"),  # some rows, every class
        (lambda p, y: F.binary_cross_entropy(p[:, :-1], y[:, :-1]), "warning"),  # classes that still compete
        (lambda p, y: F.binary_cross_entropy(p[:, 1:2], y[:, 1:2]), None),  # one class, its dim kept
        (lambda p, y: F.binary_cross_entropy(p, y) + F.binary_cross_entropy(p[:, 0], y[:, 0]), "warning"),
        (lambda p, y: F.binary_cross_entropy(p[:, 0], y[:, 0]) + F.binary_cross_entropy(p, y), "warning"),
    ],
    ids=["row_mask", "classes_but_one", "one_class_keepdim", "whole_then_one", "one_then_whole"],
)
def test_softmax_into_bce_is_judged_on_the_classes_the_loss_reads(loss_of, expected):
    """Judged when the loss reads at least two classes of a row (whole rows, a row mask, classes
    sliced with the dims kept); not when it reads one class."""
    torch.manual_seed(0)
    y = (torch.rand(16, 4) > 0.5).float()
    y[:8, 0] = 1.0  # the row mask keeps some rows
    got = _class_loss_findings(nn.Linear(6, 4), lambda model, x, t: loss_of(torch.softmax(model(x), -1), t), torch.randn(16, 6), y)
    assert [g[0] for g in got] == ([expected] if expected else [])


@pytest.mark.parametrize(
    "loss_of, expected",
    [
        (lambda p, y, m: F.binary_cross_entropy(p[m], y[m]), "warning"),  # padding mask over (N, L): (M, C)
        (lambda p, y, m: F.binary_cross_entropy(p[:, :-1].reshape(-1, 3), y[:, :-1].reshape(-1, 3)), "warning"),  # shifted
        (lambda p, y, m: F.binary_cross_entropy(p[..., 1], y[..., 1]), None),  # one class: (N, L)
        (lambda p, y, m: F.binary_cross_entropy(p[..., 1], y[..., 1]), None),  # the same with L == C (below)
    ],
    ids=["padding_mask", "shifted_reshape", "one_class", "one_class_square"],
)
def test_softmax_into_bce_over_sequences(loss_of, expected, request):
    """(N, L, C) outputs: a padding mask or a shifted reshape still hands BCE whole rows of classes;
    one class stays one class when the sequence happens to be as long as the classes are many."""
    torch.manual_seed(0)
    length = 3 if request.node.callspec.id == "one_class_square" else 5
    y = (torch.rand(4, length, 3) > 0.5).float()
    mask = torch.ones(4, length, dtype=torch.bool)
    mask[:, length - 1 :] = False  # padding at the end of every sequence
    got = _class_loss_findings(
        nn.Linear(6, 3), lambda model, x, t: loss_of(torch.softmax(model(x), -1), t, mask), torch.randn(4, length, 6), y
    )
    assert [g[0] for g in got] == ([expected] if expected else [])


@pytest.mark.parametrize(
    "loss_of, expected",
    [
        (lambda p, y, m: F.binary_cross_entropy(p.permute(0, 2, 3, 1)[m], y.permute(0, 2, 3, 1)[m]), "warning"),
        (lambda p, y, m: F.binary_cross_entropy(p.flatten(2).transpose(1, 2)[m.flatten(1)], y.flatten(2).transpose(1, 2)[m.flatten(1)]), "warning"),
        (lambda p, y, m: F.binary_cross_entropy(p[:, 1][m], y[:, 1][m]), None),  # one class, valid pixels
    ],
    ids=["permute_mask", "flatten_transpose_mask", "one_class_mask"],
)
def test_softmax_over_channels_into_bce_after_moving_the_classes_last(loss_of, expected):
    """A softmax over dim 1 of (N, C, H, W), classes moved last and pixels masked: whole rows."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 1)
    y = (torch.rand(2, 3, 4, 4) > 0.5).float()
    valid = torch.ones(2, 4, 4, dtype=torch.bool)
    valid[:, 0] = False
    got = _class_loss_findings(conv, lambda model, x, t: loss_of(torch.softmax(model(x), 1), t, valid), torch.randn(2, 2, 4, 4), y)
    assert [g[0] for g in got] == ([expected] if expected else [])


def test_the_default_schedule_measures_fewer_steps_than_every_step():
    measured = {False: 0, True: 0}

    def count(step, setup, mon, schedule):
        measured[schedule] = mon.steps  # training steps the monitor measured so far

    for schedule in (False, True):
        train("kaiming_relu_mlp", steps=120, default_schedule=schedule, on_step=lambda s, su, m, sc=schedule: count(s, su, m, sc))
    assert measured[False] == 120 and 25 + 8 <= measured[True] < 60  # the first window densely, then a few a window
