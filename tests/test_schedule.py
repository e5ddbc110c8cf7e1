"""StepSchedule: which steps are logged, measured and measured in detail."""

from act_diagnostics.callbacks.schedule import DETAIL_MIN_STEPS, StepSchedule, automatic_measure_every


def plans(schedule: StepSchedule, steps: int):
    return [schedule.plan(s) for s in range(steps)]


def test_default_interval_measures_the_first_window_densely_then_every_tenth_step():
    p = plans(StepSchedule(50), 150)
    assert [s for s, x in enumerate(p) if x.log] == [0, 49, 99, 149]
    assert [s for s, x in enumerate(p) if x.measure] == sorted({*range(50), *range(50, 150, 10), 99, 149})
    assert [s for s, x in enumerate(p) if x.detail] == [0, 49, 99, 149]


def test_an_explicit_measure_every_has_no_dense_start():
    p = plans(StepSchedule(50, measure_every=5), 60)
    assert [s for s, x in enumerate(p) if x.measure] == sorted({*range(0, 60, 5), 49})


def test_logging_every_step_keeps_detail_sparse():
    p = plans(StepSchedule(1), 31)
    assert all(x.log and x.measure for x in p)
    assert [s for s, x in enumerate(p) if x.detail] == [0, DETAIL_MIN_STEPS, 2 * DETAIL_MIN_STEPS, 3 * DETAIL_MIN_STEPS]


def test_explicit_measure_every_and_no_preflight():
    p = plans(StepSchedule(10, measure_every=1, preflight=False), 20)
    assert [s for s, x in enumerate(p) if x.log] == [9, 19]
    assert all(x.measure for x in p)


def test_same_step_asked_twice_gets_the_same_plan():
    schedule = StepSchedule(1)
    first = schedule.plan(0)
    assert first.detail and schedule.plan(0) == first  # accumulation: several batches per step


def test_automatic_measure_every():
    assert [automatic_measure_every(i) for i in (1, 4, 5, 50, 100)] == [1, 1, 1, 10, 20]


def test_a_requested_detail_makes_the_next_log_step_a_detail_step():
    schedule = StepSchedule(1)
    assert [schedule.plan(s).detail for s in range(3)] == [True, False, False]
    schedule.request_detail()  # e.g. activation-spike asked for the spiking sites' histograms
    assert [schedule.plan(s).detail for s in range(3, 6)] == [True, False, False]


def test_a_requested_dense_window_measures_every_step_until_the_next_log_step():
    schedule = StepSchedule(10)
    before = [s for s in range(10, 20) if schedule.plan(s).measure]
    assert before == [10, 12, 14, 16, 18, 19]  # the sparse steady state
    schedule.request_dense()  # asked at log step 19's judgement
    assert all(schedule.plan(s).measure for s in range(20, 30))
    assert [s for s in range(30, 40) if schedule.plan(s).measure] == [30, 32, 34, 36, 38, 39]  # once only


def test_an_explicit_measure_every_ignores_dense_requests():
    schedule = StepSchedule(10, measure_every=5)
    schedule.plan(9)
    schedule.request_dense()
    assert [s for s in range(10, 20) if schedule.plan(s).measure] == [10, 15, 19]
