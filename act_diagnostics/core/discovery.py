"""Site discovery: naming each call position, selecting it, and creating its Site and SiteState.

A site is created the first time its call runs (:meth:`SiteDiscovery._state_for`): named after
its module (``block.act``), or after the module whose forward made a functional call
(``block:relu``, the *owner*, tracked by the module hooks here), numbered when the same module or
function is called again in one forward pass (``block.act#1``); kept or skipped by the
``include`` / ``exclude`` / ``kinds`` options; its units read along ``unit_dim`` (chosen per site
unless set). The module hooks here also report what they see to the structural facts
(:mod:`structure`) during the first steps.

A mixin of :class:`~act_diagnostics.core.monitor.ActivationMonitor`.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn as nn
from torch import Tensor

from act_diagnostics.core.config import selects
from act_diagnostics.core.errors import SettingError, UnmeasuredModules, rank_zero
from act_diagnostics.core.kinds import FUNCTIONAL_KINDS, KINDS, functional_name, functional_params, module_kind, module_params
from act_diagnostics.core.modules import in_backward
from act_diagnostics.core.monitor_state import MonitorState
from act_diagnostics.core.sites import Site, call_name, default_unit_dim
from act_diagnostics.core.state import SiteState
from act_diagnostics.core.windows import defers_on


class SiteDiscovery(MonitorState):
    """Call positions and owners in the forward pass; Site and SiteState creation."""

    def _init_discovery(self) -> None:
        self._calls: dict[str, int] = {}  # call base name -> calls so far in this forward pass
        self._owner_stack: list[str] = []  # names of the modules whose forward is running
        self._skipped: set[str] = set()  # call names left out by the options (or not activations)
        self._functional_sites = False  # some site is a functional call
        self.eval_only = set()  # sites measured only in evaluation batches so far

    @property
    def _found_functional_sites(self) -> bool:
        return self._functional_sites

    def _discovery_sizes(self) -> dict[str, int]:
        return {"sites": len(self.sites), "skipped": len(self._skipped), "call_positions": len(self._calls)}

    def _restart_call_positions(self) -> None:
        """A new forward pass (or step): call positions and owners start over."""
        self._calls.clear()
        self._owner_stack.clear()

    @property
    def _owner(self) -> str:
        """The module whose forward is running (the root module is "")."""
        return self._owner_stack[-1] if self._owner_stack else ""

    @property
    def in_module_forward(self) -> bool:
        """A module's forward is running: the tracer follows loss-building ops only outside every
        module's forward (see core/following.py)."""
        return bool(self._owner_stack)

    # ------------------------------------------------------------------ module hooks (owners, structure)
    def _module_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if not self.enabled:
            return
        name = self._names.get(id(module), "")
        self._owner_stack.append(name)
        if in_backward():  # a checkpoint's re-run: not a call of its own
            self._maybe_enter_rerun_tracer(module)
            return
        if self.learning_structure or self.detail:  # layer links (structure steps), the input's scale
            self.network.layer_input(name, module, args, self.learning_structure, self.detail)
        if not self.learning_structure:
            return
        self._note_consumer_candidate(module, args)
        self._facts.note_layer_inputs(module, name, args)

    def _module_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.enabled:
            return
        if self._owner_stack:
            self._owner_stack.pop()
        if in_backward():
            self._maybe_exit_rerun_tracer(module)
            return
        if not self.learning_structure:
            return
        try:
            self._facts.note_module_output(module, self._names.get(id(module), ""), module is self.model, args, output)
        except Exception as exc:  # noqa: BLE001 - diagnostics must never break training
            self._fail(exc)

    # ------------------------------------------------------------------ naming
    def _next_call(self, base: str) -> str:
        index = self._calls.get(base, 0)
        self._calls[base] = index + 1
        return call_name(base, index)

    def _call_index(self, name: str) -> int:
        """k for a site named ``<base>#k`` by :meth:`_next_call` in this forward pass, else 0."""
        base, sep, k = name.rpartition("#")
        return int(k) if sep and k.isdigit() and self._calls.get(base, 0) > int(k) else 0

    # ------------------------------------------------------------------ creation and selection
    def _state_for(self, name: str, create: Callable[[], Site | None]) -> SiteState | None:
        state = self.states.get(name)
        if state is not None or name in self._skipped:
            return state
        site = create()
        if site is None or not self._selected(site):
            self._skipped.add(name)
            return None
        cfg = self.config
        self.sites[name] = site
        self._functional_sites = self._functional_sites or site.source == "functional"
        if not self._training:
            self.eval_only.add(name)  # until a training step measures it
        elif site.source == "functional":
            self._forget_consumers()  # a functional call first made now has no learned consumer
        state = SiteState(
            KINDS[site.kind],
            site.params,
            site.unit_dim,
            site.n_units,
            torch.device("cpu"),
            cfg.sample_elements,
            cfg.saturation_eps,
            cfg.histogram_samples,
        )
        state.deferred = defers_on(state.device, self._deferred)
        self.states[name] = state
        return state

    def _selected(self, site: Site) -> bool:
        cfg = self.config
        # Tuples of patterns since MonitorConfig.__post_init__ checked them (the fields are typed
        # as what may be passed in).
        include, exclude, kinds = cast("tuple[tuple[str, ...], ...]", (cfg.include, cfg.exclude, cfg.kinds))
        if include and not any(fnmatch.fnmatchcase(site.name, p) for p in include):
            return False
        if any(fnmatch.fnmatchcase(site.name, p) for p in exclude):
            return False
        return not kinds or selects(kinds, site.kind, site.family)

    def _make_site(
        self, name: str, kind: str, source: str, owner: str, type_name: str, x: Any, y: Tensor, params: dict
    ) -> Site:
        feeding = self._facts.feeding_layer(x)
        spec = KINDS[kind]
        if self.config.unit_dim is not None:
            unit_dim = self.config.unit_dim
        elif kind == "glu":
            unit_dim = int(params.get("dim", -1))  # F.glu and nn.GLU split the last dim by default
        elif spec.per_row:
            dim = params.get("dim")
            unit_dim = (0 if y.dim() in (0, 1, 3) else 1) if dim is None else int(dim)
        else:
            unit_dim = default_unit_dim(y.dim(), feeding[1] if feeding else None)
        if y.dim():
            if not -y.dim() <= unit_dim < y.dim():
                raise SettingError(
                    f"`unit_dim`={unit_dim} is out of range for site {name!r} with output shape {tuple(y.shape)} "
                    f"(valid: {-y.dim()} to {y.dim() - 1}, or None to choose per site)"
                )
            unit_dim %= y.dim()
        if y.dim() <= 1 and not (spec.per_row or kind == "glu") and self.config.unit_dim is None:
            # A (batch,) output (e.g. a binary classifier's sigmoid) is one unit, not batch-many.
            n_units = 1
        else:
            n_units = int(y.shape[unit_dim]) if y.dim() else 1
        return Site(
            name=name,
            kind=kind,
            family=spec.family,
            source=source,
            owner=owner,
            module_type=type_name,
            index=len(self.sites),
            unit_dim=unit_dim,
            n_units=n_units,
            shape=tuple(y.shape),
            params=params,
            feeding_layer=feeding[0] if feeding else None,
            feeding_layer_type=feeding[1] if feeding else None,
            call_index=self._call_index(name),
        )

    def _new_module_site(self, name: str, module: nn.Module, y: Tensor, args: tuple) -> Site | None:
        kind = module_kind(module)
        if kind is None:
            return None
        x = args[0] if args else None
        owner = self._names.get(id(module), "")
        return self._make_site(name, kind, "module", owner, type(module).__name__, x, y, module_params(module))

    def _new_functional_site(
        self, name: str, owner: str, func: Callable[..., Any], args: tuple, kwargs: dict, x: Any, y: Tensor
    ) -> Site:
        kind, _ = FUNCTIONAL_KINDS[func]
        params = functional_params(func, args, kwargs)
        return self._make_site(name, kind, "functional", owner, functional_name(func), x, y, params)

    def _warn_nothing_found(self) -> None:
        """Discovery is over and no site was found: say so, and why it may be, rather than report
        a clean run that measured nothing."""
        if not rank_zero():
            return
        reasons = []
        recurrent = [n for n, m in self.model.named_modules() if isinstance(m, nn.RNNBase)]
        if recurrent:
            names = ", ".join(recurrent[:3])
            reasons.append(f"recurrent modules ({names}) compute their gates inside fused kernels, which no hook can see")
        if self._skipped:
            reasons.append(f"{len(self._skipped)} activation site(s) were left out by the kinds/include/exclude options")
        if not reasons:
            reasons.append("the model called no activation module or function act_diagnostics knows (docs/statistics.md lists them)")
        warnings.warn(
            f"act_diagnostics found no activation site to measure in {type(self.model).__name__} after "
            f"{self.steps} step(s): {'; '.join(reasons)}. Only whole-model checks (missing-nonlinearity, input-scale, "
            "a non-finite loss) will run.",
            UnmeasuredModules,
            stacklevel=2,
        )
