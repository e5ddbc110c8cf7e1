"""The custom-scalars dashboard stays readable on a model with many sites: no chart is a wall of lines."""

from __future__ import annotations

import re

from act_diagnostics.outputs.scalars import site_tags
from act_diagnostics.outputs.tensorboard import DASHBOARD_CHARTS, MAX_LINES_PER_CHART, dashboard_layout, site_groups


def _transformer_sites(layers: int = 12) -> list[str]:
    names = []
    for i in range(layers):
        names += [f"encoder.layers.{i}.self_attn:attention", f"encoder.layers.{i}:gelu"]
    return [*names, "head.act"]


def test_many_sites_are_grouped_by_module_path_with_at_most_eight_lines_per_chart() -> None:
    tags = list(site_tags(_transformer_sites()).values())
    layout = dashboard_layout("p-", tags)
    assert len(layout) == len(DASHBOARD_CHARTS)  # one category per statistic
    for (title, stat), (category, charts) in zip(DASHBOARD_CHARTS.items(), layout.items()):
        assert category.endswith(title)
        lines: dict[str, int] = {}
        for chart_title, (kind, patterns) in charts.items():
            assert kind == "Multiline" and chart_title.startswith(f"{stat}: ")
            matched = [t for t in tags if any(re.match(p, f"p-act/{t}/{stat}") for p in patterns)]
            assert 0 < len(matched) <= MAX_LINES_PER_CHART, (chart_title, matched)
            for t in matched:
                lines[t] = lines.get(t, 0) + 1
            assert not any(re.match(p, f"p-act_validate/{matched[0]}/{stat}") for p in patterns)  # training only
        assert lines == {t: 1 for t in tags}  # every site on exactly one chart
    first = next(iter(layout.values()))
    assert "firing_rate: encoder.layers.0 ... encoder.layers.3" in first  # a block's sites stay together


def test_a_small_model_keeps_one_chart_per_statistic() -> None:
    layout = dashboard_layout("", ["net.1", "net.3", "net.5"])
    (charts,) = layout.values()
    assert list(charts) == list(DASHBOARD_CHARTS)
    assert dashboard_layout() == layout  # without the site names: the same


def test_groups_split_deeper_only_where_needed() -> None:
    tags = [f"blocks.{i}.act" for i in range(20)]  # one level: blocks.0 ... blocks.19
    charts = site_groups(tags)
    assert [sum(len(m) for _, m in chart) for chart in charts] == [8, 8, 4]
    assert [prefix for prefix, _ in charts[0]] == [f"blocks.{i}" for i in range(8)]
    # blocks.1 does not take blocks.10's lines.
    patterns = dashboard_layout("", tags)
    chart = next(iter(patterns.values()))["firing_rate: blocks.0 ... blocks.7"][1][0]
    assert re.match(chart, "act/blocks.1.act/firing_rate") and not re.match(chart, "act/blocks.10.act/firing_rate")


def test_transformer_statistics_are_logged_and_charted() -> None:
    import re

    from act_diagnostics.core.logits import LogZStats
    from act_diagnostics.core.snapshot import Snapshot
    from act_diagnostics.outputs.scalars import snapshot_scalars
    from act_diagnostics.outputs.tensorboard import TRANSFORMER_CHARTS

    snap = Snapshot(step=3, window_steps=1, stats={}, sites={}, log_z={"cross_entropy": LogZStats(rows=8, mean=21.5, max=30.0, min=12.0)})
    scalars = snapshot_scalars(snap)
    assert scalars["act/loss/cross_entropy/log_z_mean"] == 21.5 and scalars["act/loss/cross_entropy/log_z_max"] == 30.0
    layout = dashboard_layout("", ["net.1"], transformer=True)
    charts = layout["act_diagnostics: transformer"]
    assert list(charts) == list(TRANSFORMER_CHARTS)
    log_z_chart = charts["log Z of the logits reaching the loss (mean)"][1][0]
    assert re.match(log_z_chart, "act/loss/cross_entropy/log_z_mean")
    assert re.match(charts["attention: largest pre-softmax logit"][1][0], "act/blocks.0.attn/attention/max_logit")
    assert "act_diagnostics: transformer" not in dashboard_layout("", ["net.1"])  # a CNN gets no empty charts
