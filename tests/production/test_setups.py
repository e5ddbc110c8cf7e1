"""Set-ups that must work: mixed precision, accumulation, manual optimisation, activation
checkpointing, torch.compile, and a model moved after setup. Tiny models, seconds each."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from prod_models import WIDTH, Classifier, SnapshotRecorder, diagnostics, hook_count, loader, mlp, trainer
from pytorch_lightning.plugins import MixedPrecision
from torch.utils.checkpoint import checkpoint

from act_diagnostics.callbacks._core import UnsupportedSetup
from act_diagnostics.core.monitor import UnmeasuredModules
from act_diagnostics.rules import ActivationWarning


def _fit(tmp_path: Any, model: pl.LightningModule, **kwargs: Any) -> tuple[Any, SnapshotRecorder, pl.Trainer]:
    cb_kwargs = kwargs.pop("cb", {})
    data = kwargs.pop("data", None) or loader()
    cb = diagnostics(rules=False, **cb_kwargs)
    rec = SnapshotRecorder(cb)
    t = trainer(tmp_path, [cb, rec], **kwargs)
    t.fit(model, data)
    return cb, rec, t


def _fp16_with_scaler() -> dict:
    # Trainer(precision="16-mixed") falls back to bf16 on CPU; the plugin forces float16 autocast
    # with a GradScaler (scale 2**16), the set-up where scaled gradients would leak into statistics.
    return {"plugins": [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]}


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16+GradScaler"])
def test_mixed_precision_matches_float32(tmp_path, precision):
    """Autocast outputs are read in float32 and summed in float64; gradients are judged unscaled."""
    torch.manual_seed(0)
    ref_model = Classifier()
    model = Classifier()
    model.load_state_dict(ref_model.state_dict())
    ref, _, _ = _fit(tmp_path / "fp32", ref_model, cb={"log_every_n_steps": 2}, max_steps=2)
    try:
        amp = {"precision": precision} if precision == "bf16-mixed" else _fp16_with_scaler()
        cb, _, t = _fit(tmp_path / "amp", model, cb={"log_every_n_steps": 2}, max_steps=2, **amp)
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"{precision} not available on this CPU build: {exc}")
    assert cb.failure is None and t.global_step == 2
    assert all(st.sums.dtype == torch.float64 for st in cb.monitor.states.values())
    for name, st in cb.last_snapshot.stats.items():
        want = ref.last_snapshot.stats[name]
        assert st.calls == want.calls and st.elements == want.elements
        assert st.firing_rate == pytest.approx(want.firing_rate, abs=0.05)
        assert st.mean == pytest.approx(want.mean, rel=0.05, abs=1e-2)
        # A GradScaler multiplies the loss by 2**16: judged gradients must not carry that factor.
        if want.param_grad_norm is not None:
            assert st.param_grad_norm == pytest.approx(want.param_grad_norm, rel=0.05)
        if want.grad_rms is not None:
            assert st.grad_rms == pytest.approx(want.grad_rms, rel=0.1), name


class SumRegression(pl.LightningModule):
    """A summed MSE on targets around 3: its gradients times the GradScaler's first scale (2**16)
    overflow float16, so the scaler skips the first steps while it backs off."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(WIDTH, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        return F.mse_loss(self.net(x).squeeze(-1).float(), 3.0 + x[:, 0].abs(), reduction="sum")

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=1e-4)


def test_steps_the_grad_scaler_skips_are_no_finding(tmp_path):
    """float16 AMP: the scaler's calibration (overflowing, skipped steps) is no non-finite error."""
    torch.manual_seed(0)
    cb = diagnostics(log_every_n_steps=2, measure_every_n_steps=1)
    rec = SnapshotRecorder(cb)
    t = trainer(tmp_path, [cb, rec], max_steps=8, **_fp16_with_scaler())
    try:
        t.fit(SumRegression(), loader(n=128, batch_size=16))
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"float16 autocast not available on this CPU build: {exc}")
    assert t.strategy.precision_plugin.scaler.get_scale() < 2.0**16  # it did skip overflowing steps
    skipped = [st.grad_skipped_share for snap in rec.snapshots for st in snap.stats.values()]
    assert any(share for share in skipped)
    assert not any(st.grad_nonfinite for snap in rec.snapshots for st in snap.stats.values())
    assert [f for f in cb.engine.findings if f.rule == "non-finite"] == []


class NaNTargets(SumRegression):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        target = torch.full((x.shape[0],), float("nan"))  # a NaN label: every gradient NaN
        return F.mse_loss(self.net(x).squeeze(-1).float(), target)


def test_nan_gradients_under_a_grad_scaler_are_an_error_once_it_gives_up(tmp_path):
    """The scaler skips every step and halves its scale; below 1 that is the model's NaN."""
    torch.manual_seed(0)
    cb = diagnostics(log_every_n_steps=4, measure_every_n_steps=1)
    t = trainer(tmp_path, [cb], max_steps=24, **_fp16_with_scaler())
    try:
        with pytest.warns(ActivationWarning, match="GradScaler's scale fell"):
            t.fit(NaNTargets(), loader(n=512, batch_size=16))
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"float16 autocast not available on this CPU build: {exc}")
    (f,) = [f for f in cb.engine.findings if f.rule == "non-finite"]
    assert f.severity == "error" and f.evidence["grad_scale"] < 1.0 and "GradScaler's scale fell" in f.message


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    """accumulate_grad_batches=2: one snapshot per due optimizer step, windows in optimizer steps."""
    cb, rec, t = _fit(tmp_path, Classifier(), cb={"log_every_n_steps": 2}, max_epochs=1, max_steps=-1,
                      accumulate_grad_batches=2, data=loader(n=64, batch_size=8))
    assert t.global_step == 4 and cb.failure is None
    assert cb.steps == 4
    # preflight (step 0), then steps 1 and 3; the last window is complete, nothing left at the end
    assert [s.step for s in rec.snapshots] == [0, 1, 3]
    assert [s.window_steps for s in rec.snapshots] == [1, 1, 2]
    # every micro-batch is measured: two forward calls per optimizer step
    assert [s.stats["net.1"].calls for s in rec.snapshots] == [2, 2, 4]


class TwoOptimizers(pl.LightningModule):
    """Manual optimisation, GAN-like: two nets, two optimizers, two backward passes per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a = mlp()
        self.b = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt_a, opt_b = self.optimizers()
        x, y = batch
        loss_a = F.cross_entropy(F.relu(self.a(x)), y)
        opt_a.zero_grad()
        self.manual_backward(loss_a)
        opt_a.step()
        # A second forward after the first backward: its functional activation must still be seen.
        loss_b = F.cross_entropy(F.silu(self.b(self.a(x).detach())), y)
        opt_b.zero_grad()
        self.manual_backward(loss_b)
        opt_b.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.05), torch.optim.SGD(self.b.parameters(), lr=0.05)


def test_manual_optimization_two_optimizers(tmp_path):
    cb, rec, t = _fit(tmp_path, TwoOptimizers(), cb={"log_every_n_steps": 2}, max_steps=8)
    assert t.global_step == 8  # two optimizer steps per batch ...
    assert cb.steps == 4  # ... but four training steps, numbered as Lightning's loggers number them
    assert [s.step for s in rec.snapshots] == [0, 1, 3]
    last = rec.snapshots[-1]
    silu = [n for n in last.stats if "silu" in n]
    assert silu and last.stats[silu[0]].calls == 2, sorted(last.stats)
    # self.a runs twice per batch: two call sites of one module, each called once per step
    assert last.stats["a.1"].calls == 2 and last.stats["a.1#1"].calls == 2
    assert cb.failure is None


class ManualAccumulation(pl.LightningModule):
    """Manual optimisation with hand-written accumulation: optimizer.step() on every 4th batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = mlp()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.manual_backward(F.cross_entropy(self.net(x), y) / 4)
        if (batch_idx + 1) % 4 == 0:
            opt = self.optimizers()
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_manual_optimization_skipping_optimizer_steps_logs_every_batch(tmp_path):
    """Lightning's loggers count every batch under manual optimisation: the windows follow them,
    the pre-flight window (step 0) included, even on batches that ran no optimizer step."""
    cb, rec, t = _fit(tmp_path, ManualAccumulation(), cb={"log_every_n_steps": 3}, max_epochs=1, max_steps=-1,
                      data=loader(n=96, batch_size=8))
    assert t.global_step == 3 and cb.steps == 12 and cb.failure is None
    assert [s.step for s in rec.snapshots] == [0, 2, 5, 8, 11]
    assert [s.stats["net.1"].calls for s in rec.snapshots] == [1, 2, 3, 3, 3]


class ClosureOptimized(pl.LightningModule):
    """LBFGS re-evaluates the closure (forward and backward) several times per optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.l2(self.act(self.l1(x))))  # a module site and a functional one into the loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.parameters(), lr=0.01, max_iter=4)


def test_closure_optimizer_measures_every_evaluation(tmp_path):
    cb, rec, t = _fit(tmp_path, ClosureOptimized(), cb={"log_every_n_steps": 4, "measure_every_n_steps": 1}, max_steps=8)
    assert cb.failure is None and [s.step for s in rec.snapshots] == [0, 3, 7]
    for snap in rec.snapshots:  # the functional site is seen on every re-evaluation, as the module is
        assert snap.stats[":gelu"].calls == snap.stats["act"].calls > snap.window_steps


class ManualSkipping(pl.LightningModule):
    """Manual optimisation; training_step returns before the forward on the first two batches."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.l1, self.drop, self.l2 = nn.Linear(8, 16), nn.Dropout(0.0), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(self.drop(F.gelu(self.l1(x))))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx < 2:
            return None
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(F.cross_entropy(self(x), y))
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_manual_optimization_batches_that_skip_the_forward_are_not_steps(tmp_path):
    """Counted, they would spend the discovery steps before any forward: a false "no site found"
    warning and the functional site never discovered."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnmeasuredModules)
        cb, rec, t = _fit(tmp_path, ManualSkipping(), cb={"log_every_n_steps": 2}, max_epochs=1, max_steps=-1)
    assert cb.steps == 6 and cb.failure is None and ":gelu" in cb.monitor.sites
    assert [s.step for s in rec.snapshots] == [3, 5, 7]
    assert all(s.stats[":gelu"].calls == s.window_steps for s in rec.snapshots)


def test_manual_optimization_ends_tensorboard_at_the_logged_step(tmp_path):
    """The end-of-fit report text and heatmaps sit at the loggers' last step (3), not at
    global_step - 1 (7), which counts both optimizers' steps."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = TensorBoardLogger(str(tmp_path), name="tb")
    _fit(tmp_path, TwoOptimizers(), cb={"log_every_n_steps": 2}, max_steps=8, logger=tb)
    acc = EventAccumulator(tb.log_dir, size_guidance={"tensors": 0, "images": 0, "scalars": 0}).Reload()
    assert max(e.step for e in acc.Scalars("act/a.1/firing_rate")) == 3
    assert [e.step for e in acc.Tensors("act_diagnostics/report/text_summary")] == [3]
    assert max(e.step for tag in acc.Tags()["images"] for e in acc.Images(tag)) == 3


class SiLUBlock(nn.Module):
    """A module calling a functional activation, as most transformer MLP blocks do."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.body(x))


class Checkpointed(Classifier):
    def __init__(self, use_checkpoint: bool, reentrant: bool = False) -> None:
        super().__init__(net=mlp(depth=3))
        self.use_checkpoint = use_checkpoint
        self.reentrant = reentrant
        self.block = SiLUBlock(self.net[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.net[-1]
        if not self.use_checkpoint:
            return F.gelu(head(self.block(x)))
        # A reentrant checkpoint needs an input that requires grad, or its region gets no gradient.
        h = checkpoint(self.block, x.requires_grad_(self.reentrant), use_reentrant=self.reentrant)
        return F.gelu(head(h))


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_counts_once(tmp_path, reentrant):
    """The forward re-run during backward is not measured again; a reentrant checkpoint's first
    forward runs under no_grad, so its re-run gives the gradient (grad_rms as without checkpoint),
    for the ReLU modules and for the F.silu called inside the checkpointed module alike."""
    torch.manual_seed(0)
    plain_model = Checkpointed(False)
    ckpt_model = Checkpointed(True, reentrant)
    ckpt_model.load_state_dict(plain_model.state_dict())
    plain, _, _ = _fit(tmp_path / "a", plain_model, cb={"log_every_n_steps": 2}, max_steps=4)
    ckpt, _, _ = _fit(tmp_path / "b", ckpt_model, cb={"log_every_n_steps": 2}, max_steps=4)
    assert ckpt.failure is None
    a, b = plain.last_snapshot.stats, ckpt.last_snapshot.stats
    assert sorted(a) == sorted(b) and "block:silu" in a
    for name in a:
        assert b[name].calls == a[name].calls and b[name].elements == a[name].elements, name
        assert b[name].firing_rate == pytest.approx(a[name].firing_rate)
        assert b[name].grad_rms == pytest.approx(a[name].grad_rms, rel=1e-5)


def test_torch_compile_stands_down_with_one_warning(tmp_path):
    """A compiled model: one clear warning, no hooks, training unaffected. backend="eager" keeps it cheap."""
    model = Classifier()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        cb = diagnostics()
        t = trainer(tmp_path, [cb], max_steps=2)
        t.fit(torch.compile(model, backend="eager"), loader())
    ours = [r for r in records if issubclass(r.category, UnsupportedSetup)]
    assert len(ours) == 1 and "torch.compile" in str(ours[0].message)
    assert t.global_step == 2 and hook_count(model) == 0
    # Off for that run only: the same callback measures the next, uncompiled model.
    trainer(tmp_path, [cb], max_steps=2).fit(Classifier(), loader())
    assert cb.steps == 2 and cb.last_snapshot is not None and cb.failure is None


class CompiledInConfigureModel(Classifier):
    def configure_model(self) -> None:  # Lightning calls it after the callbacks' setup
        if not hasattr(self.net, "_orig_mod"):
            self.net = torch.compile(self.net, backend="eager")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.training_step(batch, batch_idx)


class CompiledFunction(Classifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _compiled_gelu(self.net(x))


@torch.compile(backend="eager")
def _compiled_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x) * 0.5


def test_a_submodule_compiled_in_configure_model_stands_down_too(tmp_path):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        cb = diagnostics()
        model = CompiledInConfigureModel()
        t = trainer(tmp_path, [cb], max_steps=2)
        t.fit(model, loader())
    ours = [r for r in records if issubclass(r.category, UnsupportedSetup)]
    assert len(ours) == 1 and "torch.compile" in str(ours[0].message)
    assert t.global_step == 2 and hook_count(model) == 0
    # A validation run alone (no fit) that measures its batches: caught at the stage's start.
    cb = diagnostics(eval_stages=["validate"])
    model = CompiledInConfigureModel()
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        trainer(tmp_path, [cb]).validate(model, loader(n=16))
    assert len([r for r in records if issubclass(r.category, UnsupportedSetup)]) == 1
    assert hook_count(model) == 0 and not cb.eval_snapshots


def test_a_compiled_function_in_forward_does_not_trace_the_monitor(tmp_path):
    """The tracer is on torch's mode stack while dynamo traces the function: it passes through, so
    the graph holds no monitor state to guard on (no recompiles), and the modules are measured."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    cb = diagnostics(log_every_n_steps=1, measure_every_n_steps=1)
    t = trainer(tmp_path, [cb], max_steps=6)
    t.fit(CompiledFunction(), loader())
    assert cb.failure is None and t.global_step == 6
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # forward (and backward), not one per step
    assert {"net.1", "net.3"} <= set(cb.last_snapshot.stats)


def test_swa_batchnorm_epoch_is_no_training_window(tmp_path):
    """StochasticWeightAveraging ends with a forward-only epoch that recomputes BatchNorm statistics:
    not a training step, so the report's last window stays the last one with gradients."""
    from pytorch_lightning.callbacks import StochasticWeightAveraging

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(WIDTH, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    cb = diagnostics(log_every_n_steps=4)
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)
    t = trainer(tmp_path, [cb, swa], max_steps=-1, max_epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(Classifier(net=net), loader(n=64, batch_size=8))
    assert t.current_epoch >= 3 and cb.failure is None
    snap = cb.last_snapshot
    assert snap.step == 23 and snap.window_steps == 4  # 3 epochs of 8 steps; the BN epoch left out
    assert snap.stats["net.2"].grad_rms is not None and cb.steps == 24


class MovesMidway(pl.Callback):
    """Casts the model to float64 after two steps (a dtype move after setup)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if batch_idx == 2:
            pl_module.to(device="cpu", dtype=torch.float64)


class CastsInput(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x.to(self.dtype)), y)


def test_model_moved_after_setup(tmp_path):
    cb = diagnostics(rules=False, log_every_n_steps=2)
    t = trainer(tmp_path, [cb, MovesMidway()], max_steps=6)
    t.fit(CastsInput(), loader())
    assert cb.failure is None and t.global_step == 6
    snap = cb.last_snapshot
    assert snap.window_steps == 2
    for st in snap.stats.values():
        assert st.calls == 2 and math.isfinite(st.mean) and math.isfinite(st.grad_rms)
    assert all(s.sums.device.type == "cpu" and s.sums.dtype == torch.float64 for s in cb.monitor.states.values())


def test_measure_every_n_steps_measures_log_steps_and_every_nth(tmp_path):
    cb, rec, t = _fit(tmp_path, Classifier(), cb={"log_every_n_steps": 10, "measure_every_n_steps": 4}, max_steps=20)
    # preflight 0; window 1..9 measures 4 and 8, plus log step 9; window 10..19: 12, 16, 19
    assert [s.step for s in rec.snapshots] == [0, 9, 19]
    assert [s.window_steps for s in rec.snapshots] == [1, 3, 3]
    assert cb.steps == 7 and t.global_step == 20
