"""The user-facing docstring shared by both flavours' ``ActivationDiagnostics``."""

CALLBACK_DOC = """Watch every activation of the model while it trains, and warn about activation mistakes.

Finds activation modules (ReLU, GELU, Sigmoid, Softmax, ... and subclasses) and functional calls
(``F.relu`` inside a forward, ``x.softmax(-1)``) automatically. Statistics stay on the device and
are copied to the host once per log step; rules turn them into findings with a recommendation.

Args:
    log_every_n_steps: statistics window and log interval in optimizer steps; None follows
        ``Trainer(log_every_n_steps=...)``.
    include: glob patterns of site names to watch (e.g. ``["encoder.*"]``); None watches all.
    exclude: glob patterns of site names to skip.
    kinds: activation kinds or families to watch (e.g. ``["relu", "sigmoid"]``); None watches all.
        A name that is both, like ``"relu"``, is the kind; ``"family:relu"`` adds LeakyReLU, PReLU,
        ReLU6 and the rest of the family (``"smooth"`` alone names the GELU/SiLU/ELU family).
    functional: also watch functional activations (needs a TorchFunctionMode during the step).
    gradients: measure gradient RMS at each activation output (a tensor hook per output).
    histograms: write output histograms to TensorBoard on detail steps (log steps at least 10
        steps apart).
    grad_histograms: also write histograms of the gradient at each activation output.
    heatmaps: write layers x steps images of dead fraction and saturation to TensorBoard.
    histogram_samples: values per site kept for each histogram.
    saturation_eps: saturation margin, e.g. sigmoid below eps or above 1 - eps.
    sample_elements: every per-element statistic (rates, moments, extrema, gradient RMS) reads at
        most this many elements per call, the leading batch rows; None reads everything. Detail
        steps count non-finite values over the whole output.
    unit_dim: dimension that indexes units; None: channel dim 1 for conv outputs, else the last.
    rules: judge statistics and structure with the rules (see docs/rules).
    disable_rules: rule ids to switch off, e.g. ``["saturation"]``.
    thresholds: rule thresholds to override, ``{"<rule-id>.<name>": value}``.
    warn: issue each warning/error finding once as an ``ActivationWarning``.
    preflight: publish the first training step's statistics at once (signal propagation at init).
    report: write ``act_diagnostics/report.json`` and ``report.md`` in the log dir at the end.
    verbose: print the end-of-fit summary table.
    eval_stages: also measure ``"validate"``, ``"test"`` or ``"predict"`` batches (no gradients),
        each stage in a window of its own (never mixed into training windows, not a training
        step; the sanity check is skipped), logged at the stage's end under
        ``act_<stage>/<site>/<stat>`` and kept in ``callback.eval_snapshots[stage]``; not judged
        by the rules. ``trainer.test``/``predict``/``validate`` also print its table when verbose.
    measure_every_n_steps: between log steps measure only every n-th training step (log steps
        always); 1 measures every step. None (default) measures every step of the first window,
        where initialisation faults show, then about 5 steps per window: every 10th step at the
        default interval of 50, every step when logging every step or every few steps. Windows
        hold the measured steps; rates are unbiased (see docs/performance.md).

Raises:
    ValueError / TypeError: for an invalid argument, naming it, the value and the valid choices.

Logged Metrics:
    Per site, every log step, to every logger, as ``act/<site>/<stat>`` (``:`` in a site name is
    written ``/``, ``#`` is written ``_call``; see docs/logged-metrics.md):

    - ``firing_rate``: share of outputs that are active for that activation
    - ``dead_fraction``: share of units that fired on < 1% of their samples in the window
    - ``saturation``: share of outputs in the flat region (derivative below about 0.01)
    - ``mean``, ``std``, ``max_abs``: output moments and largest magnitude
    - ``grad_rms``: RMS of the gradient with respect to the activation output
    - ``param_grad_norm``: gradient norm of the parameters of the layer feeding the activation
      (detail steps: log steps at least 10 steps apart)
    - ``nonfinite``: 1 when a NaN or Inf appeared in the window

    With a TensorBoardLogger also: ``act/<site>/output`` (and ``/grad``) histograms, a custom-scalars
    dashboard ``act_diagnostics``, and the findings as a markdown table (``act_diagnostics/findings``).

Example::

    from act_diagnostics import ActivationDiagnostics
    trainer = Trainer(callbacks=[ActivationDiagnostics()])
    trainer.fit(model, datamodule)
    for finding in trainer.callbacks[0].report.findings:
        print(finding.rule, finding.site, finding.recommendation)
"""
