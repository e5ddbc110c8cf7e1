"""The callback's options: three groups of related settings, each checked when it is built.

``ActivationDiagnostics(monitor=MonitorOptions(...), rules=RuleOptions(...), outputs=OutputOptions(...))``
groups what used to be 22 flat keywords: *what is measured* (MonitorOptions), *how it is judged*
(RuleOptions) and *what is written* (OutputOptions). Each is a plain dataclass with type hints, so
LightningCLI sets any field from the command line (``--trainer.callbacks.monitor.kinds=[relu]``) or
YAML. Every message names the argument, the value received and the valid choices.

The keywords that moved answer with a TypeError naming their new place (:func:`unexpected_keyword`).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Literal

from act_diagnostics.callbacks.schedule import MEASURED_STEPS_PER_WINDOW
from act_diagnostics.core.checks import integer
from act_diagnostics.core.config import DEFAULT_HISTOGRAM_SAMPLES, DEFAULT_SAMPLE_ELEMENTS, DEFAULT_SATURATION_EPS, MonitorConfig
from act_diagnostics.core.snapshot import DEAD_UNIT_RATE

Stage = Literal["validate", "test", "predict"]
STAGES: tuple[str, ...] = ("validate", "test", "predict")
# The threshold that defines a dead unit for the rule; the monitor's logged dead_fraction follows it.
DEAD_UNIT_RATE_KEY = "dead-units.unit_rate"


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}")


@dataclass
class MonitorOptions:
    """What is measured.

    Args:
        include: glob patterns of site names to watch (e.g. ``["encoder.*"]``); None watches all.
        exclude: glob patterns of site names to skip.
        kinds: activation kinds or families to watch (e.g. ``["relu", "sigmoid"]``); None watches
            all. A name that is both, like ``"relu"``, is the kind; ``"family:relu"`` adds LeakyReLU,
            PReLU, ReLU6 and the rest of the family (``"smooth"`` alone names the GELU/SiLU/ELU family).
        functional: also watch functional activations (``F.relu`` in a forward, ``x.softmax(-1)``).
        gradients: measure gradient RMS at each activation output (a tensor hook per output).
        unit_dim: dimension that indexes units; None: channel dim 1 for conv outputs, else the last.
        saturation_eps: saturation margin, e.g. sigmoid below eps or above 1 - eps.
        sample_elements: every per-element statistic reads at most this many elements per call, the
            leading batch rows; None reads everything. Detail steps count non-finite values over
            the whole output.
    """

    include: list[str] | None = None
    exclude: list[str] | None = None
    kinds: list[str] | None = None
    functional: bool = True
    gradients: bool = True
    unit_dim: int | None = None
    saturation_eps: float = DEFAULT_SATURATION_EPS
    sample_elements: int | None = DEFAULT_SAMPLE_ELEMENTS

    def __post_init__(self) -> None:
        self.config()  # the core checks every field, with messages that name it

    def config(self, histogram_samples: int = DEFAULT_HISTOGRAM_SAMPLES, dead_unit_rate: float | None = None) -> MonitorConfig:
        """The core's :class:`MonitorConfig` for these options."""
        return MonitorConfig(
            include=self.include,
            exclude=self.exclude,
            kinds=self.kinds,
            functional=self.functional,
            gradients=self.gradients,
            unit_dim=self.unit_dim,
            saturation_eps=self.saturation_eps,
            sample_elements=self.sample_elements,
            histogram_samples=histogram_samples,
            dead_unit_rate=DEAD_UNIT_RATE if dead_unit_rate is None else dead_unit_rate,
        )


@dataclass
class RuleOptions:
    """How statistics are judged (``rules=False`` switches the rules off).

    Args:
        disable: rule ids to switch off, e.g. ``["saturation"]`` (docs/rules lists them).
        thresholds: rule thresholds to override, ``{"<rule-id>.<name>": value}``.
            ``"dead-units.unit_rate"`` also sets the rate below which the logged ``dead_fraction``
            counts a unit as dead, so the metric and the rule agree.
        warn: issue each warning/error finding once as an ``ActivationWarning``.
        preflight: publish and judge the first training step's statistics at once (signal
            propagation at initialisation).
    """

    disable: list[str] | None = None
    thresholds: dict[str, float] | None = None
    warn: bool = True
    preflight: bool = True

    def __post_init__(self) -> None:
        from act_diagnostics.rules.engine import check_rule_ids

        if self.disable is not None and not isinstance(self.disable, (str, list, tuple)):
            raise TypeError(f"`disable` must be a list of rule ids or None, got {self.disable!r}")
        self.disable = list(check_rule_ids(self.disable, "disable")) or None
        _check_bool("warn", self.warn)
        _check_bool("preflight", self.preflight)
        self.engine()  # the engine checks every threshold key and value
        rate = self.dead_unit_rate
        if rate is not None and not 0.0 <= rate < 1.0:
            raise ValueError(f"`thresholds[{DEAD_UNIT_RATE_KEY!r}]` must be a number in [0, 1), got {rate!r}")

    def engine(self) -> Any:
        """A new :class:`act_diagnostics.rules.RuleEngine` for these options."""
        from act_diagnostics.rules import RuleEngine

        return RuleEngine(disable=self.disable or (), thresholds=self.thresholds)

    @property
    def dead_unit_rate(self) -> float | None:
        """The dead-unit rate set through ``thresholds``, or None (the default)."""
        value = (self.thresholds or {}).get(DEAD_UNIT_RATE_KEY)
        return None if value is None else float(value)


@dataclass
class OutputOptions:
    """What is written besides the scalars every logger receives.

    Args:
        histograms: write output histograms to TensorBoard on detail steps (log steps at least
            10 steps apart).
        grad_histograms: also write histograms of the gradient at each activation output.
        heatmaps: write layers x steps images of dead fraction and saturation to TensorBoard.
        histogram_samples: values per site kept for each histogram.
        report: write ``report.json`` and ``report.md`` in the log dir at the end of fit.
    """

    histograms: bool = True
    grad_histograms: bool = False
    heatmaps: bool = True
    histogram_samples: int = DEFAULT_HISTOGRAM_SAMPLES
    report: bool = True

    def __post_init__(self) -> None:
        for name in ("histograms", "grad_histograms", "heatmaps", "report"):
            _check_bool(name, getattr(self, name))
        n = integer(self.histogram_samples)
        if n is None or n < 0:
            raise ValueError(f"`histogram_samples` must be an int >= 0 (0 turns histograms off), got {self.histogram_samples!r}")
        self.histogram_samples = n


@dataclass(frozen=True)
class Options:
    """Every option of one callback, checked: what the callback and its helpers read."""

    log_every_n_steps: int | None
    measure_every_n_steps: int | None
    monitor: MonitorOptions
    rules: RuleOptions | None  # None: rules off
    outputs: OutputOptions
    eval_stages: tuple[str, ...]
    verbose: bool

    @property
    def preflight(self) -> bool:
        """Step 0 is a log step (published, and judged when the rules are on)."""
        return self.rules.preflight if self.rules is not None else RuleOptions.preflight

    @property
    def warn(self) -> bool:
        return self.rules is not None and self.rules.warn

    def monitor_config(self) -> MonitorConfig:
        samples = self.outputs.histogram_samples if self.outputs.histograms else 0
        rate = self.rules.dead_unit_rate if self.rules is not None else None
        return self.monitor.config(histogram_samples=samples, dead_unit_rate=rate)


def check_options(
    log_every_n_steps: Any,
    measure_every_n_steps: Any,
    monitor: Any,
    rules: Any,
    outputs: Any,
    eval_stages: Any,
    verbose: Any,
) -> Options:
    """The constructor's arguments, checked, as one :class:`Options`."""
    if measure_every_n_steps is not None:
        n = integer(measure_every_n_steps)
        if n is None or n < 1:
            raise ValueError(
                "`measure_every_n_steps` must be a positive int (1: every step) or None "
                f"(automatic: {MEASURED_STEPS_PER_WINDOW} measured steps per window after the first), got {measure_every_n_steps!r}"
            )
        measure_every_n_steps = n
    if log_every_n_steps is not None:
        n = integer(log_every_n_steps)
        if n is None or n < 1:
            raise ValueError(f"`log_every_n_steps` must be a positive int or None (follow the Trainer), got {log_every_n_steps!r}")
        log_every_n_steps = n
    _check_bool("verbose", verbose)
    monitor = _group("monitor", monitor, MonitorOptions)
    outputs = _group("outputs", outputs, OutputOptions)
    if isinstance(rules, bool):
        rules = RuleOptions() if rules else None
    elif not isinstance(rules, RuleOptions):
        raise TypeError(f"`rules` must be a RuleOptions, True (the defaults) or False (rules off), got {rules!r}")
    return Options(log_every_n_steps, measure_every_n_steps, monitor, rules, outputs, _check_stages(eval_stages), verbose)


def _group(name: str, value: Any, cls: type) -> Any:
    if value is None:
        return cls()
    if isinstance(value, dict):  # a mapping of the group's fields (a config file read by hand)
        return cls(**value)
    if not isinstance(value, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"`{name}` must be {article} {cls.__name__} or None (the defaults), got {value!r}")
    return value


def _check_stages(eval_stages: Any) -> tuple[str, ...]:
    if isinstance(eval_stages, str):
        eval_stages = [eval_stages]
    if eval_stages is not None and not isinstance(eval_stages, (list, tuple)):
        raise TypeError(f"`eval_stages` must be a list of 'validate', 'test', 'predict' or None, got {eval_stages!r}")
    stages = tuple(eval_stages or ())
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"`eval_stages` entries must be 'validate', 'test' or 'predict', got {bad}")
    return stages


# The flat keywords of earlier versions, and where each lives now.
MOVED: dict[str, str] = {
    **{name: f"monitor=MonitorOptions({name}=...)" for name in (
        "include", "exclude", "kinds", "functional", "gradients", "unit_dim", "saturation_eps", "sample_elements")},
    **{name: f"outputs=OutputOptions({name}=...)" for name in (
        "histograms", "grad_histograms", "heatmaps", "histogram_samples", "report")},
    **{name: f"rules=RuleOptions({name}=...)" for name in ("thresholds", "warn", "preflight")},
    "disable_rules": "rules=RuleOptions(disable=...)",
}


def unexpected_keyword(owner: str, name: str, valid: list[str]) -> TypeError:
    """The error for a keyword ``owner`` does not take: where it moved, or the closest valid one."""
    if name in MOVED:
        return TypeError(f"{owner}: `{name}` moved: use {MOVED[name]}")
    message = f"{owner} got an unexpected keyword argument {name!r}"
    close = difflib.get_close_matches(name, valid + list(MOVED), n=1)
    if close:
        hint = close[0] if close[0] in valid else MOVED[close[0]]
        message += f"; did you mean {hint!r}?" if close[0] in valid else f"; did you mean {close[0]!r} ({hint})?"
    else:
        message += f"; valid keywords: {', '.join(valid)}"
    return TypeError(message)


def check_call(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Keyword arguments only, each one ``cls.__init__`` takes; errors name ``cls`` (the public class)."""
    name = cls.__name__
    if args:
        raise TypeError(f"{name} takes keyword arguments only, got {len(args)} positional; e.g. {name}(log_every_n_steps=10)")
    valid: list[str] = []
    for klass in cls.__mro__:  # a subclass's __init__(**kw) forwards to its base: theirs count too
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            valid += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
    for key in kwargs:
        if key not in valid:
            raise unexpected_keyword(name, key, valid)
