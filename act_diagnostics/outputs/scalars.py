"""Per-site scalars for any Lightning logger, under ``act/<site>/<stat>``.

Site names are kept readable in tags, with the two characters that some loggers reject replaced:
``:`` (a functional call) becomes ``/`` and ``#`` (a further call of the same module) becomes
``_call``. A function called directly in the root module's forward (site ``:relu``) is tagged
``act/root/relu/...``. See docs/logged-metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from act_diagnostics.core.snapshot import LOGGED_STATS, Snapshot
from act_diagnostics.core.transformer_stats import extra_scalars
from act_diagnostics.outputs.applicability import applies

TAG_PREFIX = "act"
# Lightning's loggers join a logger's ``prefix`` to each metric name with this character.
LOGGER_JOIN_CHAR = "-"


def site_tag(site: str) -> str:
    """Logger-safe tag for a site name: ``encoder.layers.0:relu#1`` -> ``encoder.layers.0/relu_call1``."""
    tag = site.replace("#", "_call").replace(":", "/")
    return "root" + tag if tag.startswith("/") else tag


def site_tags(names: Iterable[str]) -> dict[str, str]:
    """:func:`site_tag` of each site name, in the order given (forward order), made unique: two sites
    that would share a tag (F.relu in a submodule named ``root`` and F.relu in the root forward, both
    ``root/relu``) must not overwrite each other, so the later one is tagged ``root/relu_2``."""
    tags: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        tag = base = site_tag(name)
        n = 1
        while tag in used:
            n += 1
            tag = f"{base}_{n}"
        used.add(tag)
        tags[name] = tag
    return tags


def eval_tag_prefix(stage: str) -> str:
    """Where an evaluation stage's window is logged: ``act_validate``, ``act_test``, ``act_predict``."""
    return f"{TAG_PREFIX}_{stage}"


def snapshot_scalars(snapshot: Snapshot, stats: Iterable[str] = LOGGED_STATS, prefix: str = TAG_PREFIX) -> dict[str, float]:
    """Every logged scalar of one snapshot, keyed by its full tag (``<prefix>/<site>/<stat>``); a
    statistic that does not apply to the site's family is left out (outputs/applicability.py)."""
    wanted = tuple(stats)
    out: dict[str, float] = {}
    ordered = snapshot.ordered()
    tags = site_tags(site.name for site, _ in ordered)
    for site, st in ordered:
        values = st.scalars()
        for key in wanted:
            if key in values and applies(key, site.family):
                out[f"{prefix}/{tags[site.name]}/{key}"] = values[key]
    # Statistics of no site: log Z per loss call, token shares per MoE router (docs/logged-metrics.md).
    for name, values in extra_scalars(snapshot).items():
        for key, value in values.items():
            out[f"{prefix}/{site_tag(name)}/{key}"] = value
    return out


def log_to_loggers(loggers: Iterable[Any], metrics: dict[str, float], step: int) -> None:
    """Send metrics to every Lightning logger (each logger is already rank-zero only)."""
    if not metrics:
        return
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
