"""Log Z of the logits that reach a classification loss: how far the softmax's normaliser drifts.

For logits z over C classes, log Z = logsumexp_c z_c. Cross-entropy is unchanged by adding a
constant to every logit, so nothing in the loss holds log Z near 0, and in unstable runs it drifts
far from it (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities": output logit divergence); PaLM's z-loss (Chowdhery et al. 2022) adds
1e-4 * (log Z)^2 to the loss to hold it there.

The tracer hands every ``F.cross_entropy`` call of a measured training step to
:func:`observe_loss_logits` (``nn.CrossEntropyLoss`` calls it too): log Z of the leading rows of
its input, within the monitor's ``sample_elements`` logits, in float32 under ``no_grad``, kept on
the device as [sum, count, max, -min] per loss call position (``cross_entropy``, then
``cross_entropy#1`` for a second call in one pass). The tracer runs on structure steps, detail steps
and on the steps that trace functional activations, so log Z is measured on those steps only:
no extra op on any other step, and no sync.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from act_diagnostics.core.extras import LOG_Z, OP_MAX, OP_SUM, measured_max

# Loss functions whose input holds unnormalised logits over a class dim (1, or 0 for one sample).
LOG_Z_LOSSES: dict[Any, str] = {F.cross_entropy: "cross_entropy"}
_OPS = (OP_SUM, OP_SUM, OP_MAX, OP_MAX)


@dataclass
class LogZStats:
    """Log Z of one loss call position over one window (rows: how many logit rows were read)."""

    rows: int
    mean: float
    max: float
    min: float

    @property
    def max_abs(self) -> float:
        """The largest distance from 0 in the window (either direction)."""
        return max(abs(self.max), abs(self.min))

    def scalars(self) -> dict[str, float]:
        """Logged as ``act/loss/<call>/log_z_mean`` etc. (docs/logged-metrics.md)."""
        return {"log_z_mean": self.mean, "log_z_max": self.max, "log_z_min": self.min}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def log_z(logits: Tensor, class_dim: int = 1, max_elements: int | None = None) -> Tensor:
    """logsumexp over the classes of each row of ``logits`` (classes on ``class_dim``, or the only
    dim of a 1-D input), for the leading rows holding at most ``max_elements`` logits; float32."""
    x = logits.detach()
    if x.dim() == 1:
        x = x.unsqueeze(0)
    elif class_dim % x.dim() != x.dim() - 1:
        x = x.movedim(class_dim, -1)
    x = x.reshape(-1, x.shape[-1])
    if max_elements is not None and x.numel() > max_elements:
        x = x[: max(1, max_elements // max(1, x.shape[-1]))]
    return torch.logsumexp(x.float(), dim=-1)


def log_z_totals(lse: Tensor) -> Tensor:
    """[sum, count, max, -min] of one call's log Z values, on their device (no sync)."""
    return torch.stack((lse.sum(), lse.new_full((), lse.numel()), lse.amax(), lse.amin().neg()))


def log_z_stats(values: np.ndarray) -> LogZStats | None:
    """A window's :class:`LogZStats` from its reduced [sum, count, max, -min], or None if unmeasured."""
    total, count, high, neg_low = (float(v) for v in values[:4])
    if count <= 0:
        return None
    high_v, low_v = measured_max(high), measured_max(neg_low)
    return LogZStats(
        rows=int(round(count)),
        mean=total / count,
        max=high_v if high_v is not None else math.nan,
        min=-low_v if low_v is not None else math.nan,
    )


def observe_loss_logits(monitor: Any, func: Any, args: tuple, kwargs: dict) -> None:
    """Measure log Z of the input of one loss call seen by the tracer (training steps only)."""
    if not monitor.enabled or monitor.failure is not None or not getattr(monitor, "_training", True):
        return
    if torch._C._current_graph_task_id() != -1:  # inside backward: a checkpoint's re-run
        return
    logits = args[0] if args else kwargs.get("input")
    if not isinstance(logits, Tensor) or not logits.is_floating_point() or logits.dim() == 0 or logits.numel() == 0:
        return
    try:
        with torch._C.DisableTorchFunction():
            key = monitor._next_call(LOG_Z_LOSSES[func])
            lse = log_z(logits, 1, monitor.config.sample_elements)
            monitor.extras.accumulate(key, LOG_Z, log_z_totals(lse), _OPS)
    except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
        monitor._fail(exc)
