"""Reading numeric arguments: numpy scalars (values from a YAML or numpy config) count as numbers,
booleans do not, and what is kept is a plain Python int or float."""

from __future__ import annotations

import numbers
from typing import Any


def integer(value: Any) -> int | None:
    """``value`` as an int when it is an integer (numpy's included) and not a bool, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (numpy's included) and not a bool, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)
