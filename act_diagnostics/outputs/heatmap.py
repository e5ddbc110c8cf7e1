"""Layers x steps heatmaps: the "colorful dimension" picture of a run, for TensorBoard's Images tab.

In the spirit of fastai's colorful-dimension plot, but of act_diagnostics' own statistics: one row
per activation site (forward order, input side on top), one column per log window (oldest on the
left), the cell colour the window's **dead fraction** or **saturation** of that site on a fixed
0..1 scale (dark: 0, bright yellow: 1; grey where the statistic does not apply to the site). A layer
that dies shows as a row turning bright; a saturating stack shows as a bright band.

Built with numpy only (no matplotlib at run time) as a ``CHW`` ``uint8`` image. Memory is bounded:
:class:`HeatmapHistory` keeps at most ``max_columns`` columns and, when full, merges neighbouring
columns pairwise (mean), so a long run keeps its whole time axis at a coarser resolution.

Rows are labelled on the left with the site's index (a 3x5 pixel digit font); the index-to-name
legend is written next to the images as text (:data:`LEGEND_TEXT_TAG`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The statistics drawn, each a share in [0, 1] (docs/statistics.md), and their image tags.
HEATMAP_STATS = ("dead_fraction", "saturation")
IMAGE_TAG = "act_diagnostics/heatmap/{stat}"
LEGEND_TEXT_TAG = "act_diagnostics/heatmap_rows"

# Bounded history: 128 columns keep a readable picture; older windows are merged pairwise.
DEFAULT_MAX_COLUMNS = 128
# Every image holds the whole history, so one every few windows loses nothing; the last one is
# written at the end of fit. Drawing and PNG-encoding them is the dearest part of a log step's
# TensorBoard output (about 7 ms under cProfile on the benchmark MLP; docs/performance.md).
IMAGE_EVERY_WINDOWS = 10
# Pixel geometry: a row is tall enough for the 5-pixel digits with a margin.
CELL_HEIGHT = 8
TARGET_WIDTH = 384  # pixels for the cell area; each column gets TARGET_WIDTH // columns, clamped
MIN_CELL_WIDTH, MAX_CELL_WIDTH = 2, 24
COLORBAR_HEIGHT = 6
NOT_APPLICABLE_RGB = (96, 96, 96)
BACKGROUND_RGB = (255, 255, 255)
INK_RGB = (0, 0, 0)

# Anchor colours of matplotlib's "viridis" at 0, 0.25, 0.5, 0.75, 1 (linear interpolation between).
_VIRIDIS_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)

# 3x5 digits, one string of 15 pixels per digit, row by row ("#" is ink).
_DIGITS = {
    "0": "####.##.##.####",
    "1": ".#.##..#..#.###",
    "2": "###..#####..###",
    "3": "###..####..####",
    "4": "#.##.####..#..#",
    "5": "####..###..####",
    "6": "####..####.####",
    "7": "###..#..#..#..#",
    "8": "####.#####.####",
    "9": "####.####..####",
}
_GLYPHS = {d: np.array([c == "#" for c in s], dtype=bool).reshape(5, 3) for d, s in _DIGITS.items()}


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (clipped; NaN is "not applicable") to RGB uint8, shape ``values.shape + (3,)``."""
    v = np.asarray(values, dtype=np.float64)
    nan = ~np.isfinite(v)
    pos = np.clip(np.where(nan, 0.0, v), 0.0, 1.0) * (len(_VIRIDIS_ANCHORS) - 1)
    lo = np.minimum(np.floor(pos).astype(int), len(_VIRIDIS_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS_ANCHORS[lo] * (1.0 - frac) + _VIRIDIS_ANCHORS[lo + 1] * frac
    rgb[nan] = NOT_APPLICABLE_RGB
    return np.round(rgb).astype(np.uint8)


def _draw_number(canvas: np.ndarray, number: int, top: int, right: int) -> None:
    """Draw ``number`` right-aligned so its last pixel column is ``right - 1`` (HWC canvas)."""
    x = right
    for ch in reversed(str(number)):
        x -= 4  # 3 pixels and a 1-pixel gap
        if x < 0:
            return
        glyph = _GLYPHS[ch]
        region = canvas[top : top + 5, x : x + 3]
        region[glyph[: region.shape[0], : region.shape[1]]] = INK_RGB


def render_heatmap(matrix: np.ndarray, labels: bool = True, colorbar: bool = True) -> np.ndarray:
    """Render a ``rows x columns`` matrix of shares (NaN: not applicable) as a CHW uint8 RGB image.

    Each cell is :data:`CELL_HEIGHT` pixels tall and ``TARGET_WIDTH // columns`` wide (clamped);
    ``labels`` adds the row indices on the left, ``colorbar`` a 0..1 colour scale below.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"`matrix` must be 2-D (rows x columns), got shape {m.shape}")
    rows, cols = max(m.shape[0], 1), max(m.shape[1], 1)
    if m.size == 0:
        m = np.full((rows, cols), np.nan)
    cell_w = int(min(MAX_CELL_WIDTH, max(MIN_CELL_WIDTH, TARGET_WIDTH // cols)))
    cells = colormap(m)  # rows x cols x 3
    cells = np.repeat(np.repeat(cells, CELL_HEIGHT, axis=0), cell_w, axis=1)
    margin = (4 * len(str(rows - 1)) + 2) if labels else 0
    width = margin + cells.shape[1]
    height = cells.shape[0] + ((COLORBAR_HEIGHT + 8) if colorbar else 0)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND_RGB
    canvas[: cells.shape[0], margin:] = cells
    if labels:
        for r in range(rows):
            _draw_number(canvas, r, top=r * CELL_HEIGHT + (CELL_HEIGHT - 5) // 2, right=margin - 1)
    if colorbar:
        top = cells.shape[0] + 2
        bar = colormap(np.linspace(0.0, 1.0, cells.shape[1]))[None, :, :]
        canvas[top : top + COLORBAR_HEIGHT, margin:] = np.repeat(bar, COLORBAR_HEIGHT, axis=0)
        if margin:
            _draw_number(canvas, 0, top=top, right=margin - 1)
        if width - margin >= 8:  # "1" at the bright end, inside the bar's right edge
            glyph_top = top + (COLORBAR_HEIGHT - 5) // 2
            region = canvas[glyph_top : glyph_top + 5, width - 4 : width - 1]
            region[_GLYPHS["1"]] = BACKGROUND_RGB
    return np.ascontiguousarray(canvas.transpose(2, 0, 1))


@dataclass
class HeatmapHistory:
    """Bounded layers x windows history of one statistic (a share in [0, 1]).

    ``rows`` are site names in forward order; each column holds the values of one log window (or,
    after merging, the mean of several) and the span of steps it covers.
    """

    stat: str
    max_columns: int = DEFAULT_MAX_COLUMNS
    rows: list[str] = field(default_factory=list)
    columns: list[dict[str, float]] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    _weights: list[int] = field(default_factory=list, repr=False)  # windows merged into each column
    _bucket: int = field(default=1, repr=False)  # windows per column (doubles at each merge)

    def __post_init__(self) -> None:
        if not isinstance(self.max_columns, int) or self.max_columns < 2:
            raise ValueError(f"`max_columns` must be an int >= 2, got {self.max_columns!r}")

    def add(self, step: int, values: Mapping[str, float | None], order: Iterable[str] | None = None) -> None:
        """Append one window: ``values`` maps site name to the statistic (None: not applicable)."""
        for name in order if order is not None else values:
            if name not in self.rows:
                self.rows.append(name)
        column = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if self._weights and self._weights[-1] < self._bucket:  # the last column is not full yet
            self.columns[-1] = _mean_columns(self.columns[-1], self._weights[-1], column, 1)
            self.spans[-1] = (self.spans[-1][0], int(step))
            self._weights[-1] += 1
            return
        self.columns.append(column)
        self.spans.append((int(step), int(step)))
        self._weights.append(1)
        if len(self.columns) > self.max_columns:
            self._merge_pairs()

    def _merge_pairs(self) -> None:
        """Halve the columns: every column now covers twice as many windows."""
        cols, spans, weights = [], [], []
        for i in range(0, len(self.columns), 2):
            if i + 1 == len(self.columns):
                cols.append(self.columns[i])
                spans.append(self.spans[i])
                weights.append(self._weights[i])
                continue
            cols.append(_mean_columns(self.columns[i], self._weights[i], self.columns[i + 1], self._weights[i + 1]))
            spans.append((self.spans[i][0], self.spans[i + 1][1]))
            weights.append(self._weights[i] + self._weights[i + 1])
        self.columns, self.spans, self._weights = cols, spans, weights
        self._bucket *= 2

    def matrix(self) -> np.ndarray:
        """``len(rows) x len(columns)`` float array, NaN where nothing applied."""
        m = np.full((len(self.rows), len(self.columns)), np.nan)
        for j, column in enumerate(self.columns):
            for i, name in enumerate(self.rows):
                if name in column:
                    m[i, j] = column[name]
        return m

    def image(self) -> np.ndarray:
        """The CHW uint8 picture of the history (see :func:`render_heatmap`)."""
        return render_heatmap(self.matrix())


def _mean_columns(a: dict[str, float], wa: int, b: dict[str, float], wb: int) -> dict[str, float]:
    """Weighted mean of two columns; a site missing from one keeps the other's value."""
    merged = {}
    for key in a.keys() | b.keys():
        if key in a and key in b:
            merged[key] = (a[key] * wa + b[key] * wb) / (wa + wb)
        else:
            merged[key] = a[key] if key in a else b[key]
    return merged


def legend_markdown(rows: list[str], spans: list[tuple[int, int]]) -> str:
    """Markdown legend of the heatmap images: row index -> site, and the steps the columns cover."""
    lines = [
        "Heatmap rows (top to bottom, forward order) and the steps covered by the columns "
        f"({spans[0][0]} to {spans[-1][1]}, {len(spans)} columns, oldest on the left)." if spans else "Heatmap rows:",
        "",
        "| row | site |",
        "|---:|---|",
    ]
    lines += [f"| {i} | `{name}` |" for i, name in enumerate(rows)]
    return "\n".join(lines)


def _image_support() -> bool:
    """SummaryWriter.add_image encodes PNG with Pillow; without it the heatmaps are skipped."""
    import importlib.util

    return importlib.util.find_spec("PIL") is not None


class HeatmapWriter:
    """Keeps one :class:`HeatmapHistory` per statistic and renders them for TensorBoard.

    ``summaries(snapshot, step)`` is called on every log step: it appends the window and returns
    TensorBoard summary values to write with the step's other values: one image per statistic (tags
    :data:`IMAGE_TAG`) on the first window and every ``image_every`` windows after it, each with the
    row legend, which also names the steps those images' columns cover. ``final()`` returns the
    images of the whole history if windows were added since the last ones (the end of fit). Any failure turns the heatmaps off
    with one warning; it never stops the other outputs.
    """

    def __init__(
        self, stats: Iterable[str] = HEATMAP_STATS, max_columns: int = DEFAULT_MAX_COLUMNS, image_every: int = IMAGE_EVERY_WINDOWS
    ) -> None:
        if not isinstance(image_every, int) or isinstance(image_every, bool) or image_every < 1:
            raise ValueError(f"`image_every` must be a positive int, got {image_every!r}")
        self.histories = {stat: HeatmapHistory(stat, max_columns=max_columns) for stat in stats}
        self.enabled = _image_support()
        self.image_every = image_every
        self._windows = 0
        self._drawn = 0  # windows shown in the last images written

    def add(self, snapshot: Any, step: int) -> None:
        order = [site.name for site, _ in snapshot.ordered()]
        for stat, history in self.histories.items():
            history.add(step, {site.name: getattr(st, stat, None) for site, st in snapshot.ordered()}, order=order)
        self._windows += 1

    def summaries(self, snapshot: Any, step: int) -> list[Any]:
        if not self.enabled:
            return []
        return self._guarded(lambda: self._add_and_draw(snapshot, step))

    def final(self) -> list[Any]:
        if not self.enabled or self._drawn == self._windows:
            return []
        return self._guarded(self._draw)

    def _add_and_draw(self, snapshot: Any, step: int) -> list[Any]:
        self.add(snapshot, step)
        return self._draw() if (self._windows - 1) % self.image_every == 0 else []

    def _draw(self) -> list[Any]:
        from torch.utils.tensorboard import summary

        values = [
            summary.image(IMAGE_TAG.format(stat=stat), history.image(), dataformats="CHW").value[0]
            for stat, history in self.histories.items()
        ]
        self._drawn = self._windows
        first = next(iter(self.histories.values()), None)  # every history has the same rows and spans
        # With every image: the legend names the steps the columns cover, which grow with each image.
        legend = legend_markdown(first.rows, first.spans) if first is not None else legend_markdown([], [])
        values.extend(summary.text(LEGEND_TEXT_TAG, legend).value)
        return values

    def _guarded(self, draw: Any) -> list[Any]:
        try:
            return draw()
        except Exception as exc:  # noqa: BLE001 - a picture must never cost the run its diagnostics
            self.enabled = False
            warnings.warn(f"act_diagnostics: heatmap images turned off after an error ({type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=3)
            return []
