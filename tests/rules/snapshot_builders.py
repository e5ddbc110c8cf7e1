"""Hand-built Sites, SiteStats and Snapshots for rule tests (a plain module: a `from conftest import` breaks when another directory's conftest is loaded first)."""

from __future__ import annotations

from typing import Any

from act_diagnostics.core import Site, SiteStats, Snapshot


def make_site(name: str, kind: str, family: str | None = None, index: int = 0, n_units: int = 8, **kw: Any) -> Site:
    fam = family or {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax", "gelu": "smooth"}.get(kind, "other")
    consumers = set(kw.pop("consumers", {"next"}))
    # Consumers that are not layer names: a gate's "mul", "output", "activation", "loss:<fn>".
    layers = [c for c in consumers if c not in ("mul", "output", "activation") and not c.startswith("loss:")]
    layer_types = set(kw.pop("consumer_layer_types", {"Linear"} if layers else set()))
    return Site(
        name=name, kind=kind, family=fam, source="module", owner=kw.pop("owner", name), module_type=kind, index=index,
        unit_dim=kw.pop("unit_dim", 1), n_units=n_units, shape=kw.pop("shape", (4, n_units)),
        consumers=consumers, consumer_layer_types=layer_types, **kw,
    )


def make_snapshot(pairs: list[tuple[Site, SiteStats]], step: int = 100) -> Snapshot:
    return Snapshot(step=step, window_steps=10, stats={s.name: st for s, st in pairs}, sites={s.name: s for s, _ in pairs})


def relu_stats(rates: list[float], samples_per_unit: int = 2000, **kw: Any) -> SiteStats:
    units = len(rates)
    return SiteStats(
        calls=10, elements=units * samples_per_unit, sampled=units * samples_per_unit, units=units,
        firing_rate=sum(rates) / units, dead_fraction=sum(r < 0.01 for r in rates) / units,
        unit_firing=list(rates), mean=0.5, std=1.0, rms=1.0, max_abs=3.0, **kw,
    )


def chain(kind: str, grads: list[float | None], rms: list[float] | None = None, input_std: list[float] | None = None) -> Snapshot:
    """A stack of hidden sites (last one an output) with the given gradient / output / input scales."""
    pairs = []
    for i, g in enumerate(grads):
        last = i == len(grads) - 1
        s = make_site(f"act{i}", kind, index=i, consumers={"output"} if last else {"next"})
        st = relu_stats([0.5] * 8, grad_rms=g)
        if rms is not None:
            st.rms = rms[i]
            st.max_abs = rms[i] * 3
        if input_std is not None:
            st.input_std = input_std[i]
        pairs.append((s, st))
    return make_snapshot(pairs)
