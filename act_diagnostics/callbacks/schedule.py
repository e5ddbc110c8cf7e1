"""Which training steps are measured, logged and measured in detail. Pure; no Lightning.

* **log step**: every ``interval``-th step (and step 0, the pre-flight): reduce, judge, write.
* **measured step**: log steps, and every ``measure_every``-th step between them. Automatic
  (``measure_every=None``): every step of the first window, where initialisation faults show
  (born-dead units, a wrong output activation), then about MEASURED_STEPS_PER_WINDOW per window;
  a window a rule asked to see densely (:meth:`StepSchedule.request_dense`: a verdict waits on
  samples, as dead-units' does with small batches) measures every step.
* **detail step**: a log step at least DETAIL_MIN_STEPS after the previous detail step (and step 0):
  histograms, pre-activation moments, feeding-layer gradient norms, non-finite counts.
"""

from __future__ import annotations

from dataclasses import dataclass

# With measure_every=None a window after the first measures about this many steps (plus its log
# step): at Lightning's default interval of 50, every 10th step. Six batches give each unit of a
# layer >= 1000 samples at batch size 170, the dead-unit rule's minimum (rules.md); smaller batches
# pool windows. Faults that develop during training (dying units, growing activations) develop over
# many windows, so the steady state samples them; the first window is measured on every step.
MEASURED_STEPS_PER_WINDOW = 5
# Detail steps are log steps at least this many steps apart: every log step at intervals above 10
# (at 10, all but step 9, which is 9 steps after step 0), so logging every step stays cheap.
DETAIL_MIN_STEPS = 10


@dataclass(frozen=True)
class StepPlan:
    log: bool
    measure: bool
    detail: bool


class StepSchedule:
    """Plans each step, in order; asking again for the same step (gradient accumulation runs
    several batches per step) returns the same plan."""

    def __init__(self, interval: int, measure_every: int | None = None, preflight: bool = True) -> None:
        self.interval = interval
        self.measure_every = measure_every if measure_every is not None else automatic_measure_every(interval)
        self.dense_first_window = measure_every is None
        # Automatic schedule only: an explicit measure_every is the user's cost budget.
        self.dense_on_request = measure_every is None
        self._dense_next = False
        self.preflight = preflight
        self.last_detail = -1
        self._last: tuple[int, StepPlan] | None = None

    def request_detail(self) -> None:
        """Make the next log step a detail step (histograms etc.), however recent the last one: a
        rule asked for detail (activation-spike captures the sites that spiked)."""
        self.last_detail = -1

    def request_dense(self) -> None:
        """Measure every step of the next window (automatic schedule only): a rule's verdict waits on
        samples that the sparse steady state would collect several times slower."""
        self._dense_next = self.dense_on_request

    def plan(self, step: int) -> StepPlan:
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        log = (step + 1) % self.interval == 0 or (self.preflight and step == 0)
        detail = log and (step == 0 or self.last_detail < 0 or step - self.last_detail >= DETAIL_MIN_STEPS)
        if detail:
            self.last_detail = step
        dense = (self.dense_first_window and step < self.interval) or self._dense_next
        if log:
            self._dense_next = False  # the requested window ends here; its judgement may ask again
        plan = StepPlan(log=log, measure=log or dense or step % self.measure_every == 0, detail=detail)
        self._last = (step, plan)
        return plan


def automatic_measure_every(interval: int) -> int:
    """What ``measure_every_n_steps=None`` means at ``interval``."""
    return max(1, interval // MEASURED_STEPS_PER_WINDOW)
