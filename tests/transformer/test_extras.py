"""ExtraTotals: sums and maxima side by side, read back in order, reset to 0 and -inf."""

from __future__ import annotations

import math

import numpy as np
import torch

from act_diagnostics.core.extras import OP_MAX, OP_SUM, ExtraTotals, measured_max
from act_diagnostics.core.pack import combine_gathered

OPS = (OP_SUM, OP_SUM, OP_MAX, OP_MAX)


def test_mixed_columns_add_and_take_maxima_then_reset() -> None:
    extras = ExtraTotals()
    extras.accumulate("a", "log_z", torch.tensor([1.0, 2.0, -5.0, 3.0]), OPS)
    extras.accumulate("a", "log_z", torch.tensor([0.5, 1.0, -7.0, 4.0]), OPS)
    extras.accumulate("b", "attention_logits", torch.tensor([2.0, 9.0]), (OP_MAX, OP_MAX))
    values, ops = extras.vector(torch.device("cpu"), torch.float64)
    assert values.tolist() == [1.5, 3.0, -5.0, 4.0, 2.0, 9.0] and ops.tolist() == [0, 0, 1, 1, 1, 1]
    # Two ranks: sums add, maxima stay the largest (pack's combine, as in the one collective).
    other = values.clone()
    other[2] = 8.0
    combined = combine_gathered(torch.stack((values, other)), ops)
    assert combined.tolist() == [3.0, 6.0, 8.0, 4.0, 2.0, 9.0]
    extras.receive(np.asarray(combined))
    assert extras.last["a"][0] == "log_z" and extras.last["b"][1].tolist() == [2.0, 9.0]
    extras.reset()
    values, _ = extras.vector(torch.device("cpu"), torch.float64)
    assert values[:2].tolist() == [0.0, 0.0] and all(math.isinf(v) and v < 0 for v in values[2:].tolist())
    assert measured_max(float("-inf")) is None and measured_max(-2.0) == -2.0
    assert extras.signature() != ExtraTotals().signature() and len(extras) == 2
