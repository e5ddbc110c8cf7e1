"""Lightning integration: tags written to TensorBoard and CSV, hook lifecycle, step scheduling."""

from __future__ import annotations

import csv
import glob
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("pytorch_lightning")
# Net defines a validation_step that most tests run without a validation loader, on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from act_diagnostics import ActivationDiagnostics, MonitorOptions, OutputOptions, RuleOptions  # noqa: E402
from act_diagnostics.outputs.readback import load_run  # noqa: E402
from act_diagnostics.outputs.scalars import site_tag  # noqa: E402


class Net(pl.LightningModule):
    """Module activations (one inplace), a functional GELU and a softmax head into NLL via log."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(24, 24)
        self.fc3 = nn.Linear(24, 3)
        self.fail_at = fail_at
        self.val_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = F.gelu(self.fc2(h))
        return self.fc3(h)

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        self.val_calls += 1
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def loader(n: int = 256, batch: int = 16, seed: int = 0) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=batch)


def trainer(tmp_path, callback, loggers=None, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=kw.pop("max_epochs", 1),
        logger=loggers if loggers is not None else [TensorBoardLogger(str(tmp_path), name="tb"), CSVLogger(str(tmp_path), name="csv")],
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        **kw,
    )


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def event_accumulator(tmp_path) -> EventAccumulator:
    (event_dir,) = {os.path.dirname(p) for p in glob.glob(str(tmp_path / "tb" / "**" / "events.*"), recursive=True)}
    acc = EventAccumulator(event_dir, size_guidance={"scalars": 0, "histograms": 0, "tensors": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fit")
    torch.manual_seed(0)
    model = Net()
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False)
    t = trainer(tmp_path, cb, limit_val_batches=2)
    t.fit(model, loader(), loader(64))
    return tmp_path, model, cb, t


def test_sites_found_and_named(fitted):
    _, _, cb, _ = fitted
    # F.gelu is called in Net.forward, i.e. by the root module: its owner is the root ("").
    assert set(cb.last_snapshot.sites) == {"act", ":gelu"}
    assert cb.failure is None


def test_tensorboard_tags_read_back(fitted):
    tmp_path, _, cb, _ = fitted
    acc = event_accumulator(tmp_path)
    tags = acc.Tags()
    for site in ("act", ":gelu"):
        for stat in ("firing_rate", "dead_fraction", "mean", "std", "max_abs", "grad_rms", "nonfinite"):
            tag = f"act/{site_tag(site)}/{stat}"
            assert tag in tags["scalars"], tag
        assert f"act/{site_tag(site)}/output" in tags["histograms"]
    # The GELU saturation (input tail) and the feeding-layer gradient norm are measured too.
    assert "act/root/gelu/saturation" in tags["scalars"]
    assert "act/act/param_grad_norm" in tags["scalars"]
    assert "custom_scalars__config__" in tags["tensors"]
    # 16 training steps, window of 4: preflight step 0, then steps 3, 7, 11, 15.
    steps = [e.step for e in acc.Scalars("act/act/firing_rate")]
    assert steps == [0, 3, 7, 11, 15]
    rates = [e.value for e in acc.Scalars("act/act/firing_rate")]
    assert all(0.0 < r < 1.0 for r in rates)


def test_tensorboard_gets_one_event_per_log_step(fitted):
    # Each event is a hand-off to TensorBoard's writer thread: a log step's scalars and
    # histograms travel together (outputs/tensorboard.py).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tmp_path, _, cb, _ = fitted
    (path,) = glob.glob(str(tmp_path / "tb" / "**" / "events.*"), recursive=True)
    ours = {}
    for event in EventFileLoader(path).Load():
        tags = [v.tag for v in event.summary.value if v.tag.startswith("act/")]
        if tags:
            assert event.step not in ours, f"two events at step {event.step}"
            ours[event.step] = tags
    assert sorted(ours) == [0, 3, 7, 11, 15]
    # Every scalar of the step is in its event, with the histograms on detail steps.
    logged = {f"act/{site_tag(site)}/{k}" for site, st in cb.last_snapshot.stats.items() for k in st.scalars()}
    assert logged <= set(ours[15])
    assert "act/act/output" in ours[0]


def test_histograms_have_few_equal_width_buckets(fitted):
    # Small records: TensorBoard's writer checksums each one in pure Python without TensorFlow.
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    from act_diagnostics.outputs.tensorboard import HISTOGRAM_BUCKETS

    tmp_path, _, _, _ = fitted
    (path,) = glob.glob(str(tmp_path / "tb" / "**" / "events.*"), recursive=True)
    histos = [v.histo for e in LegacyEventFileLoader(path).Load() for v in e.summary.value if v.tag == "act/act/output"]
    assert histos
    for h in histos:
        assert 1 < len(h.bucket) <= HISTOGRAM_BUCKETS + 1 and sum(h.bucket) == h.num > 0
        widths = [b - a for a, b in zip(h.bucket_limit[:-2], h.bucket_limit[1:-1])]
        assert max(widths) == pytest.approx(min(widths), rel=1e-6)


def test_tensorboard_logger_prefix_is_kept(tmp_path):
    torch.manual_seed(0)
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False, outputs=OutputOptions(report=False))
    tb = TensorBoardLogger(str(tmp_path), name="tb", prefix="run")
    trainer(tmp_path, cb, loggers=[tb], max_steps=8).fit(Net(), loader())
    acc = event_accumulator(tmp_path)
    tags = acc.Tags()["scalars"]
    # As TensorBoardLogger.log_metrics names them: prefix, "-", tag.
    assert "run-act/act/firing_rate" in tags and "act/act/firing_rate" not in tags
    # The dashboard's charts and the readback find the prefixed tags.
    from tensorboard.plugins.custom_scalar import layout_pb2

    (config,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
    patterns = [r for cat in layout.category for chart in cat.chart for r in chart.multiline.tag]
    assert patterns and all(p.startswith("^run\\-act/") for p in patterns), patterns
    assert any(re.match(p, "run-act/act/firing_rate") for p in patterns)
    run = load_run(tb.log_dir)
    assert {row.site for row in run.layers} == {"act", "root/gelu"} and run.last_step == 7  # no report.json: tag names


def test_tensorboard_writer_without_file_writer_is_an_ordinary_logger(tmp_path, monkeypatch):
    from act_diagnostics.outputs.tensorboard import find_tensorboard, logger_prefix

    tb = TensorBoardLogger(str(tmp_path), name="tb")
    assert find_tensorboard([CSVLogger(str(tmp_path)), tb]) == (tb, tb.experiment)
    monkeypatch.setattr(type(tb.experiment), "_get_file_writer", None)
    assert find_tensorboard([tb]) is None  # its scalars then go through log_metrics
    assert logger_prefix(tb) == "" and logger_prefix(TensorBoardLogger(str(tmp_path), prefix="p")) == "p-"


def test_a_tensorboard_logger_subclass_gets_the_extras_and_the_report(tmp_path):
    """A team's own TensorBoardLogger subclass is a TensorBoard logger: histograms, the dashboard
    layout and the report beside its event files, whichever logger comes first."""

    class TeamLogger(TensorBoardLogger):
        pass

    torch.manual_seed(0)
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False)
    tb = TeamLogger(str(tmp_path), name="tb")
    trainer(tmp_path, cb, loggers=[CSVLogger(str(tmp_path), name="csv"), tb], max_steps=8).fit(Net(), loader())
    acc = event_accumulator(tmp_path)
    assert acc.Tags()["histograms"] and acc.Tensors("custom_scalars__config__")
    assert os.path.isfile(os.path.join(tb.log_dir, "act-diagnostics", "report.json"))


def test_a_second_trainer_gets_its_own_tensorboard_events(tmp_path):
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False, outputs=OutputOptions(report=False))
    model = Net()
    for name in ("first", "second"):
        tb = TensorBoardLogger(str(tmp_path), name=name)
        trainer(tmp_path, cb, loggers=[tb], max_steps=8).fit(model, loader())
        acc = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "histograms": 0}).Reload()
        assert "act/act/firing_rate" in acc.Tags()["scalars"], name
        assert "act/act/output" in acc.Tags()["histograms"], name  # not into the first run's writer


class SigmoidNet(Net):
    """Three hidden sigmoids: a saturating-hidden-activation warning at the pre-flight step."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Sequential(nn.Sigmoid(), nn.Linear(24, 24), nn.Sigmoid(), nn.Linear(24, 24), nn.Sigmoid())


def test_a_callback_reused_for_another_model_starts_over(tmp_path):
    """One callback, a second Trainer and a new model (a sweep): the report, findings and step
    count are the new model's, not carried over from the first (which had hidden sigmoids)."""
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False, outputs=OutputOptions(report=False), rules=RuleOptions(warn=False), eval_stages=["validate", "test"])
    first = trainer(tmp_path, cb, loggers=[], max_steps=8, val_check_interval=4, limit_val_batches=1, num_sanity_val_steps=0)
    first.fit(SigmoidNet(), loader(), loader(16))
    assert "saturating-hidden-activation" in {f.rule for f in cb.report.findings} and cb.steps == 8
    assert "validate" in cb.eval_snapshots
    # Testing another instance (a reloaded best model) evaluates it and keeps the fit's findings.
    first.test(SigmoidNet(), loader(32), verbose=False)
    assert "saturating-hidden-activation" in {f.rule for f in cb.report.findings} and cb.steps == 8
    assert cb.eval_snapshots["test"].window_steps == 2
    model = Net()
    trainer(tmp_path, cb, loggers=[], max_steps=6).fit(model, loader())
    assert "saturating-hidden-activation" not in {f.rule for f in cb.report.findings}
    assert cb.steps == 6 and cb.last_snapshot.step == 5 and set(cb.last_snapshot.sites) == {"act", ":gelu"}
    assert cb.eval_snapshots == {}
    trainer(tmp_path, cb, loggers=[], max_steps=4).fit(model, loader())  # the same model again: it goes on
    assert cb.steps == 10


class ProbabilitiesInEval(Net):
    """Returns probabilities outside training (a common pattern) and fails on a chosen validation call."""

    def __init__(self, fail_at_val: int | None = None) -> None:
        super().__init__()
        self.post = nn.Sigmoid()
        self.fail_at_val = fail_at_val

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if self.training else self.post(torch.tanh(out))

    def validation_step(self, batch, batch_idx):
        if self.val_calls == self.fail_at_val:
            raise RuntimeError("validation bug")
        return super().validation_step(batch, batch_idx)


def test_sites_only_evaluation_runs_stay_out_of_training_windows(tmp_path):
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False, outputs=OutputOptions(report=False), eval_stages=["validate"])
    trainer(tmp_path, cb, loggers=[], max_steps=8, val_check_interval=4, limit_val_batches=2, num_sanity_val_steps=0).fit(
        ProbabilitiesInEval(), loader(), loader(64)
    )
    assert set(cb.eval_snapshots["validate"].stats) == {"act", ":gelu", ":tanh", "post"}
    assert set(cb.last_snapshot.stats) == set(cb.last_snapshot.sites) == {"act", ":gelu"}
    assert cb.monitor.reads_functional_at_consumers  # evaluation did not switch off the functional fast path


def test_an_error_in_validation_counts_no_training_step(tmp_path):
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False, outputs=OutputOptions(report=False), eval_stages=["validate"])
    t = trainer(tmp_path, cb, loggers=[], max_steps=12, val_check_interval=3, limit_val_batches=2, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="validation bug"):
        t.fit(ProbabilitiesInEval(fail_at_val=3), loader(), loader(64))  # the 2nd validation's 2nd batch
    assert t.global_step == 6 and cb.steps == 6
    # The window after the log at step 3: training steps 4 and 5, none of the evaluation's calls.
    assert cb.last_snapshot.step == 5 and set(cb.last_snapshot.stats) == {"act", ":gelu"}
    assert cb.last_snapshot.window_steps == 2 and cb.last_snapshot.stats["act"].calls == 2


def test_csv_logger_receives_scalars(fitted):
    tmp_path, _, _, _ = fitted
    (path,) = glob.glob(str(tmp_path / "csv" / "**" / "metrics.csv"), recursive=True)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    header = rows[0].keys()
    assert "act/act/firing_rate" in header and "act/root/gelu/grad_rms" in header
    values = [float(r["act/act/firing_rate"]) for r in rows if r.get("act/act/firing_rate")]
    assert len(values) == 5 and all(0.0 < v < 1.0 for v in values)


def test_no_hooks_after_fit(fitted):
    _, model, cb, _ = fitted
    assert hook_count(model) == 0
    assert torch.overrides._get_current_function_mode_stack() == []
    assert not cb.monitor.attached


def test_validation_not_counted(fitted):
    _, model, cb, _ = fitted
    assert model.val_calls > 0
    # Each training step runs each site once; 16 steps in all (preflight step 0 + 15 more).
    total_calls = cb.monitor.steps
    assert total_calls == 16


def test_no_hooks_after_exception(tmp_path):
    model = Net(fail_at=5)
    cb = ActivationDiagnostics(log_every_n_steps=2, verbose=False)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, cb).fit(model, loader())
    assert hook_count(model) == 0
    assert torch.overrides._get_current_function_mode_stack() == []
    # What was measured before the failure is in the report.
    assert os.path.exists(os.path.join(cb.report_dir, "report.json"))


def test_report_lies_beside_the_tensorboard_events(tmp_path):
    """A CSVLogger listed before the TensorBoardLogger has its own version folder: the report goes
    beside the event files, where `act-diagnostics report` reads both."""
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False)
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    trainer(tmp_path, cb, loggers=[CSVLogger(str(tmp_path), name="csv"), tb], max_steps=8).fit(Net(), loader())
    assert cb.report_dir == os.path.join(tb.log_dir, "act-diagnostics")
    run = load_run(tb.log_dir)
    assert run.report_path is not None and run.report_path.is_file() and run.layers


def test_fast_dev_run_writes_no_report(tmp_path):
    cb = ActivationDiagnostics(log_every_n_steps=1, verbose=False)
    pl.Trainer(fast_dev_run=2, callbacks=[cb], default_root_dir=str(tmp_path), enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu").fit(Net(), loader())
    assert cb.last_snapshot is not None and cb.steps == 2  # measured and judged as usual
    assert cb.report_dir is None and not list(tmp_path.rglob("report.json"))


def test_follows_trainer_interval(tmp_path):
    cb = ActivationDiagnostics(verbose=False, outputs=OutputOptions(report=False))
    t = trainer(tmp_path, cb, loggers=[CSVLogger(str(tmp_path), name="csv")], log_every_n_steps=5)
    t.fit(Net(), loader())
    assert cb._interval(t) == 5
    assert cb.last_snapshot.step == 15  # the last log step of 16 (steps 0, 4, 9, 14, then end-of-fit flush)
    t.log_every_n_steps = 0  # Lightning's own step logging off (barebones=True sets it): windows of 50
    assert cb._interval(t) == 50


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"log_every_n_steps": 0}, ValueError, "`log_every_n_steps` must be a positive int or None"),
        ({"measure_every_n_steps": 0}, ValueError, "`measure_every_n_steps` must be a positive int"),
        ({"verbose": "yes"}, TypeError, "`verbose` must be True or False, got 'yes'"),
        ({"eval_stages": ["train"]}, ValueError, "`eval_stages` entries must be 'validate', 'test' or 'predict'"),
        ({"rules": "on"}, TypeError, r"`rules` must be a RuleOptions, True \(the defaults\) or False \(rules off\), got 'on'"),
        ({"monitor": {"kinds": ["swish"]}}, ValueError, r"`kinds` entries must be activation kinds or families; got \['swish'\]"),
        ({"outputs": 3}, TypeError, r"`outputs` must be an OutputOptions or None \(the defaults\), got 3"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ActivationDiagnostics(**kwargs)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: MonitorOptions(saturation_eps=0.7), ValueError, r"`saturation_eps` must be a number in \(0, 0.5\), got 0.7"),
        (lambda: MonitorOptions(kinds=["relu", "swish"]), ValueError, r"`kinds` entries must be activation kinds or families; got \['swish'\]"),
        (lambda: MonitorOptions(include=3), TypeError, "`include` must be a string or a list of strings"),
        (lambda: MonitorOptions(sample_elements=0), ValueError, "`sample_elements` must be a positive int or None"),
        (lambda: RuleOptions(warn="yes"), TypeError, "`warn` must be True or False, got 'yes'"),
        (lambda: RuleOptions(disable=["saturaton"]), ValueError, r"`disable` got unknown rule id\(s\) \['saturaton'\]"),
        (lambda: RuleOptions(thresholds={"dead-units.unit_rate": 1.5}), ValueError,
         r"`thresholds\['dead-units.unit_rate'\]` must be in \(0, 1\), got 1.5"),
        (lambda: OutputOptions(heatmaps=1), TypeError, "`heatmaps` must be True or False, got 1"),
        (lambda: OutputOptions(histogram_samples=-1), ValueError, r"`histogram_samples` must be an int >= 0 \(0 turns histograms off\), got -1"),
    ],
)
def test_bad_options_name_the_option(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"thresholds": {"dead-units.warn_fraction": 0.3}}, "ActivationDiagnostics: `thresholds` moved: use rules=RuleOptions(thresholds=...)"),
        ({"disable_rules": ["saturation"]}, "ActivationDiagnostics: `disable_rules` moved: use rules=RuleOptions(disable=...)"),
        ({"warn": False}, "ActivationDiagnostics: `warn` moved: use rules=RuleOptions(warn=...)"),
        ({"include": ["net.*"]}, "ActivationDiagnostics: `include` moved: use monitor=MonitorOptions(include=...)"),
        ({"heatmaps": False}, "ActivationDiagnostics: `heatmaps` moved: use outputs=OutputOptions(heatmaps=...)"),
        ({"report": False}, "ActivationDiagnostics: `report` moved: use outputs=OutputOptions(report=...)"),
        ({"log_every_n_step": 5},
         "ActivationDiagnostics got an unexpected keyword argument 'log_every_n_step'; did you mean 'log_every_n_steps'?"),
        ({"histogram": True},
         "ActivationDiagnostics got an unexpected keyword argument 'histogram'; did you mean 'histograms' (outputs=OutputOptions(histograms=...))?"),
        ({"colour": "red"},
         "ActivationDiagnostics got an unexpected keyword argument 'colour'; valid keywords: log_every_n_steps, "
         "measure_every_n_steps, monitor, rules, outputs, eval_stages, verbose"),
    ],
)
def test_wrong_keywords_are_answered_in_the_users_words(kwargs, message):
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        ActivationDiagnostics(**kwargs)


def test_options_are_keyword_only():
    with pytest.raises(TypeError, match=re.escape("ActivationDiagnostics takes keyword arguments only, got 1 positional; "
                                                  "e.g. ActivationDiagnostics(log_every_n_steps=10)")):
        ActivationDiagnostics(10)


def test_grouped_options_reach_the_monitor_the_rules_and_the_outputs():
    cb = ActivationDiagnostics(
        monitor=MonitorOptions(include="fc*", kinds=["relu"], gradients=False, sample_elements=None),
        rules=RuleOptions(disable=["saturation"], warn=False, preflight=False),
        outputs=OutputOptions(histograms=False, report=False),
    )
    cfg = cb.monitor_config
    assert cfg.include == ("fc*",) and cfg.kinds == ("relu",) and cfg.gradients is False and cfg.sample_elements is None
    assert cfg.histogram_samples == 0  # no histograms: no samples kept for them
    assert "saturation" in cb.engine.disabled and not cb.options.warn and not cb.options.preflight
    assert ActivationDiagnostics(rules=False).engine is None
    # rules=False keeps the pre-flight log step (statistics at initialisation are still logged)
    assert ActivationDiagnostics(rules=False).options.preflight is True


def test_dead_unit_rate_threshold_sets_the_logged_dead_fraction_too(tmp_path):
    """One dead-unit rate: thresholds={"dead-units.unit_rate": r} moves the rule and the logged
    dead_fraction together (a unit firing on 5% of its samples is dead at r=0.1, alive at 0.01)."""
    assert ActivationDiagnostics().monitor_config.dead_unit_rate == 0.01
    cb = ActivationDiagnostics(rules=RuleOptions(thresholds={"dead-units.unit_rate": 0.1}))
    assert cb.monitor_config.dead_unit_rate == 0.1
    assert next(r for r in cb.engine.rules if r.id == "dead-units").t["unit_rate"] == 0.1

    class Rare(nn.Module):
        """Eight ReLU units: unit 0 fires on every sample, the others on 1 sample in 20 (5%)."""

        def __init__(self) -> None:
            super().__init__()
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(x)

    from act_diagnostics.core.monitor import ActivationMonitor

    x = -torch.ones(40, 8)
    x[:, 0] = 1.0
    x[::20, 1:] = 1.0
    fractions = {}
    for rate in (0.01, 0.1):
        cfg = ActivationDiagnostics(rules=RuleOptions(thresholds={"dead-units.unit_rate": rate})).monitor_config
        mon = ActivationMonitor(Rare(), cfg).attach()
        mon.begin_step()
        mon.model(x)
        mon.end_step()
        fractions[rate] = mon.snapshot().stats["act"].dead_fraction
        mon.detach()
    assert fractions == {0.01: 0.0, 0.1: 7 / 8}


def test_automatic_measurement_schedule(tmp_path):
    """measure_every_n_steps=None: every step of the first window, then about 5 per window."""
    cb = ActivationDiagnostics(log_every_n_steps=20, verbose=False, outputs=OutputOptions(report=False), rules=False)
    t = trainer(tmp_path, cb, loggers=[CSVLogger(str(tmp_path), name="csv")], max_epochs=-1, max_steps=40)
    t.fit(Net(), loader(n=1024))
    assert cb._schedule_for(t).measure_every == 4
    # Steps 0..19 (the first window), then 20, 24, 28, 32, 36 and the log step 39.
    assert cb.monitor.steps == 26


def test_unmeasured_steps_run_the_bare_model(tmp_path):
    """Steps the schedule skips carry no hook at all; measured ones carry them again."""

    class HookCounter(pl.Callback):  # runs after ActivationDiagnostics in the callback list
        def __init__(self) -> None:
            self.counts: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.counts.append(hook_count(pl_module))

    cb = ActivationDiagnostics(log_every_n_steps=10, verbose=False, outputs=OutputOptions(report=False), rules=False)
    counter = HookCounter()
    t = trainer(tmp_path, cb, loggers=[], max_epochs=-1, max_steps=24)
    t.callbacks.append(counter)
    t.fit(Net(), loader(n=1024))
    hooked = [i for i, n in enumerate(counter.counts) if n]
    assert hooked == [*range(10), 10, 12, 14, 16, 18, 19, 20, 22]  # dense first window, then every 2nd
    assert cb.monitor.steps == len(hooked) and hook_count(t.lightning_module) == 0


def test_eval_stages_are_measured_and_logged_apart_from_training(tmp_path):
    """Validation (in fit), test and predict batches: each stage's own window, logged under
    act_<stage>/..., never mixed into the training windows or counted as training steps; the
    sanity check's batches are not measured."""
    model = Net()
    stages = ["validate", "test", "predict"]
    cb = ActivationDiagnostics(log_every_n_steps=4, verbose=False, outputs=OutputOptions(report=False), eval_stages=stages)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    t = trainer(tmp_path, cb, loggers=[csv_logger], limit_val_batches=2, num_sanity_val_steps=2)
    t.fit(model, loader(), loader(64))
    assert model.val_calls == 4  # 2 sanity + 2 validation batches
    assert cb.steps == 16 and cb.monitor.window_steps == 0
    val = cb.eval_snapshots["validate"]
    assert val.window_steps == 2 and val.stats["act"].calls == 2
    assert val.stats["act"].grad_rms is None  # no gradients in evaluation
    assert cb.last_snapshot.stats["act"].calls == 4  # the last training window: its 4 steps only
    t.test(model, loader(48), verbose=False)
    t.predict(model, loader(32))
    assert cb.eval_snapshots["test"].window_steps == 3 and cb.eval_snapshots["predict"].window_steps == 2
    assert cb.steps == 16 and cb.monitor.window_steps == 0 and cb.failure is None
    csv_logger.save()
    (path,) = glob.glob(str(tmp_path / "csv" / "**" / "metrics.csv"), recursive=True)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert {"act_validate/act/firing_rate", "act_test/act/firing_rate", "act/act/firing_rate"} <= set(rows[0])
    # Logged at the step Lightning logs the validation's own metrics at.
    (val_loss_step,) = {r["step"] for r in rows if r.get("val_loss")}
    assert {r["step"] for r in rows if r.get("act_validate/act/firing_rate")} == {val_loss_step} == {str(val.step)}


def test_a_subclass_forwarding_keywords_keeps_the_checks():
    class Mine(ActivationDiagnostics):
        def __init__(self, tag: str = "", **kw) -> None:
            super().__init__(**kw)
            self.tag = tag

    assert Mine(tag="a", log_every_n_steps=3).options.log_every_n_steps == 3
    with pytest.raises(TypeError, match=re.escape("Mine got an unexpected keyword argument 'verbos'; did you mean 'verbose'?")):
        Mine(verbos=False)
