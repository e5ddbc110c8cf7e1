"""LightningCLI of each flavour accepts its own ActivationDiagnostics, from the command line or YAML."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.ecosystem.conftest import callback_class, fit, tiny_module_class

pytest.importorskip("jsonargparse")

# The class path each flavour's users write.
CLASS_PATHS = {
    "pytorch_lightning": "act_diagnostics.ActivationDiagnostics",
    "lightning.pytorch": "act_diagnostics.lightning.ActivationDiagnostics",
}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.accelerator=cpu"]


def run_cli(flavour: str, tmp_path: Path, args: list[str]) -> Any:
    """LightningCLI parsing ``args`` alone: sys.argv is pytest's own command line, which the CLI
    would otherwise also see (and warn about being given both)."""
    cli_mod = importlib.import_module(f"{flavour}.cli")
    with mock.patch.object(sys, "argv", ["train.py"]):
        return cli_mod.LightningCLI(
            tiny_module_class(flavour),
            args=["--seed_everything=0", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=6", *QUIET, *args],
            run=False,
            save_config_callback=None,
        )


def ours(cli: Any, flavour: str) -> list[Any]:
    return [c for c in cli.trainer.callbacks if isinstance(c, callback_class(flavour))]


def test_command_line_form(flavour: str, tmp_path: Path) -> None:
    cli = run_cli(
        flavour,
        tmp_path,
        [
            f"--trainer.callbacks+={CLASS_PATHS[flavour]}",
            "--trainer.callbacks.log_every_n_steps=5",
            "--trainer.callbacks.verbose=false",
            "--trainer.callbacks.eval_stages=[validate]",
            "--trainer.callbacks.measure_every_n_steps=2",
            "--trainer.callbacks.monitor.kinds=[relu]",
            "--trainer.callbacks.monitor.gradients=false",
            "--trainer.callbacks.rules.disable=[saturation]",
            "--trainer.callbacks.rules.warn=false",
            "--trainer.callbacks.outputs.histograms=false",
            "--trainer.callbacks.outputs.report=false",
        ],
    )
    (cb,) = ours(cli, flavour)
    assert cb.options.log_every_n_steps == 5 and cb.options.verbose is False and cb.eval_stages == ("validate",)
    assert cb.options.measure_every_n_steps == 2
    assert cb.monitor_config.kinds == ("relu",) and cb.monitor_config.gradients is False
    assert cb.engine.disabled == ("saturation",) and cb.options.warn is False
    assert cb.options.outputs.histograms is False and cb.options.outputs.report is False
    fit(cli.trainer, cli.model)
    assert cb.failure is None and cb.last_snapshot is not None


def test_yaml_form(flavour: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        f"    - class_path: {CLASS_PATHS[flavour]}\n"
        "      init_args:\n"
        "        log_every_n_steps: 3\n"
        "        monitor:\n"
        "          include: [fc1, act]\n"
        "          exclude: [head]\n"
        "          kinds: [relu]\n"
        "          functional: false\n"
        "          unit_dim: -1\n"
        "          saturation_eps: 0.02\n"
        "          sample_elements: null\n"
        "        rules:\n"
        "          thresholds: {dead-units.warn_fraction: 0.3, dead-units.unit_rate: 0.05}\n"
        "          preflight: false\n"
        "        outputs:\n"
        "          grad_histograms: true\n"
        "          heatmaps: false\n"
        "          histogram_samples: 64\n"
        "        verbose: false\n"
    )
    cli = run_cli(flavour, tmp_path, [f"--config={config}"])
    (cb,) = ours(cli, flavour)
    assert cb.options.log_every_n_steps == 3
    cfg = cb.monitor_config
    assert (cfg.include, cfg.exclude, cfg.kinds) == (("fc1", "act"), ("head",), ("relu",))
    assert (cfg.functional, cfg.unit_dim, cfg.saturation_eps, cfg.sample_elements) == (False, -1, 0.02, None)
    assert cfg.histogram_samples == 64 and cfg.dead_unit_rate == 0.05  # the rule's unit rate, logged too
    assert cb.options.rules.thresholds["dead-units.warn_fraction"] == 0.3 and cb.options.preflight is False
    assert cb.options.outputs.grad_histograms is True and cb.options.outputs.heatmaps is False


def test_rules_switched_off_from_the_command_line(flavour: str, tmp_path: Path) -> None:
    cli = run_cli(flavour, tmp_path, [f"--trainer.callbacks+={CLASS_PATHS[flavour]}", "--trainer.callbacks.rules=false"])
    (cb,) = ours(cli, flavour)
    assert cb.engine is None


@pytest.mark.parametrize(
    "bad",
    [
        "--trainer.callbacks.log_every_n_steps=often",  # not an int
        "--trainer.callbacks.eval_stages=[train]",  # not one of the Literal choices
        "--trainer.callbacks.outputs.histograms=maybe",  # not a bool
        "--trainer.callbacks.monitor.kinds=relu",  # not a list
    ],
)
def test_bad_value_fails(flavour: str, tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(flavour, tmp_path, [f"--trainer.callbacks+={CLASS_PATHS[flavour]}", bad])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert bad.split("=")[0].split(".")[-1] in err, err[-2000:]


def test_bad_value_caught_by_init(flavour: str, tmp_path: Path) -> None:
    # Right type, wrong value: the callback's own check names the argument.
    with pytest.raises((ValueError, SystemExit), match="log_every_n_steps") as info:
        run_cli(flavour, tmp_path, [f"--trainer.callbacks+={CLASS_PATHS[flavour]}", "--trainer.callbacks.log_every_n_steps=0"])
    assert info is not None


def test_other_flavours_class_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Why there are two classes: lightning.pytorch's CLI refuses a pytorch_lightning.Callback subclass.
    pytest.importorskip("lightning.pytorch")
    pytest.importorskip("pytorch_lightning")
    with pytest.raises(SystemExit):
        run_cli("lightning.pytorch", tmp_path, ["--trainer.callbacks+=act_diagnostics.callbacks.pl_callback.ActivationDiagnostics"])
    assert "Callback" in capsys.readouterr().err
