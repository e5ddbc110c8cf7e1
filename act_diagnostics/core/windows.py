"""Windows and snapshots: the measured steps between two log steps, and what a log step reads.

A *window* is every site's device totals since the last :meth:`WindowSnapshots.snapshot`, which
reduces them with one host copy (and one collective under DDP) into a
:class:`~act_diagnostics.core.snapshot.Snapshot` and starts the next window. Evaluation batches
are measured in a window of their own: :meth:`stash_window` sets the training window aside (a
device copy, no sync) and :meth:`restore_window` brings it back.

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from act_diagnostics.core.monitor_state import MonitorState
from act_diagnostics.core.pack import reduce_to_host, reset_states, share_buffer, shared_view, totals_to_stats
from act_diagnostics.core.snapshot import Snapshot
from act_diagnostics.core.transformer_stats import fill_snapshot

# A window's measured steps after its first DEFER_AFTER_STEPS defer each call's results to one
# fold per site at the snapshot (SiteState.deferred). A fold costs about what two steps of adds
# cost, so a window logged every step or two never defers.
DEFER_AFTER_STEPS = 2


def defers_on(device: torch.device, deferred: bool) -> bool:
    """Whether a site on ``device`` defers its results in a window that does (``deferred``).

    Not on the CPU: results kept from step to step are small host allocations made among the
    step's large temporaries, and they fragment the allocator's heap (docs/performance.md, tenth
    session: the heap grew to 6 times the live memory over the first window, with about 1000 more
    page faults per step). There a call adds its results at once, as a window logged every step does.
    """
    return deferred and device.type != "cpu"


@dataclass
class WindowStash:
    """A window set aside by :meth:`WindowSnapshots.stash_window`: per site, a copy of its device
    totals and its host counters and samples."""

    sites: dict[str, tuple[Tensor, list[int], Tensor | None, Tensor | None, int]]
    window_steps: int


class WindowSnapshots(MonitorState):
    """The window's totals read once per log step, or set aside for evaluation batches."""

    def _init_windows(self) -> None:
        self._stashed = False  # a training window is set aside (stash_window): this one is evaluation's

    def stash_window(self) -> WindowStash:
        """Set the current window aside and start an empty one (evaluation batches measured apart
        from training). Device totals are copied on the device: no host sync."""
        states = list(self.states.values())
        with self._no_torch_function():
            saved = {}
            for name, st in self.states.items():
                st.fold()
                saved[name] = (st.totals.clone(), list(st.counters), st.out_sample, st.grad_sample, st.unit_mismatch)
            reset_states(states)
        stash = WindowStash(saved, self.window_steps)
        self.window_steps = 0
        self._stashed = True
        return stash

    def restore_window(self, stash: WindowStash) -> None:
        """Drop the current window and bring back ``stash`` (from :meth:`stash_window`). A site first
        seen since then starts its window empty."""
        with self._no_torch_function():
            reset_states(list(self.states.values()))
            for name, (totals, counters, out_sample, grad_sample, mismatch) in stash.sites.items():
                st = self.states.get(name)
                if st is None or st.totals.shape != totals.shape:
                    continue
                st.totals.copy_(totals)
                st.counters, st.out_sample, st.grad_sample, st.unit_mismatch = counters, out_sample, grad_sample, mismatch
        self.window_steps = stash.window_steps
        self._stashed = False

    def snapshot(
        self,
        step: int | None = None,
        all_gather: Callable[[Tensor], Tensor] | None = None,
        reset: bool = True,
    ) -> Snapshot:
        """Reduce every site's window totals with one host copy; start a new window if ``reset``.

        ``all_gather`` (1-D tensor -> (world_size, N)) combines the totals of several processes
        in one collective before the copy.
        """
        names = list(self.states)
        states = [self.states[n] for n in names]
        device = states[0].device if states else torch.device("cpu")
        out_samples = {n: st.out_sample for n, st in zip(names, states) if st.out_sample is not None}
        grad_samples = {n: st.grad_sample for n, st in zip(names, states) if st.grad_sample is not None}
        sample_names, grad_names = list(out_samples), list(grad_samples)
        samples = [*out_samples.values(), *grad_samples.values()]
        # Values of no site that ride in the same host copy, by name (None: nothing this window).
        scale = self.grad_scale() if self.grad_scale is not None else None
        riders = {
            "network": self.network.device_totals(),  # whole-model facts (layer links, input scale, loss)
            # float16 AMP: the GradScaler's current scale (rules: non-finite).
            "grad_scale": scale.detach().reshape(-1)[:1] if isinstance(scale, Tensor) else None,
            "batch_spread": self.batch_facts.pending(),
        }
        present = {key: value for key, value in riders.items() if value is not None}
        rider_keys = list(present)
        n_samples = len(samples)
        samples += present.values()
        with self._no_torch_function():
            # New sites, or a device move: one buffer again. A model split across devices keeps a
            # buffer per site (moving them would only make each site move back at its next call).
            if states and shared_view(states) is None and all(st.device == device for st in states):
                share_buffer(states, device)
            extras = None if self._stashed else self.extras  # evaluation windows leave them be
            totals, host_samples = reduce_to_host(states, names, device, all_gather, samples, extras)
        host = dict(zip(rider_keys, host_samples[n_samples:]))
        del host_samples[n_samples:]
        facts = self.batch_facts.read(host.get("batch_spread"))  # batch rows and spread
        grad_scale = host["grad_scale"][0] if "grad_scale" in host else scale
        network = self.network.read(host.get("network"))
        stats = totals_to_stats(totals, dead_unit_rate=self.config.dead_unit_rate)
        sites = self.sites
        if self.eval_only and not self._stashed:  # a training window: sites only evaluation ran stay out
            stats = {n: st for n, st in stats.items() if n not in self.eval_only}
            sites = {n: site for n, site in sites.items() if n not in self.eval_only}
        snap = Snapshot(
            step=self.steps if step is None else step,
            window_steps=self.window_steps,
            stats=stats,
            sites=sites,
            out_samples=dict(zip(sample_names, host_samples[: len(sample_names)])),
            grad_samples=dict(zip(grad_names, host_samples[len(sample_names) :])),
            losses=tuple(sorted(self.losses_seen)),
            grad_scale=float(grad_scale) if grad_scale is not None else None,
            network=network,
            output_layers=tuple(sorted(self._facts.output_layers.names)), param_scales=self.param_scales, **facts,
        )
        if extras is not None:
            fill_snapshot(snap, extras.last)  # max_logit, log_z, routers
        if reset:
            with self._no_torch_function():
                reset_states(states)
                self.network.reset()
                if extras is not None:
                    extras.reset()  # sums to 0, maxima to -inf
            self.window_steps = 0
        return snap
