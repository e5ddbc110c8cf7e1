"""The user-facing docstring shared by both flavours' ``ActivationDiagnostics``."""

CALLBACK_DOC = """Watch every activation of the model while it trains, and warn about activation mistakes.

Finds activation modules (ReLU, GELU, Sigmoid, Softmax, ... and subclasses) and functional calls
(``F.relu`` inside a forward, ``x.softmax(-1)``) automatically. Statistics stay on the device and
are copied to the host once per log step; rules turn them into findings with a recommendation.

Args:
    log_every_n_steps: statistics window and log interval in optimizer steps; None follows
        ``Trainer(log_every_n_steps=...)``.
    measure_every_n_steps: between log steps measure only every n-th training step (log steps
        always); 1 measures every step. None (default) measures every step of the first window,
        where initialisation faults show, then about 5 steps per window: every 10th step at the
        default interval of 50, every step when logging every step or every few steps. Windows
        hold the measured steps; rates are unbiased (see docs/performance.md).
    monitor: what is measured, a :class:`MonitorOptions`: ``include`` / ``exclude`` (glob
        patterns of site names), ``kinds`` (activation kinds or families, e.g. ``["relu"]``;
        ``"family:relu"`` adds LeakyReLU, PReLU, ReLU6...), ``functional`` (also ``F.relu`` and
        ``x.softmax(-1)`` calls), ``gradients`` (gradient RMS at each output), ``unit_dim``,
        ``saturation_eps`` and ``sample_elements`` (elements read per call; None reads all).
        None: the defaults, every activation.
    rules: how statistics are judged, a :class:`RuleOptions`: ``disable`` (rule ids),
        ``thresholds`` (``{"<rule-id>.<name>": value}``; ``"dead-units.unit_rate"`` also sets the
        rate behind the logged ``dead_fraction``), ``warn`` (each warning/error finding once as an
        ``ActivationWarning``), ``preflight`` (publish and judge the first step at once). True: the
        defaults; False: no rules (statistics are still logged).
    outputs: what is written, an :class:`OutputOptions`: ``histograms`` and ``grad_histograms``
        (TensorBoard histograms on detail steps, log steps at least 10 steps apart),
        ``histogram_samples`` (values per site and histogram), ``heatmaps`` (layers x steps images),
        ``report`` (``report.json`` and ``report.md`` in the log dir at the end). None: the defaults.
    eval_stages: also measure ``"validate"``, ``"test"`` or ``"predict"`` batches (no gradients),
        each stage in a window of its own (never mixed into training windows, not a training
        step; the sanity check is skipped), logged at the stage's end under
        ``act_<stage>/<site>/<stat>`` and kept in ``callback.eval_snapshots[stage]``; not judged
        by the rules. ``trainer.test``/``predict``/``validate`` also print its table when verbose.
    verbose: print the end-of-fit summary table.

Raises:
    TypeError: a positional argument; a keyword this class does not take (the message names the
        closest valid one, or the option group an earlier flat keyword such as ``thresholds=``
        moved to); an option of the wrong type, naming it and the value received.
    ValueError: an option out of range, naming it, the value and the valid choices (an unknown
        rule id, activation kind or evaluation stage, a threshold that names no rule...).

Logged Metrics:
    Per site, every log step, to every logger, as ``act/<site>/<stat>`` (``:`` in a site name is
    written ``/``, ``#`` is written ``_call``; see docs/logged-metrics.md):

    - ``firing_rate``: share of outputs that are active for that activation
    - ``dead_fraction``: share of units that fired on < 1% of their samples in the window (the rate
      is ``RuleOptions(thresholds={"dead-units.unit_rate": ...})``)
    - ``saturation``: share of outputs in the flat region (derivative below about 0.01)
    - ``mean``, ``std``, ``max_abs``: output moments and largest magnitude
    - ``grad_rms``: RMS of the gradient with respect to the activation output
    - ``param_grad_norm``: gradient norm of the parameters of the layer feeding the activation
      (detail steps: log steps at least 10 steps apart)
    - ``nonfinite``: 1 when a NaN or Inf appeared in the window

    With a TensorBoardLogger also: ``act/<site>/output`` (and ``/grad``) histograms, a custom-scalars
    dashboard ``act_diagnostics``, layers x steps heatmaps, and the findings as a markdown table
    (``act_diagnostics/findings``).

Example::

    from act_diagnostics import ActivationDiagnostics, MonitorOptions, RuleOptions
    trainer = Trainer(callbacks=[ActivationDiagnostics()])  # every activation, every rule
    trainer.fit(model, datamodule)
    for finding in trainer.callbacks[0].report.findings:
        print(finding.rule, finding.site, finding.recommendation)

    # The encoder's ReLUs only, the saturation rule off, a stricter dead-unit share:
    ActivationDiagnostics(
        log_every_n_steps=10,
        monitor=MonitorOptions(include=["encoder.*"], kinds=["relu"]),
        rules=RuleOptions(disable=["saturation"], thresholds={"dead-units.warn_fraction": 0.2}),
    )
"""
