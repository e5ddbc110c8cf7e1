"""LightningCLI of each flavour accepts its own ActivationDiagnostics, from the command line or YAML."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

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
    cli_mod = importlib.import_module(f"{flavour}.cli")
    return cli_mod.LightningCLI(
        tiny_module_class(flavour),
        args=[f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=6", *QUIET, *args],
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
        ],
    )
    (cb,) = ours(cli, flavour)
    assert cb.log_every_n_steps == 5 and cb.verbose is False and cb.eval_stages == ("validate",)
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
        "        kinds: [relu]\n"
        "        thresholds: {dead-units.warn_fraction: 0.3}\n"
        "        verbose: false\n"
    )
    cli = run_cli(flavour, tmp_path, [f"--config={config}"])
    (cb,) = ours(cli, flavour)
    assert cb.log_every_n_steps == 3
    assert cb.monitor_config.kinds is not None


@pytest.mark.parametrize(
    "bad",
    [
        "--trainer.callbacks.log_every_n_steps=often",  # not an int
        "--trainer.callbacks.eval_stages=[train]",  # not one of the Literal choices
        "--trainer.callbacks.histograms=maybe",  # not a bool
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
