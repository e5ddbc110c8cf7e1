"""Layers x steps heatmaps: the "colorful dimension" picture of a run, for TensorBoard's Images tab.

In the spirit of fastai's colorful-dimension plot, but of act_diagnostics' own statistics: one row
per activation site (forward order, input side on top), one column per log window (oldest on the
left), the cell colour the window's **dead fraction** or **saturation** of that site on a fixed
0..1 scale (dark: 0, bright yellow: 1; grey where the statistic does not apply to the site, see
outputs/applicability.py). A layer that dies shows as a row turning bright; a saturating stack
shows as a bright band.

Each picture reads on its own: a title naming the statistic, the site names on the left, a step
axis below and a colour bar with ticks on the right, drawn with Pillow's ImageDraw and its default
font (no matplotlib at run time). Memory is bounded: :class:`HeatmapHistory` keeps at most
``max_columns`` columns and, when full, merges neighbouring columns pairwise (mean), so a long run
keeps its whole time axis at a coarser resolution.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from act_diagnostics.outputs.applicability import applicable

# The statistics drawn, each a share in [0, 1] (docs/statistics.md), and their image tags.
HEATMAP_STATS = ("dead_fraction", "saturation")
IMAGE_TAG = "act_diagnostics/heatmap/{stat}"
LEGEND_TEXT_TAG = "act_diagnostics/heatmap_rows"
# What each picture shows, for its title and TensorBoard's description of the image.
STAT_TITLES = {
    "dead_fraction": "dead fraction (share of units that never fire)",
    "saturation": "saturation (share of outputs where the derivative < ~0.01)",
}

# Bounded history: 128 columns keep a readable picture; older windows are merged pairwise.
DEFAULT_MAX_COLUMNS = 128
# Every image holds the whole history, so one every few windows loses nothing; the last one is
# written at the end of fit. Drawing and PNG-encoding them is the dearest part of a log step's
# TensorBoard output (docs/performance.md).
IMAGE_EVERY_WINDOWS = 10
# Pixel geometry. The cell area is at least PLOT_WIDTH x MIN_PLOT_HEIGHT, so a 3-site model still
# gives a picture of about 560x200 pixels; a row is never lower than one line of text.
FONT_SIZE = 15
ROW_HEIGHT = 19
MIN_PLOT_HEIGHT = 120
PLOT_WIDTH = 400
MIN_CELL_WIDTH = 2
MAX_LABEL_CHARS = 32  # longer site names keep their end, the most specific part ("...layers.11.mlp.act")
PAD = 6
TITLE_HEIGHT = 24
AXIS_HEIGHT = 40  # tick marks, step numbers and the axis name
COLORBAR_WIDTH = 12
COLORBAR_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
STEP_TICKS = 5
NOT_APPLICABLE_RGB = (128, 128, 128)
BACKGROUND_RGB = (255, 255, 255)
INK_RGB = (0, 0, 0)

# Anchor colours of matplotlib's "viridis" at 0, 0.25, 0.5, 0.75, 1 (linear interpolation between).
_VIRIDIS_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


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


@lru_cache(maxsize=4)
def font(size: int = FONT_SIZE) -> Any:
    """Pillow's default font at ``size`` pixels (a scalable font since Pillow 10.1); older Pillow
    gets its fixed bitmap font, smaller but legible."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _text_box(draw: Any, text: str, fnt: Any) -> tuple[int, int, int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return int(left), int(top), int(right), int(bottom)


def _text_width(draw: Any, text: str, fnt: Any) -> int:
    left, _, right, _ = _text_box(draw, text, fnt)
    return right - left


def draw_text(draw: Any, xy: tuple[float, float], text: str, fnt: Any, anchor: str = "la", fill: tuple[int, int, int] = INK_RGB) -> None:
    """``draw.text`` placed by a two-letter anchor (horizontal l/m/r, vertical a/m/b: top, middle,
    bottom of the ink), computed here rather than by Pillow: its ``anchor`` argument needs a
    TrueType font, which the bitmap default font of Pillow < 10.1 is not."""
    left, top, right, bottom = _text_box(draw, text, fnt)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[anchor[0]]
    y = xy[1] - {"a": top, "m": (top + bottom) / 2, "b": bottom}[anchor[1]]
    draw.text((x, y), text, fill=fill, font=fnt)


def short_label(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``name`` cut to ``limit`` characters, keeping its end: ``...ers.11.mlp.act``."""
    return name if len(name) <= limit else "..." + name[-(limit - 3) :]


def _step_ticks(columns: int, spans: Sequence[tuple[int, int]] | None) -> list[tuple[float, str]]:
    """(position in columns, label) of up to STEP_TICKS ticks: the first step each column covers,
    the last tick the last step of the run."""
    if columns <= 0:
        return []
    picks = sorted({round(i * (columns - 1) / max(STEP_TICKS - 1, 1)) for i in range(STEP_TICKS)}) if columns > 1 else [0]
    ticks = []
    for j in picks:
        if spans:
            last = j == columns - 1 and columns > 1
            ticks.append((j + (1.0 if last else 0.0), str(spans[j][1] if last else spans[j][0])))
        else:
            ticks.append((j + 0.5, str(j)))
    return ticks


def render_heatmap(
    matrix: np.ndarray,
    labels: bool | Sequence[str] = True,
    colorbar: bool = True,
    title: str | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Render a ``rows x columns`` matrix of shares (NaN: not applicable) as a CHW uint8 RGB image.

    ``labels``: the row names (site names), True for row numbers, False for none; ``title``: drawn
    above; ``spans``: the (first, last) step of each column, for the step axis (column numbers
    without them); ``colorbar``: a 0..1 colour scale with ticks on the right. Without labels,
    title and colour bar the image is the cell area alone.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"`matrix` must be 2-D (rows x columns), got shape {m.shape}")
    if spans is not None and len(spans) != m.shape[1]:
        raise ValueError(f"`spans` must give one (first, last) step per column: {m.shape[1]} columns, got {len(spans)}")
    rows, cols = max(m.shape[0], 1), max(m.shape[1], 1)
    if m.size == 0:
        m = np.full((rows, cols), np.nan)
    bare = labels is False and not colorbar and title is None
    cell_w = max(MIN_CELL_WIDTH, -(-PLOT_WIDTH // cols))  # the cell area is at least PLOT_WIDTH wide
    row_h = ROW_HEIGHT if bare else max(ROW_HEIGHT, MIN_PLOT_HEIGHT // rows)
    cells = np.repeat(np.repeat(colormap(m), row_h, axis=0), cell_w, axis=1)
    if bare:
        return np.ascontiguousarray(cells.transpose(2, 0, 1))

    from PIL import Image, ImageDraw

    fnt = font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [short_label(str(n)) for n in labels] if not isinstance(labels, bool) else (
        [str(i) for i in range(rows)] if labels else []
    )
    names += [""] * (rows - len(names)) if names else []
    left = (max((_text_width(probe, n, fnt) for n in names), default=0) + 2 * PAD) if names else PAD
    top = TITLE_HEIGHT + PAD if title else PAD
    plot_w, plot_h = cells.shape[1], cells.shape[0]
    tick_labels = [f"{t:g}" for t in COLORBAR_TICKS]
    right = (3 * PAD + COLORBAR_WIDTH + max(_text_width(probe, t, fnt) for t in tick_labels)) if colorbar else PAD
    width = left + plot_w + right
    if title:
        width = max(width, _text_width(probe, title, fnt) + 2 * PAD)
    height = top + plot_h + AXIS_HEIGHT
    img = Image.new("RGB", (width, height), BACKGROUND_RGB)
    draw = ImageDraw.Draw(img)
    img.paste(Image.fromarray(cells), (left, top))
    draw.rectangle([left - 1, top - 1, left + plot_w, top + plot_h], outline=INK_RGB)
    if title:
        draw_text(draw, (PAD, PAD), title, fnt)
    for i, name in enumerate(names):  # right-aligned beside their row
        centre = top + i * row_h + row_h // 2
        draw_text(draw, (left - PAD, centre), name, fnt, anchor="rm")
    # Step axis: ticks below the cell area, the steps they mark, and the axis name.
    axis_y = top + plot_h
    for pos, label in _step_ticks(m.shape[1], spans):
        x = left + min(int(round(pos * cell_w)), plot_w - 1)
        draw.line([x, axis_y, x, axis_y + 4], fill=INK_RGB)
        draw_text(draw, (x, axis_y + 7), label, fnt, anchor="ma")
    draw_text(draw, (left + plot_w // 2, axis_y + 7 + FONT_SIZE + 3), "training step" if spans else "column", fnt, anchor="ma")
    if colorbar:
        x0 = left + plot_w + 2 * PAD
        gradient = colormap(np.linspace(1.0, 0.0, plot_h))[:, None, :]  # bright at the top
        img.paste(Image.fromarray(np.ascontiguousarray(np.repeat(gradient, COLORBAR_WIDTH, axis=1))), (x0, top))
        draw.rectangle([x0 - 1, top - 1, x0 + COLORBAR_WIDTH, top + plot_h], outline=INK_RGB)
        for value, label in zip(COLORBAR_TICKS, tick_labels):
            y = top + int(round((1.0 - value) * (plot_h - 1)))
            draw.line([x0 + COLORBAR_WIDTH, y, x0 + COLORBAR_WIDTH + 3, y], fill=INK_RGB)
            draw_text(draw, (x0 + COLORBAR_WIDTH + 5, y), label, fnt, anchor="lm")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


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

    def title(self) -> str:
        return f"{self.stat.replace('_', ' ')} per site (grey: does not apply)"

    def image(self) -> np.ndarray:
        """The CHW uint8 picture of the history, titled and labelled (see :func:`render_heatmap`)."""
        return render_heatmap(self.matrix(), labels=self.rows, title=self.title(), spans=self.spans)


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


def image_value(tag: str, chw: np.ndarray) -> Any:
    """A TensorBoard image summary value of a CHW uint8 RGB picture. Encoded here at PNG compression
    level 3: a quarter of the time of ``summary.image`` (which converts to float and back, then
    compresses at level 6), for a file a few percent larger."""
    import io

    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    _, height, width = chw.shape
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buffer, format="PNG", compress_level=3)
    return Summary.Value(tag=tag, image=Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue()))


def image_description(stat: str) -> str:
    """TensorBoard's description of a heatmap image (markdown)."""
    return (
        f"**{STAT_TITLES.get(stat, stat)}** of each activation site (rows, forward order, input side on top) "
        "over training (columns, oldest on the left; long runs merge neighbouring windows). Colour: 0 dark "
        "purple to 1 bright yellow; grey where the statistic does not apply to the site's activation. "
        f"Full site names: the `{LEGEND_TEXT_TAG}` text."
    )


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
            values = {site.name: applicable(stat, site.family, getattr(st, stat, None)) for site, st in snapshot.ordered()}
            history.add(step, values, order=order)
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
        from tensorboard.plugins.image import metadata as image_metadata
        from torch.utils.tensorboard import summary

        values = []
        for stat, history in self.histories.items():
            value = image_value(IMAGE_TAG.format(stat=stat), history.image())
            # The description TensorBoard's Images tab shows; the plugin named as its own PNG images do.
            value.metadata.CopyFrom(image_metadata.create_summary_metadata(display_name=value.tag, description=image_description(stat)))
            values.append(value)
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
            message = f"act_diagnostics: heatmap images turned off after an error ({type(exc).__name__}: {exc})"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return []
