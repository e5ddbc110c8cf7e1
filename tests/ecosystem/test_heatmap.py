"""Layers x steps heatmaps: pure rendering, bounded history, and the images in a real event file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from act_diagnostics import OutputOptions
from act_diagnostics.outputs import heatmap as hm
from tests.ecosystem.conftest import callback_class, deep_sigmoid_net, fit, make_trainer, seq_module_class


def test_colormap_ends_and_not_applicable() -> None:
    rgb = hm.colormap(np.array([0.0, 1.0, np.nan, -3.0, 7.0]))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 3)
    assert tuple(rgb[0]) == (68, 1, 84) and tuple(rgb[1]) == (253, 231, 37)
    assert tuple(rgb[2]) == hm.NOT_APPLICABLE_RGB
    assert tuple(rgb[3]) == tuple(rgb[0]) and tuple(rgb[4]) == tuple(rgb[1])  # clipped to [0, 1]


def test_bare_render_is_the_cell_area() -> None:
    m = np.array([[0.0, 1.0], [np.nan, 0.5]])
    img = hm.render_heatmap(m, labels=False, colorbar=False)
    cell_w = hm.PLOT_WIDTH // 2  # the cell area is PLOT_WIDTH pixels wide
    assert img.dtype == np.uint8 and img.shape == (3, 2 * hm.ROW_HEIGHT, 2 * cell_w)
    hwc = img.transpose(1, 2, 0)
    assert tuple(hwc[0, 0]) == (68, 1, 84)  # row 0, column 0: share 0
    assert tuple(hwc[0, -1]) == (253, 231, 37)  # row 0, column 1: share 1
    assert tuple(hwc[hm.ROW_HEIGHT, 0]) == hm.NOT_APPLICABLE_RGB
    with pytest.raises(ValueError, match="must be 2-D"):
        hm.render_heatmap(np.zeros(3))
    with pytest.raises(ValueError, match="`spans` must give one"):
        hm.render_heatmap(np.zeros((2, 3)), spans=[(0, 0)])


def _ink(region: np.ndarray) -> int:
    """Dark pixels (text, ticks) in an HWC region of a white-background picture."""
    return int(np.count_nonzero(region.max(axis=-1) < 96))


def _picture(rows: int, columns: int = 6) -> tuple[np.ndarray, hm.HeatmapHistory]:
    history = hm.HeatmapHistory("dead_fraction")
    names = [f"encoder.layers.{i}.mlp.act" for i in range(rows)]
    for j in range(columns):
        history.add(10 * j, {n: (None if i == 1 else j / columns) for i, n in enumerate(names)})
    return history.image().transpose(1, 2, 0), history


def test_picture_reads_on_its_own() -> None:
    """Title, site names, step axis and colour bar are drawn as text a person can read."""
    img, history = _picture(rows=3)
    height, width, _ = img.shape
    assert width >= 480 and height >= 160  # readable at TensorBoard's default size
    # Locate the cell area: the first dark-purple pixel of row 0 (share 0 in column 0).
    ys, xs = np.nonzero(np.all(img == (68, 1, 84), axis=-1))
    top, left = int(ys.min()), int(xs.min())
    right = left + -(-hm.PLOT_WIDTH // 6) * 6  # six columns
    plot_h = int(np.count_nonzero(np.any(np.all(img[:, left : left + 3] == hm.NOT_APPLICABLE_RGB, axis=-1), axis=1)))
    row_h = plot_h  # row 1 (not applicable) is one row of grey
    assert row_h >= hm.ROW_HEIGHT
    assert _ink(img[:top, :]) > 100  # the title above the cells
    for r in range(3):  # each row has its site name to its left
        assert _ink(img[top + r * row_h + 2 : top + (r + 1) * row_h - 2, : left - 2]) > 30, f"row {r} has no label"
    bottom = top + 3 * row_h
    assert _ink(img[bottom + 2 :, left:right]) > 60  # step numbers and the axis name below
    assert _ink(img[top:bottom, right + hm.COLORBAR_WIDTH + 2 * hm.PAD + 2 :]) > 30  # colour-bar tick labels
    # The colour bar runs from bright (1, top) to dark (0, bottom).
    bar_x = right + 2 * hm.PAD + hm.COLORBAR_WIDTH // 2
    assert tuple(img[top, bar_x]) == tuple(hm.colormap(np.array([1.0]))[0])
    assert tuple(img[bottom - 1, bar_x]) == tuple(hm.colormap(np.array([0.0]))[0])
    # The not-applicable row is grey across the run.
    assert np.all(img[top + row_h + row_h // 2, left:right] == hm.NOT_APPLICABLE_RGB)
    assert "dead fraction" in history.title()


def test_picture_grows_with_the_sites() -> None:
    small, _ = _picture(rows=3)
    large, _ = _picture(rows=40)
    assert large.shape[0] >= 40 * hm.ROW_HEIGHT > small.shape[0]
    # Long names keep their specific end.
    assert hm.short_label("a" * 50 + ".mlp.act").endswith(".mlp.act") and len(hm.short_label("a" * 50)) == hm.MAX_LABEL_CHARS


def test_history_is_bounded_and_keeps_the_whole_time_axis() -> None:
    h = hm.HeatmapHistory("dead_fraction", max_columns=8)
    for step in range(100):
        h.add(step, {"a": step / 100, "b": None})
    assert len(h.columns) <= 8
    assert h.spans[0][0] == 0 and h.spans[-1][1] == 99
    assert h.rows == ["a", "b"]
    m = h.matrix()
    assert np.all(np.isnan(m[1])) and np.all(np.diff(m[0]) > 0)
    # Columns are means of equal-size groups of windows: the first covers steps 0..15.
    assert h.spans[0] == (0, 15) and m[0, 0] == pytest.approx(np.mean(np.arange(16) / 100))
    with pytest.raises(ValueError, match="`max_columns` must be an int >= 2, got 1"):
        hm.HeatmapHistory("x", max_columns=1)


def test_images_in_the_event_file(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    flavour = "pytorch_lightning"
    callback = callback_class(flavour)(log_every_n_steps=4, verbose=False)
    trainer = make_trainer(flavour, tmp_path, callbacks=[callback], max_steps=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(trainer, seq_module_class(flavour)(deep_sigmoid_net(depth=4)))
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "tensors": 0}).Reload()
    for stat in hm.HEATMAP_STATS:
        images = acc.Images(hm.IMAGE_TAG.format(stat=stat))
        # Five windows (steps 0, 3, 7, 11, 15): images of the first, then of all five at the end of fit.
        assert [im.step for im in images] == [0, 15]
        first, last = images
        assert last.height == first.height >= 4 * hm.ROW_HEIGHT and last.width >= 480
        decoded = np.asarray(pil.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
        assert decoded.shape == (last.height, last.width, 3)
        if stat == "dead_fraction":  # sigmoid layers: "never above 0.5" is not dead, so every cell is grey
            assert np.count_nonzero(np.all(decoded == hm.NOT_APPLICABLE_RGB, axis=-1)) >= 4 * hm.ROW_HEIGHT * 5
    from tensorboard.backend.event_processing import plugin_event_accumulator

    described = plugin_event_accumulator.EventAccumulator(trainer.logger.log_dir).Reload()
    for stat in hm.HEATMAP_STATS:
        assert described.SummaryMetadata(hm.IMAGE_TAG.format(stat=stat)).summary_description == hm.image_description(stat)
    legend = acc.Tensors(hm.LEGEND_TEXT_TAG + "/text_summary")
    assert [t.step for t in legend] == [0, 15]  # written with each image: its column span changes
    texts = [t.tensor_proto.string_val[0].decode() for t in legend]
    assert "(0 to 0, 1 columns" in texts[0] and "(0 to 15, 5 columns" in texts[1]
    assert all("| 0 | `net.1` |" in text and "| 3 | `net.7` |" in text for text in texts)


def test_heatmaps_can_be_switched_off(tmp_path: Path) -> None:
    flavour = "pytorch_lightning"
    callback = callback_class(flavour)(log_every_n_steps=4, verbose=False, outputs=OutputOptions(heatmaps=False))
    trainer = make_trainer(flavour, tmp_path, callbacks=[callback], max_steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(trainer, seq_module_class(flavour)(deep_sigmoid_net(depth=4)))
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0}).Reload()
    assert acc.Tags()["images"] == []
    assert acc.Tags()["scalars"]  # everything else is still written


class _Snap:
    """The part of a Snapshot that HeatmapWriter reads."""

    def __init__(self, dead: float) -> None:
        site = type("Site", (), {"name": "net.1", "family": "relu"})()
        self._pairs = [(site, type("Stats", (), {"dead_fraction": dead, "saturation": None})())]

    def ordered(self) -> list:
        return self._pairs


def test_images_every_few_windows_and_the_last_at_the_end() -> None:
    pytest.importorskip("PIL.Image")
    writer = hm.HeatmapWriter(image_every=3)
    drawn = [step for step in range(7) if writer.summaries(_Snap(step / 10), step)]
    assert drawn == [0, 3, 6]  # windows 1, 4 and 7
    assert writer.final() == []  # nothing new since the last images
    writer.summaries(_Snap(0.9), 7)
    values = writer.final()
    tags = [hm.IMAGE_TAG.format(stat=s) for s in hm.HEATMAP_STATS] + [hm.LEGEND_TEXT_TAG + "/text_summary"]
    assert sorted(v.tag for v in values) == sorted(tags)  # the legend with its new column span
    assert writer.final() == []
    with pytest.raises(ValueError, match="`image_every` must be a positive int, got 0"):
        hm.HeatmapWriter(image_every=0)


def test_older_pillows_bitmap_font_still_labels_the_picture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow < 10.1 has no sized default font: its bitmap font (no `anchor` support) still draws."""
    from PIL import ImageFont

    monkeypatch.setattr(hm, "font", lambda size=hm.FONT_SIZE: ImageFont.load_default_imagefont())
    img = hm.render_heatmap(np.zeros((3, 4)), labels=["a.act", "b.act", "c.act"], title="dead fraction", spans=[(0, 0), (1, 1), (2, 2), (3, 3)])
    hwc = img.transpose(1, 2, 0)
    assert hwc.shape[1] >= 480 and _ink(hwc[: hm.TITLE_HEIGHT]) > 20
    from act_diagnostics.outputs import chart

    monkeypatch.setattr(chart, "font", lambda size=hm.FONT_SIZE: ImageFont.load_default_imagefont())
    import tempfile
    from pathlib import Path as _Path

    with tempfile.TemporaryDirectory() as d:
        chart.draw_chart([(0, 0.1), (5, 0.2)], _Path(d) / "c.png", "x", threshold=("t", 0.5), share=True)
        assert (_Path(d) / "c.png").stat().st_size > 0
