"""Render the pictures of docs/reading-the-dashboard.md from real runs (matplotlib, into docs/img/).

Trains two small flawed models (as in the demo) on the CPU with ``ActivationDiagnostics``
and a TensorBoardLogger, reads the event files back (EventAccumulator, size_guidance 0) and draws
what TensorBoard shows: the dashboard's per-site curves, an output histogram, the layers x steps
heatmaps (the PNGs the callback wrote, as they are), the findings text and one of report.md's charts. Run it again after changing
what the callback writes:

    python scripts/docs_screenshots.py            # about a minute on a laptop CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"


def train(logdir: str, name: str, steps: int) -> tuple[Path, object]:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.loggers import TensorBoardLogger

    from act_diagnostics import ActivationDiagnostics

    sys.path.insert(0, str(ROOT / "examples"))
    from sigmoid_mlp_before_after import Classifier, synthetic_classification

    def mlp(act: type, depth: int, bias: float | None = None, weight_std: float | None = None) -> torch.nn.Sequential:
        layers, fan_in = [], 32
        for _ in range(depth):
            linear = torch.nn.Linear(fan_in, 64)
            if weight_std is not None:
                torch.nn.init.normal_(linear.weight, std=weight_std)
            if bias is not None:
                torch.nn.init.constant_(linear.bias, bias)
            layers += [linear, act()]
            fan_in = 64
        return torch.nn.Sequential(*layers, torch.nn.Linear(64, 4))

    torch.manual_seed(0)
    torch.set_num_threads(1)
    # Flawed nets: negative biases + a high learning rate kill ReLUs; 8 sigmoids with too large
    # weights (std 1 instead of ~1/sqrt(fan_in)) saturate and the gradient vanishes.
    net, lr = {
        "dying_relu": (lambda: mlp(torch.nn.ReLU, 4, bias=-1.0), 0.5),
        "deep_sigmoid": (lambda: mlp(torch.nn.Sigmoid, 8, weight_std=1.0), 0.05),
    }[name]
    loader = torch.utils.data.DataLoader(synthetic_classification(), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    callback = ActivationDiagnostics(log_every_n_steps=5, verbose=False)
    logger = TensorBoardLogger(logdir, name=name, version="")
    trainer = pl.Trainer(
        max_steps=steps, logger=logger, callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu", devices=1, log_every_n_steps=5,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Classifier(net(), lr=lr), loader)
    return Path(logger.log_dir), callback


def accumulator(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(run), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0}).Reload()


def plot_stat(acc, stat: str, title: str, out: Path, log: bool = False) -> None:
    import matplotlib.pyplot as plt

    from act_diagnostics.outputs.readback import split_tag

    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for tag in acc.Tags()["scalars"]:
        parsed = split_tag(tag)
        if parsed is None or parsed[1] != stat:
            continue
        events = acc.Scalars(tag)
        ax.plot([e.step for e in events], [e.value for e in events], label=f"act/{parsed[0]}/{stat}", linewidth=1.6)
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_histograms(acc, site: str, out: Path) -> None:
    import matplotlib.pyplot as plt

    events = acc.Histograms(f"act/{site}/output")
    picks = [events[0], events[len(events) // 2], events[-1]]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    for ev, alpha in zip(picks, (0.35, 0.55, 0.9)):
        h = ev.histogram_value
        edges = np.array(h.bucket_limit)
        counts = np.array(h.bucket)
        lefts = np.concatenate([[h.min], edges[:-1]])
        widths = np.maximum(edges - lefts, 1e-9)
        keep = np.isfinite(lefts) & np.isfinite(widths) & (counts > 0)
        ax.bar(lefts[keep], counts[keep] / counts.sum(), width=widths[keep], align="edge", alpha=alpha, label=f"step {ev.step}")
    ax.set_title(f"act/{site}/output: output values of one sample of the log step", fontsize=10, loc="left")
    ax.set_xlabel("activation output")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def save_heatmap(acc, stat: str, out: Path) -> None:
    """The callback's own image (last step), as TensorBoard shows it."""
    from act_diagnostics.outputs.heatmap import IMAGE_TAG

    last = acc.Images(IMAGE_TAG.format(stat=stat))[-1]
    out.write_bytes(last.encoded_image_string)


def save_report_chart(callback, rule: str, out: Path) -> None:
    """The chart report.md shows beside the first finding of ``rule``."""
    import re

    md = (Path(callback.report_dir) / "report.md").read_text(encoding="utf-8")
    name = next(n for n in re.findall(r"\]\((finding-\d+-[a-z-]+\.png)\)", md) if n.endswith(f"-{rule}.png"))
    out.write_bytes((Path(callback.report_dir) / name).read_bytes())


def text_of(acc, tag: str) -> str:
    events = acc.Tensors(f"{tag}/text_summary")
    return events[-1].tensor_proto.string_val[0].decode() if events else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", default=str(IMG))
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as logdir:
        relu_run, relu_callback = train(logdir, "dying_relu", args.steps)
        sigmoid_run, _ = train(logdir, "deep_sigmoid", args.steps)
        relu, sigmoid = accumulator(relu_run), accumulator(sigmoid_run)
        plot_stat(relu, "dead_fraction", "dead fraction (share of units that never fire): dying_relu", out / "dashboard-dead-fraction.png")
        plot_stat(relu, "firing_rate", "firing rate (share of outputs active): dying_relu", out / "dashboard-firing-rate.png")
        plot_stat(sigmoid, "grad_rms", "gradient RMS at the activation output: deep_sigmoid (log scale)", out / "dashboard-grad-rms.png", log=True)
        plot_stat(sigmoid, "saturation", "saturation (share of outputs where the derivative < ~0.01): deep_sigmoid", out / "dashboard-saturation.png")
        plot_histograms(relu, "net.1", out / "histogram-output.png")
        save_heatmap(relu, "dead_fraction", out / "heatmap-dead-fraction.png")
        save_heatmap(sigmoid, "saturation", out / "heatmap-saturation.png")
        save_report_chart(relu_callback, "dead-units", out / "report-chart-dead-units.png")
        findings = text_of(relu, "act_diagnostics/report") or text_of(relu, "act_diagnostics/findings")
        (out / "findings-dying_relu.md.txt").write_text(findings + "\n", encoding="utf-8")
    for p in sorted(out.iterdir()):
        print(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
