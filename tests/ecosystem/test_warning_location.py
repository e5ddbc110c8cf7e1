"""An ActivationWarning points at the user's code, not at act_diagnostics or Lightning."""

from __future__ import annotations

import importlib.machinery
import warnings
from pathlib import Path

from act_diagnostics.rules import ActivationWarning, Finding, emit_warning
from tests.ecosystem.conftest import callback_class, deep_sigmoid_net, fit, make_trainer, seq_module_class


def _printed(record: warnings.WarningMessage) -> str:
    return warnings.formatwarning(record.message, record.category, record.filename, record.lineno, record.line)


def test_the_warning_is_printed_at_the_callers_line() -> None:
    finding = Finding("dead-units", "fc.act", "warning", "30% of 8 units never fire", "lower the LR", 5, {"dead_fraction": 0.3})
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        emit_warning(finding)
    (record,) = records
    line = _line_of("        emit_warning(finding)")
    assert _printed(record) == (
        f"{__file__}:{line}: ActivationWarning: [act_diagnostics:dead-units] warning at step 5, site 'fc.act': "
        "30% of 8 units never fire (evidence: dead_fraction=0.3). Fix: lower the LR\n"
        "  emit_warning(finding)\n"
    )


def test_a_fit_warns_at_the_line_that_called_fit(tmp_path: Path) -> None:
    flavour = "pytorch_lightning"
    trainer = make_trainer(flavour, tmp_path, callbacks=[callback_class(flavour)(log_every_n_steps=4, verbose=False)], max_steps=4)
    module = seq_module_class(flavour)(deep_sigmoid_net())
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        fit(trainer, module)
    ours = [r for r in records if issubclass(r.category, ActivationWarning)]
    assert ours, "the deep sigmoid net raises findings"
    # fit() is the tests' helper around trainer.fit: the first frame outside the framework.
    import tests.ecosystem.conftest as conftest

    lines = Path(conftest.__file__).read_text().splitlines()
    lineno = next(i for i, line in enumerate(lines, start=1) if "trainer.fit(" in line)
    for record in ours:
        printed = _printed(record)
        assert printed.startswith(f"{conftest.__file__}:{lineno}: ActivationWarning: [act_diagnostics:"), printed
        assert printed.endswith(f"\n  {lines[lineno - 1].strip()}\n")


def _line_of(text: str) -> int:
    """The line number of ``text`` (a whole line) in this file."""
    return Path(__file__).read_text().splitlines().index(text) + 1


def test_a_script_edited_while_it_trains_still_gets_its_warning(tmp_path: Path) -> None:
    # The warning's frame points past the end of the file as it now is: CPython cannot quote the
    # line (IndexError inside warn_explicit); the warning must still go out, without the quote.
    script = tmp_path / "train.py"
    script.write_text("x = 1\n")
    code = compile("\n" * 9 + "emit_warning(finding)\n", str(script), "exec")
    finding = Finding("dead-units", "fc.act", "warning", "30% of 8 units never fire", "lower the LR", 5, {"dead_fraction": 0.3})
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        loader = importlib.machinery.SourceFileLoader("train", str(script))  # reads the file as it is now
        exec(code, {"__name__": "train", "__loader__": loader, "emit_warning": emit_warning, "finding": finding})
    (record,) = records
    assert record.filename == str(script) and record.lineno == 10
    assert str(record.message).startswith("[act_diagnostics:dead-units] warning at step 5")
