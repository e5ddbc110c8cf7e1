"""The corpus: small programs written the way users write them when their training fails.

Each program (a :class:`corpus_kit.Program` in one of the ``programs_*.py`` modules) comes in a
buggy and a fixed variant. ``test_corpus.py`` runs both variants twice over:

* ``test_oracle``: plain torch, no project code, confirms the fault is in the buggy variant and
  gone from the fixed one (or confirms each fault the fix knowingly left in place);
* ``test_diagnosis``: the variant trains for a few tens of steps under Lightning with the
  ``ActivationDiagnostics`` callback (default constructor, plus ``log_every_n_steps``); the buggy
  variant must get a warning or error finding with the program's rule id (at its site where one is
  named), the fixed variant no warning or error at all except a residual the oracle confirms.

Adding a program:

1. Write it as users do (a ``TabularModule`` subclass from ``corpus_kit``: layers, forward,
   ``training_step`` with the loss as they wrote it), with a ``buggy`` flag that switches between the
   code that failed and the fix that solved it. Keep it tiny: a few hundred rows, a few steps.
2. Write its oracle with plain torch (``corpus_kit`` has helpers: ``producer`` reads the
   activation that made a tensor from autograd's graph, ``is_affine``, ``never_firing_share``,
   ``plain_train``...). It returns True when the fault is present.
3. Add a ``Program(...)`` to the ``PROGRAMS`` list of the module for its fault (one module per
   group, under 500 lines; a new module goes into ``GROUPS`` in ``test_corpus.py``). If today's
   code misses the buggy variant (or warns on the fixed one), set ``buggy_xfail`` / ``fixed_xfail``
   to the reason: the test is a strict xfail, so it fails loudly the day detection lands and the
   mark must go.

Modules: ``programs_single_unit`` (softmax over one unit), ``programs_categorical`` (sigmoid into
class losses, softmax into cross_entropy), ``programs_logits`` (sigmoid into BCEWithLogits),
``programs_multilabel`` (softmax over multi-label targets, ReLU as probabilities),
``programs_ranges`` (regression heads against their targets), ``programs_linear`` (no
nonlinearity, NaN without activations), ``programs_scale`` (raw features), ``programs_hidden``
(dead units, sigmoid stacks).

Run only the corpus with ``pytest tests/corpus`` (or ``-m corpus``).
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("pytorch_lightning")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "corpus: real-style buggy/fixed programs run through the callback (tests/corpus)")


@pytest.fixture
def diagnose(tmp_path):
    """``diagnose(module, steps, csv_logger=True)``: fit ``module`` for ``steps`` steps with the
    callback and a CSVLogger in ``tmp_path`` (or ``logger=False``); returns the callback's findings."""
    from corpus_kit import pl

    from act_diagnostics import ActivationDiagnostics

    def run(module, steps: int, csv_logger: bool = True, log_every: int = 10):
        callback = ActivationDiagnostics(log_every_n_steps=log_every)
        trainer = pl.Trainer(
            max_steps=steps,
            logger=pl.loggers.CSVLogger(str(tmp_path), name="corpus") if csv_logger else False,
            callbacks=[callback],
            log_every_n_steps=log_every,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            accelerator="cpu",
            default_root_dir=str(tmp_path),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ActivationWarnings and Lightning's small-data notes
            trainer.fit(module)
        assert callback.failure is None, f"diagnostics disabled themselves: {callback.failure!r}"
        return list(callback.report.findings)

    return run
