"""Every example in examples/ runs (``--fast``: a few steps) and measures what it says it does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FAST = ["--fast", "--max-steps", "6"]


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_example_is_tested() -> None:
    listed = {p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_")}
    assert listed == {"cnn_synthetic_images", "transformer_lm", "sigmoid_mlp_before_after", "hf_transformers_tiny"}


@pytest.mark.slow
def test_cnn_synthetic_images(tmp_path: Path) -> None:
    callback = load("cnn_synthetic_images").main([*FAST, "--logdir", str(tmp_path)])
    sites = callback.last_snapshot.sites
    assert {"features.2", "features.6", ":silu"} <= set(sites)
    assert sites[":silu"].source == "functional"
    assert (Path(callback.report_dir) / "report.json").is_file()


@pytest.mark.slow
def test_transformer_lm_functional_activations(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    callback = load("transformer_lm").main([*FAST, "--logdir", str(tmp_path)])
    sites = callback.last_snapshot.sites
    assert {"encoder.layers.0:gelu", "encoder.layers.1:gelu"} <= set(sites)
    assert all(sites[n].source == "functional" for n in ("encoder.layers.0:gelu", "encoder.layers.1:gelu"))
    assert sites["encoder.layers.1.self_attn:attention"].source == "attention"


@pytest.mark.slow
def test_sigmoid_mlp_before_after(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from act_diagnostics import ActivationWarning

    with pytest.warns(ActivationWarning) as warned:  # the "before" run warns
        results = load("sigmoid_mlp_before_after").main([*FAST, "--logdir", str(tmp_path)])
    assert any("saturating-hidden-activation" in str(w.message) for w in warned)
    before, loss_before, steps = results["sigmoid_before"]
    after, loss_after, _ = results["gelu_after"]
    # Six steps were trained: the loss compared is the mean of those six, and says so.
    assert steps == 6
    assert f"final training loss (mean of the last 6 steps): before {loss_before:.3f}, after {loss_after:.3f}" in capsys.readouterr().out
    rules_before = {f.rule for f in before.report.findings if f.severity != "info"}
    assert "saturating-hidden-activation" in rules_before
    assert "saturating-hidden-activation" not in {f.rule for f in after.report.findings}


@pytest.mark.slow
def test_hf_transformers_tiny(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    callback = load("hf_transformers_tiny").main([*FAST, "--logdir", str(tmp_path)])
    sites = callback.last_snapshot.sites
    acts = {n: s for n, s in sites.items() if s.module_type == "NewGELUActivation"}
    assert set(acts) == {"model.transformer.h.0.mlp.act", "model.transformer.h.1.mlp.act"}
    assert all(s.kind == "gelu" for s in acts.values())


def test_hf_example_says_what_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Without transformers: one line naming the install, no traceback. --model is a real flag."""
    example = load("hf_transformers_tiny")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(SystemExit, match="needs Hugging Face transformers: pip install transformers"):
        example.main([*FAST, "--model", "bert", "--logdir", str(tmp_path)])
    with pytest.raises(SystemExit) as bad:
        example.main([*FAST, "--model", "t5"])
    assert bad.value.code == 2 and "invalid choice: 't5'" in capsys.readouterr().err


def test_fast_flag_and_bad_steps(capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import _common
    finally:
        sys.path.remove(str(EXAMPLES))
    assert _common.parse_args("x", ["--fast"], default_steps=100).max_steps == 8
    assert _common.parse_args("x", [], default_steps=100).max_steps == 100
    assert _common.tail_mean([1.0, 2.0, 3.0], last=2) == (2.5, 2) and _common.tail_mean([4.0], last=20) == (4.0, 1)
    with pytest.raises(SystemExit):
        _common.parse_args("x", ["--max-steps", "0"], default_steps=100)
    assert "--max-steps must be >= 1, got 0" in capsys.readouterr().err
