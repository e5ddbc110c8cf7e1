"""Packing and the cross-process combination: two simulated ranks equal one process on all the data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from act_diagnostics.core.kinds import KINDS
from act_diagnostics.core.pack import (
    OP_MAX,
    OP_SUM,
    combine_gathered,
    make_layout,
    pack_states,
    reduce_to_host,
    reset_states,
    share_buffer,
    shared_view,
    totals_to_stats,
)
from act_diagnostics.core.state import COUNTERS, N_SUMS, SiteState


def _states(detail: bool, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> list[SiteState]:
    relu = SiteState(KINDS["relu"], {}, -1, 6, torch.device("cpu"), None, 0.01)
    sig = SiteState(KINDS["sigmoid"], {}, -1, 6, torch.device("cpu"), None, 0.01)
    soft = SiteState(KINDS["softmax"], {"dim": -1}, 1, 6, torch.device("cpu"), None, 0.01)
    for x, g in chunks:
        relu.observe(x, F.relu(x), detail)
        relu.observe_grad(g, detail)
        sig.observe(x, torch.sigmoid(x * 5), detail)
        soft.observe(x, F.softmax(x * 4, dim=-1), detail)
        relu.observe_param_grad_sq(g.pow(2).sum())
    return [relu, sig, soft]


@pytest.mark.parametrize("detail", [False, True])
def test_two_ranks_combine_to_the_statistics_of_the_concatenated_data(detail: bool) -> None:
    names = ["relu", "sig", "soft"]
    xs = [torch.randn(5, 6) * 3 for _ in range(4)]
    gs = [torch.randn(5, 6) for _ in range(4)]
    xs[3][0, 0] = 50.0  # the global max lives on rank 1 only
    xs[0][1, 1] = -60.0  # the global min on rank 0 only
    rank0 = _states(detail, list(zip(xs[:2], gs[:2])))
    rank1 = _states(detail, list(zip(xs[2:], gs[2:])))
    single = _states(detail, list(zip(xs, gs)))

    layout = make_layout(names, rank0)
    gathered = torch.stack([pack_states(rank0, torch.device("cpu")), pack_states(rank1, torch.device("cpu"))])
    combined = combine_gathered(gathered, layout.ops)

    def gather(packed: torch.Tensor) -> torch.Tensor:
        assert packed.dim() == 1
        return gathered

    totals, _ = reduce_to_host(rank0, names, torch.device("cpu"), all_gather=gather)
    expected, _ = reduce_to_host(single, names, torch.device("cpu"))
    got, want = totals_to_stats(totals), totals_to_stats(expected)
    for name in names:
        g, w = got[name].to_dict(with_units=True), want[name].to_dict(with_units=True)
        assert g.keys() == w.keys()
        for key in g:
            if isinstance(w[key], float):
                assert g[key] == pytest.approx(w[key], rel=1e-9, abs=1e-12), (name, key)
            elif isinstance(w[key], list):
                assert g[key] == pytest.approx(w[key]), (name, key)
            else:
                assert g[key] == w[key], (name, key)
    assert got["relu"].calls == 4 and got["relu"].max_abs == pytest.approx(50.0)
    assert torch.equal(combined, pack_states(single, torch.device("cpu")))


def test_layout_ops_per_column() -> None:
    st = SiteState(KINDS["sigmoid"], {}, -1, 3, torch.device("cpu"), None, 0.01)
    st2 = SiteState(KINDS["relu"], {}, -1, 4, torch.device("cpu"), None, 0.01)
    layout = make_layout(["a", "b"], [st, st2])
    ops = layout.ops.tolist()
    counters = 2 * len(COUNTERS)
    assert layout.n_counters == counters and all(op == OP_SUM for op in ops[:counters])
    first = ops[counters : counters + layout.spans[0].size]
    assert first[N_SUMS] == OP_MAX  # max |value|
    assert all(op == OP_SUM for i, op in enumerate(first) if i != N_SUMS)
    assert layout.spans[0].size == N_SUMS + 1 + 2 * 3  # active and saturated per unit
    assert layout.spans[1].size == N_SUMS + 1 + 4  # relu: no saturation counts
    assert layout.size == counters + layout.spans[0].size + layout.spans[1].size
    assert pack_states([st, st2], torch.device("cpu")).numel() == layout.size


def test_combine_gathered_columns() -> None:
    gathered = torch.tensor([[1.0, 5.0], [2.0, 4.0], [3.0, 6.0]], dtype=torch.float64)
    ops = torch.tensor([OP_SUM, OP_MAX], dtype=torch.int8)
    assert combine_gathered(gathered, ops).tolist() == [6.0, 6.0]


def _observed(n: int) -> list[SiteState]:
    states = [SiteState(KINDS["tanh" if i % 2 else "relu"], {}, -1, 3 + i, torch.device("cpu"), None, 0.01) for i in range(n)]
    for i, st in enumerate(states):
        st.observe(None, torch.tanh(torch.randn(4, 3 + i)) * (i + 1), False)
    return states


def test_shared_buffer_keeps_values_and_is_read_as_one_view() -> None:
    states = _observed(3)
    names = ["a", "b", "c"]
    before, _ = reduce_to_host(states, names, torch.device("cpu"))
    assert shared_view(states) is None  # three separate buffers
    share_buffer(states, torch.device("cpu"))
    view = shared_view(states)
    assert view is not None and view.numel() == sum(st.totals_size for st in states)
    after, _ = reduce_to_host(states, names, torch.device("cpu"))
    assert totals_to_stats(after) == totals_to_stats(before)
    # A hook's update lands in the shared buffer.
    states[1].observe(None, torch.full((2, 4), 0.5), False)
    assert float(view[states[0].totals_size + N_SUMS]) == pytest.approx(max(float(states[1].max_abs), 0.5))
    # A state that moves out (e.g. a device change) breaks the view; the values stay right.
    states[2].bind(states[2].totals.clone())
    assert shared_view(states) is None
    assert totals_to_stats(reduce_to_host(states, names, torch.device("cpu"))[0])["c"] == totals_to_stats(after)["c"]


@pytest.mark.parametrize("shared", [False, True])
def test_reset_states_starts_a_new_window(shared: bool) -> None:
    states = _observed(2)
    if shared:
        share_buffer(states, torch.device("cpu"))
    reset_states(states)
    assert all(st.counters == [0] * len(COUNTERS) and not st.totals.any() for st in states)
    stats = totals_to_stats(reduce_to_host(states, ["a", "b"], torch.device("cpu"))[0])
    assert stats["a"].calls == 0 and stats["a"].mean is None


def test_host_copy_is_not_the_buffer_the_next_window_zeroes() -> None:
    states = _observed(1)
    share_buffer(states, torch.device("cpu"))
    states[0].observe(None, torch.ones(2, 3), False)
    totals, _ = reduce_to_host(states, ["a"], torch.device("cpu"))
    active = totals["a"]["unit_active"].copy()
    reset_states(states)
    assert (totals["a"]["unit_active"] == active).all() and active.sum() > 0


def test_rank_without_data_does_not_disturb_max_abs() -> None:
    busy = SiteState(KINDS["relu"], {}, -1, 2, torch.device("cpu"), None, 0.01)
    idle = SiteState(KINDS["relu"], {}, -1, 2, torch.device("cpu"), None, 0.01)
    busy.observe(None, torch.tensor([[3.0, 0.0]]), False)
    layout = make_layout(["s"], [busy])
    gathered = torch.stack([pack_states([idle], torch.device("cpu")), pack_states([busy], torch.device("cpu"))])
    totals, _ = reduce_to_host([idle], ["s"], torch.device("cpu"), all_gather=lambda t: gathered)
    s = totals_to_stats(totals)["s"]
    assert s.max_abs == 3.0 and s.mean == 1.5 and s.calls == 1
    assert combine_gathered(gathered, layout.ops).numel() == layout.size


def test_no_sites_packs_to_nothing() -> None:
    totals, samples = reduce_to_host([], [], torch.device("cpu"))
    assert totals == {} and samples == []
