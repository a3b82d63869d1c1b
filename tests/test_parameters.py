"""One check of a parameter's type and range: every refusal names the parameter and the value."""

from __future__ import annotations

import numpy as np
import pytest

from rodpo.parameters import Number, check_number


@pytest.mark.parametrize(("value", "rule"), [
    (0.5, Number(above=0)), (1, Number(above=0)), (np.float32(0.5), Number(at_most=1)),
    (3, Number(int, at_least=3)), (np.int64(7), Number(int)), (None, Number(int, optional=True)),
    (False, Number(bool)), (-2.5, Number()),
])
def test_values_that_fit_pass(value, rule):
    check_number("block.field", value, rule)


@pytest.mark.parametrize(("value", "rule", "message"), [
    ("nan", Number(above=0), r"rodpo\.dpo\.beta='nan': expected a finite number, got str \(NaN and infinity"),
    ("big", Number(int), r"rodpo\.dpo\.beta='big': expected an integer, got str\.$"),
    ("0.5", Number(), r"rodpo\.dpo\.beta='0\.5': expected a finite number, got str \(a quoted number"),
    (True, Number(int), r"rodpo\.dpo\.beta=True: expected an integer, got bool"),
    (True, Number(), r"rodpo\.dpo\.beta=True: expected a finite number, got bool"),
    (5.0, Number(int), r"rodpo\.dpo\.beta=5\.0: expected an integer, got float \(write a whole number"),
    (None, Number(), r"rodpo\.dpo\.beta=None: expected a finite number, got NoneType"),
    ("yes", Number(bool), r"rodpo\.dpo\.beta='yes': expected true or false, got str"),
    (float("nan"), Number(above=0), r"rodpo\.dpo\.beta=nan: must be a finite number"),
    (float("-inf"), Number(), r"rodpo\.dpo\.beta=-inf: must be a finite number"),
    (0.0, Number(above=0, why="β <= 0 inverts it"), r"rodpo\.dpo\.beta=0\.0: must be > 0; β <= 0 inverts it\.$"),
    (-1, Number(at_least=0), r"rodpo\.dpo\.beta=-1: must be >= 0\.$"),
    (1.5, Number(at_most=1), r"rodpo\.dpo\.beta=1\.5: must be <= 1\.$"),
])
def test_refusals_name_the_parameter_the_value_and_the_problem(value, rule, message):
    with pytest.raises(ValueError, match=message):
        check_number("rodpo.dpo.beta", value, rule)
