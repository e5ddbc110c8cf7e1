"""Every corpus program, buggy and fixed: the oracle confirms the fault, the callback must name it.

How to add a program: see this folder's conftest.py.
"""

from __future__ import annotations

import programs_categorical
import programs_hidden
import programs_linear
import programs_logits
import programs_multilabel
import programs_ranges
import programs_scale
import programs_single_unit
import pytest
import torch
from corpus_kit import SERIOUS, Program

pytestmark = pytest.mark.corpus

GROUPS = (
    programs_single_unit,
    programs_categorical,
    programs_logits,
    programs_multilabel,
    programs_ranges,
    programs_linear,
    programs_scale,
    programs_hidden,
)
PROGRAMS: list[Program] = [program for group in GROUPS for program in group.PROGRAMS]


def _params(with_xfail: bool) -> list:
    params = []
    for program in PROGRAMS:
        for variant in ("buggy", "fixed"):
            reason = program.buggy_xfail if variant == "buggy" else program.fixed_xfail
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if with_xfail and reason else []
            params.append(pytest.param(program, variant, id=f"{program.name}-{variant}", marks=marks))
    return params


def test_names_are_unique():
    names = [p.name for p in PROGRAMS]
    assert len(names) == len(set(names)) and len(PROGRAMS) >= 20


@pytest.mark.filterwarnings("ignore:Implicit dimension choice for softmax")
@pytest.mark.parametrize("program,variant", _params(with_xfail=False))
def test_oracle(program: Program, variant: str) -> None:
    """Plain torch: the fault is in the buggy variant and not in the fixed one; a fault the fix
    knowingly left in place is confirmed in the fixed variant too."""
    buggy = variant == "buggy"
    torch.manual_seed(0)
    assert program.oracle(program.build(buggy)) is buggy, f"{program.name}: the oracle disagrees with the {variant} variant"
    if not buggy:
        for rule, residual_oracle in program.residual.items():
            torch.manual_seed(0)
            assert residual_oracle(program.build(False)), f"{program.name}: the residual {rule} fault is not there"


@pytest.mark.parametrize("program,variant", _params(with_xfail=True))
def test_diagnosis(program: Program, variant: str, diagnose) -> None:
    """The callback names the fault in the buggy variant and stays quiet on the fixed one."""
    buggy = variant == "buggy"
    torch.manual_seed(0)
    findings = diagnose(program.build(buggy), program.steps, csv_logger=program.csv_logger)
    serious = [f for f in findings if f.severity in SERIOUS]
    seen = sorted((f.rule, f.site, f.severity) for f in findings)
    if buggy:
        hits = [f for f in serious if f.rule in program.rules and (program.site is None or f.site == program.site)]
        where = f" at {program.site!r}" if program.site else ""
        assert hits, f"{program.name} ({program.story}): no {program.rules[0]} warning{where}; findings: {seen}"
    else:
        unexpected = [f for f in serious if f.rule not in program.residual]
        assert not unexpected, f"{program.name} ({program.story}), fixed: unexpected findings: {seen}"
