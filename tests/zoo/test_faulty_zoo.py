"""Faulty zoo: each rule's classic fault, injected into at least two zoo architectures, confirmed
by an independent oracle (plain torch), must be flagged (warning or error) with the right rule id."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("timm")
pytest.importorskip("transformers")

from zoo_faults import FAULTS, Fault
from zoo_train import fit, loader

from act_diagnostics.rules import RULE_IDS

ORACLE_BATCHES = 16

# Faults the current rules miss (issue 16). A fix that lands turns the case into an XPASS, which
# fails the run (strict): then delete its line here.
KNOWN_MISSES: dict[str, str] = {
}


def _params() -> list:
    return [pytest.param(f, id=f.id, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_MISSES[f.id])] if f.id in KNOWN_MISSES else [])
            for f in FAULTS]


def test_every_rule_has_faults_in_two_architectures() -> None:
    bases = {rule: {f.case.name for f in FAULTS if f.rule == rule} for rule in RULE_IDS}
    assert {rule: b for rule, b in bases.items() if len(b) < 2} == {}


@pytest.mark.parametrize("fault", _params())
def test_fault_is_confirmed_by_the_oracle_and_flagged(fault: Fault, tmp_path, zoo_timings) -> None:
    case = fault.case
    torch.manual_seed(0)
    net = case.build()
    initial = copy.deepcopy(net)
    run = fit(case, tmp_path, net=net)
    zoo_timings[f"faulty {fault.id}"] = run.seconds

    batches = [tuple(b) for _, b in zip(range(ORACLE_BATCHES), loader(case))]
    forwards = [partial(lambda net, batch: case.loss(net, batch), batch=b) for b in batches]
    confirmed, evidence = fault.oracle(initial, run.net, forwards)
    assert confirmed, f"the oracle does not confirm the fault, so the case proves nothing: {evidence}"

    flagged = [f for f in run.serious() if f.rule == fault.rule]
    assert flagged, f"{fault.rule} not flagged (oracle: {evidence}):\n{run.describe()}"
    if fault.expected_site is not None:
        assert any(f.site == fault.expected_site for f in flagged), f"{fault.rule} flagged elsewhere than {fault.expected_site!r}:\n{run.describe(flagged)}"
