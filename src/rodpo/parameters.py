"""The one check of a numeric (or yes/no) parameter's type and range, used when a config is built.

Values reach the configs from YAML and from `kedro run --params`, whose parser (OmegaConf) turns
`beta=.nan` into a float NaN but `beta=nan` or `k=big` into strings. Every such value is refused
here with the parameter's full name (`rodpo.dpo.beta`, `warmup.lr`) and the value, instead of
failing later inside torch or in a comparison between a string and a number.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Number:
    """What one field accepts: `kind` int, float (an int is a float too) or bool; bounds are inclusive
    (`at_least`, `at_most`) or strict (`above`); `optional`: None is allowed; `why` ends the error."""

    kind: type = float
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    optional: bool = False
    why: str = ""


def check_number(parameter: str, value: Any, rule: Number) -> None:
    """Raise ValueError naming `parameter` and `value` unless `value` fits `rule`."""
    if value is None and rule.optional:
        return
    if rule.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{parameter}={value!r}: expected true or false, got {type(value).__name__}.")
        return
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    is_number = is_int or (isinstance(value, numbers.Real) and not isinstance(value, bool))
    if not is_number or (rule.kind is int and not is_int):
        expected = "an integer" if rule.kind is int else "a finite number"
        hint = " (write a whole number, without a decimal point)" if is_number else _spelled_number(value)
        raise ValueError(f"{parameter}={value!r}: expected {expected}, got {type(value).__name__}{hint}.")
    if not math.isfinite(value):
        raise ValueError(f"{parameter}={value}: must be a finite number (NaN and infinity are refused)"
                         f"{'; ' + rule.why if rule.why else ''}.")
    for bound, sign, fails in ((rule.at_least, ">=", lambda b: value < b), (rule.above, ">", lambda b: value <= b),
                               (rule.at_most, "<=", lambda b: value > b)):
        if bound is not None and fails(bound):
            raise ValueError(f"{parameter}={value}: must be {sign} {bound}{'; ' + rule.why if rule.why else ''}.")


def check_numbers(prefix: str, config: Any, rules: dict[str, Number]) -> None:
    """`check_number` on each field of `config` named in `rules`, as `<prefix>.<field>`."""
    for name, rule in rules.items():
        check_number(f"{prefix}.{name}", getattr(config, name), rule)


def _spelled_number(value: Any) -> str:
    """For a string that spells a number ('nan', '1e-3'), say what to write instead."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return " (NaN and infinity are refused)"
    return " (a quoted number: write it without quotes)"
