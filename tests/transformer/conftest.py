"""Transformer and mixture-of-experts health (issue 19): no test may leave a tracer on torch's stack."""

import pytest


@pytest.fixture(autouse=True)
def _no_function_mode_leak(function_mode_stack):
    yield
    stack = function_mode_stack()
    assert not stack, f"TorchFunctionMode left on the stack: {stack}"
