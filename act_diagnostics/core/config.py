"""Options of the measuring core, checked once with messages that name the argument and the choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from act_diagnostics.core.checks import integer, real
from act_diagnostics.core.kinds import FAMILIES, KINDS
from act_diagnostics.core.snapshot import DEAD_UNIT_RATE

# Saturation margin: sigmoid below eps or above 1 - eps has derivative below about 0.01
# (rules.md: "unit saturated if f'(x) < 0.01"; Karpathy, makemore part 3, uses |tanh| > 0.97-0.99).
DEFAULT_SATURATION_EPS = 0.01
# Firing and saturation masks read at most this many elements per call (the leading rows of the
# batch). 2**18 keeps a call's temporaries in cache on a CPU and still gives every unit of a
# 512-wide layer 512 samples per call; set None to read everything.
DEFAULT_SAMPLE_ELEMENTS = 2**18
# Values per site kept for each histogram (a strided sample of the log step's output).
DEFAULT_HISTOGRAM_SAMPLES = 1024
# Training steps during which the tracer follows tensors to learn what feeds and consumes each
# site (structure does not change during a run; following tensors costs a little per op).
DEFAULT_STRUCTURE_STEPS = 2


def _check_patterns(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"`{name}` must be a string or a list of strings (glob patterns), got {value!r}")
    if isinstance(value, list) and not value and name != "exclude":
        # An empty selection would watch nothing (or, read as "no filter", everything): ambiguous.
        raise ValueError(f"`{name}` is an empty list, which would select no site; pass None to watch every site")
    return tuple(value)


@dataclass
class MonitorConfig:
    """What to watch and how. Every field is validated in ``__post_init__``."""

    include: tuple[str, ...] | list[str] | str | None = None
    exclude: tuple[str, ...] | list[str] | str | None = None
    kinds: tuple[str, ...] | list[str] | str | None = None
    functional: bool = True
    unit_dim: int | None = None
    saturation_eps: float = DEFAULT_SATURATION_EPS
    sample_elements: int | None = DEFAULT_SAMPLE_ELEMENTS
    histogram_samples: int = DEFAULT_HISTOGRAM_SAMPLES
    gradients: bool = True
    structure_steps: int = DEFAULT_STRUCTURE_STEPS
    dead_unit_rate: float = DEAD_UNIT_RATE

    def __post_init__(self) -> None:
        self.include = _check_patterns("include", self.include)
        self.exclude = _check_patterns("exclude", self.exclude)
        kinds = _check_patterns("kinds", self.kinds)
        unknown = [k for k in kinds if k not in KINDS and k not in FAMILIES and k.removeprefix("family:") not in FAMILIES]
        if unknown:
            raise ValueError(
                f"`kinds` entries must be activation kinds or families; got {unknown}. "
                f"Kinds: {', '.join(KINDS)}. Families: {', '.join(FAMILIES)} "
                "(a name that is also a kind, like 'relu', selects the kind; 'family:relu' the family)"
            )
        self.kinds = kinds
        for name in ("functional", "gradients"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False, got {getattr(self, name)!r}")
        if self.unit_dim is not None:
            unit_dim = integer(self.unit_dim)
            if unit_dim is None:
                raise TypeError(f"`unit_dim` must be an int or None (automatic), got {self.unit_dim!r}")
            self.unit_dim = unit_dim
        eps = real(self.saturation_eps)
        if eps is None or not 0.0 < eps < 0.5:
            raise ValueError(f"`saturation_eps` must be a number in (0, 0.5), got {self.saturation_eps!r}")
        self.saturation_eps = eps
        if self.sample_elements is not None:
            n = integer(self.sample_elements)
            if n is None or n < 1:
                raise ValueError(f"`sample_elements` must be a positive int or None (read everything), got {self.sample_elements!r}")
            self.sample_elements = n
        n = integer(self.histogram_samples)
        if n is None or n < 0:
            raise ValueError(f"`histogram_samples` must be an int >= 0 (0 turns histograms off), got {self.histogram_samples!r}")
        self.histogram_samples = n
        n = integer(self.structure_steps)
        if n is None or n < 0:
            raise ValueError(f"`structure_steps` must be an int >= 0, got {self.structure_steps!r}")
        self.structure_steps = n
        rate = real(self.dead_unit_rate)
        if rate is None or not 0.0 <= rate < 1.0:
            raise ValueError(f"`dead_unit_rate` must be a number in [0, 1), got {self.dead_unit_rate!r}")
        self.dead_unit_rate = rate


def selects(kinds: tuple[str, ...] | list[str], kind: str, family: str) -> bool:
    """Whether the ``kinds`` option selects an activation of ``kind`` in ``family``.

    A name that is both a kind and a family ("relu", "sigmoid", "tanh", "softmax") selects the
    kind only; ``"family:<name>"`` selects a whole family, as does a family name that is no kind
    ("smooth", "bounded", "gate", "other").
    """
    return kind in kinds or f"family:{family}" in kinds or (family in kinds and family not in KINDS)
