"""Independent oracles: plain torch code (hooks, autograd, isfinite) that confirms a fault is
really there, without any of act_diagnostics' own measurement or judgement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F

Forward = Callable[[nn.Module], torch.Tensor]  # runs the model on fixed data and returns the loss


def _units(t: torch.Tensor) -> torch.Tensor:
    """Rows are samples, columns are units: channel dim 1 of a conv output, else the last dim."""
    t = t.detach().float()
    if t.dim() == 4:
        return t.transpose(0, 1).reshape(t.shape[1], -1).T
    return t.reshape(-1, t.shape[-1])


@contextmanager
def _capture(modules: list[nn.Module], inputs: bool) -> Iterator[dict[nn.Module, list[torch.Tensor]]]:
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in modules}
    handles = []
    for m in modules:
        if inputs:
            handles.append(m.register_forward_pre_hook(lambda mod, args: seen[mod].append(args[0].detach().clone())))
        else:
            handles.append(m.register_forward_hook(lambda mod, args, out: seen[mod].append(out.detach().clone())))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def _run(net: nn.Module, forwards: list[Forward]) -> None:
    with torch.no_grad():
        for fwd in forwards:
            fwd(net)


def never_positive_fraction(net: nn.Module, module: nn.Module, forwards: list[Forward]) -> float:
    """Share of ``module``'s output units that never exceed 0 over all the data."""
    with _capture([module], inputs=False) as seen:
        _run(net, forwards)
    rows = torch.cat([_units(t) for t in seen[module]])
    return float((rows.max(0).values <= 0).float().mean())


def flat_region_fraction(net: nn.Module, module: nn.Module, forwards: list[Forward], flat: Callable[[torch.Tensor], torch.Tensor],
                         share: float = 0.99, inputs: bool = True, pooled: bool = False) -> float:
    """Share of units where ``flat(x)`` holds on more than ``share`` of samples, ``x`` being the
    input of ``module`` (an activation), or its output (the layer feeding a functional activation).
    ``pooled``: the share of all values where it holds instead."""
    with _capture([module], inputs=inputs) as seen:
        _run(net, forwards)
    rows = torch.cat([_units(t) for t in seen[module]])
    if pooled:
        return float(flat(rows).float().mean())
    return float((flat(rows).float().mean(0) > share).float().mean())


def input_stds(net: nn.Module, modules: list[nn.Module], forward: Forward) -> list[float]:
    """Standard deviation of each module's input on one forward, in the order given."""
    with _capture(modules, inputs=True) as seen:
        _run(net, [forward])
    return [float(seen[m][0].float().std()) for m in modules]


def output_rms(net: nn.Module, modules: list[nn.Module], forward: Forward) -> list[float]:
    with _capture(modules, inputs=False) as seen:
        _run(net, [forward])
    return [float(seen[m][0].float().pow(2).mean().sqrt()) for m in modules]


def grad_rms(net: nn.Module, modules: list[nn.Module], forward: Forward) -> list[float]:
    """RMS of d(loss)/d(output) of each module, by autograd (retain_grad on the outputs)."""
    outs: dict[nn.Module, torch.Tensor] = {}

    def keep(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        out.retain_grad()
        outs[mod] = out

    handles = [m.register_forward_hook(keep) for m in modules]
    try:
        net.zero_grad(set_to_none=True)
        forward(net).backward()
    finally:
        for h in handles:
            h.remove()
    net.zero_grad(set_to_none=True)
    return [float(outs[m].grad.float().pow(2).mean().sqrt()) for m in modules]


def nonfinite_outputs(net: nn.Module, forward: Forward) -> list[str]:
    """Names of the modules whose output holds a NaN or Inf on this forward."""
    bad: list[str] = []
    handles = []
    for name, m in net.named_modules():
        def check(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.is_floating_point() and not torch.isfinite(out).all():
                bad.append(name)
        handles.append(m.register_forward_hook(check))
    try:
        _run(net, [forward])
    finally:
        for h in handles:
            h.remove()
    return bad


def loss_input_producers(net: nn.Module, forward: Forward, loss: str = "cross_entropy") -> list[str]:
    """The autograd function that produced the input of each ``F.<loss>`` call on this forward
    (``SoftmaxBackward0``: a softmax fed the loss)."""
    original = getattr(F, loss)
    producers: list[str] = []

    def spy(inp: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        producers.append(type(inp.grad_fn).__name__ if inp.grad_fn is not None else "leaf")
        return original(inp, *args, **kwargs)

    with mock.patch.object(F, loss, spy):
        forward(net)
    return producers


def peaked_attention_share(net: nn.Module, forward: Forward, peak: float = 0.99) -> float:
    """Share of query rows (all heads, all layers) whose largest attention weight exceeds ``peak``,
    from the q and k handed to ``F.scaled_dot_product_attention``, weights recomputed by hand."""
    original = F.scaled_dot_product_attention
    rows: list[torch.Tensor] = []

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
            is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
        kk = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3) if k.shape[-3] != q.shape[-3] else k
        logits = (q @ kk.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        allowed = torch.ones_like(logits, dtype=torch.bool)
        if is_causal:
            allowed = torch.ones(logits.shape[-2:], dtype=torch.bool).tril().expand_as(logits)
        if attn_mask is not None:
            allowed = allowed & (attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4)
            if attn_mask.dtype != torch.bool:
                logits = logits + attn_mask
        weights = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        many_keys = allowed.sum(-1) > 1  # a row that sees one key is peaked by construction
        rows.append((weights.max(-1).values > peak)[many_keys].flatten())
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    with torch.no_grad(), mock.patch.object(F, "scaled_dot_product_attention", spy):
        forward(net)
    return float(torch.cat(rows).float().mean())


def hidden_activations_feeding_layers(net: nn.Module, kinds: tuple[type[nn.Module], ...], forward: Forward) -> list[str]:
    """Activation modules of ``kinds`` whose output tensor is the input of a later Linear/Conv
    (hidden, not an output), by tensor identity on one forward."""
    produced: dict[int, str] = {}
    hidden: list[str] = []
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, kinds):
            handles.append(m.register_forward_hook(lambda mod, a, out, name=name: produced.__setitem__(id(out), name)))
        elif isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            def consume(mod: nn.Module, args: Any) -> None:
                src = produced.get(id(args[0]))
                if src is not None and src not in hidden:
                    hidden.append(src)
            handles.append(m.register_forward_pre_hook(consume))
    try:
        _run(net, [forward])
    finally:
        for h in handles:
            h.remove()
    return hidden


def expert_shares(net: nn.Module, gates: list[nn.Module], forwards: list[Forward]) -> list[torch.Tensor]:
    """Per router (a Hugging Face top-k router module returning ``(logits, weights, indices)``):
    each expert's share of the top-k assignments over all the data, counted from the indices the
    router returns (a forward hook on the gate)."""
    counts: dict[nn.Module, torch.Tensor] = {}

    def count(mod: nn.Module, args: Any, out: Any) -> None:
        experts = out[0].shape[-1]
        seen = torch.bincount(out[2].reshape(-1), minlength=experts).float()
        counts[mod] = counts.get(mod, torch.zeros(experts)) + seen

    handles = [g.register_forward_hook(count) for g in gates]
    try:
        _run(net, forwards)
    finally:
        for h in handles:
            h.remove()
    return [counts[g] / counts[g].sum() for g in gates]


def max_attention_logits(net: nn.Module, forward: Forward) -> list[float]:
    """Per ``F.scaled_dot_product_attention`` call (layer), the largest ``q.k * scale`` over the
    keys each query may see (causal, or the boolean / additive mask's allowed keys), recomputed by
    hand from the q and k handed to the function."""
    original = F.scaled_dot_product_attention
    peaks: list[float] = []

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
            is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
        kk = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3) if k.shape[-3] != q.shape[-3] else k
        logits = (q.float() @ kk.float().transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        allowed = torch.ones_like(logits, dtype=torch.bool)
        if is_causal:
            allowed = torch.ones(logits.shape[-2:], dtype=torch.bool).tril().expand_as(logits)
        if attn_mask is not None:
            allowed = allowed & (attn_mask if attn_mask.dtype == torch.bool else attn_mask > -1e4)
        peaks.append(float(logits.masked_fill(~allowed, float("-inf")).max()))
        return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)

    with torch.no_grad(), mock.patch.object(F, "scaled_dot_product_attention", spy):
        forward(net)
    return peaks


def loss_input_log_z(net: nn.Module, forwards: list[Forward], loss: str = "cross_entropy") -> float:
    """Mean log Z (logsumexp over the classes, the last dim) of the logits handed to ``F.<loss>``
    over the data."""
    original = getattr(F, loss)
    values: list[torch.Tensor] = []

    def spy(inp: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        values.append(torch.logsumexp(inp.detach().float(), dim=-1).flatten())
        return original(inp, *args, **kwargs)

    with mock.patch.object(F, loss, spy):
        _run(net, forwards)
    return float(torch.cat(values).mean())


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


def linear_layers_fed_directly(net: nn.Module, forward: Forward) -> list[tuple[str, str]]:
    """(layer, next layer) pairs of Linear/Conv layers where the first's output tensor is, by
    identity, the second's input on one forward: two linear maps with nothing between them."""
    made: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, m in net.named_modules():
        if isinstance(m, _LAYERS):
            def feed(mod: nn.Module, args: Any, name: str = name) -> None:
                src = made.get(id(args[0])) if args else None
                if src is not None and (src, name) not in pairs:
                    pairs.append((src, name))
            handles.append(m.register_forward_pre_hook(feed))
            handles.append(m.register_forward_hook(lambda mod, a, out, name=name: made.__setitem__(id(out), name)))
    try:
        _run(net, [forward])
    finally:
        for h in handles:
            h.remove()
    return pairs


def first_layer_input_rms(net: nn.Module, forward: Forward) -> tuple[str, float]:
    """The first Linear/Conv layer called on one forward, and the RMS of its input there."""
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.append((name, args[0].detach().float())) if not seen else None)
        for name, m in net.named_modules()
        if isinstance(m, _LAYERS)
    ]
    try:
        _run(net, [forward])
    finally:
        for h in handles:
            h.remove()
    name, x = seen[0]
    return name, float(x.pow(2).mean().sqrt())
