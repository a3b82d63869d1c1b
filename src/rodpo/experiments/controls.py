"""The controls a study tests each DPO row against, each named for what it is, so "DPO helped" can
be told apart from "trained longer". Each is stage 2 from the row's own warm-up with the row's
stage-2 budget (epochs, patience, best epoch kept, epoch 0 included):
  lambda0           "λ = 0 control (CE, no dropout)": the row's stage 2 with the preference term off;
                    every other ``rodpo.dpo.*`` at its base value (with λ = 0 it does not change the
                    weights); dropout off and the stage-2 optimizer, as the treatment.
  continued_warmup  "continued warm-up (CE, dropout)": the warm-up's own loss, dropout on, and the
                    warm-up's lr / weight_decay / batch_size / grad_clip.
A row may also name other rows of its study (``controls: {name: row label}``), e.g. DPO over the
same M losers as S-DPO.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rodpo.training.config import TrainConfig

LAMBDA_ZERO = "lambda0"
CONTINUED_WARMUP = "continued_warmup"
# What each control sets on top of its row's non-preference overrides:
#   lambda0           the preference term off; dropout off and the stage-2 optimizer, as the treatment
#   continued_warmup  the warm-up's own loss with dropout on, and the warm-up's optimizer (WARMUP_OPTIMIZER)
CONTROL_OVERRIDES = {
    LAMBDA_ZERO: {"rodpo.dpo.lambda_dpo": 0.0},
    CONTINUED_WARMUP: {"rodpo.dpo.lambda_dpo": 0.0, "rodpo.dpo.policy_dropout_in_dpo": True},
}
WARMUP_OPTIMIZER = ("lr", "weight_decay", "batch_size", "grad_clip")  # the continued warm-up takes warmup.*
CONTROL_LABELS = {LAMBDA_ZERO: "λ = 0 control (CE, no dropout)", CONTINUED_WARMUP: "continued warm-up (CE, dropout)"}
CONTROL_OPTIONS = {LAMBDA_ZERO: "lambda_zero_control", CONTINUED_WARMUP: "continued_warmup_control"}  # <preset>.*
CONTROL_PREFIX = "control_"


def enabled_controls(design: Mapping[str, Any]) -> list[str]:
    """The control kinds a preset trains (`<preset>.lambda_zero_control`, `.continued_warmup_control`)."""
    enabled = []
    for kind, option in CONTROL_OPTIONS.items():
        value = design.get(option, True)
        if not isinstance(value, bool):
            raise ValueError(f"experiments.{option}: expected true or false, got {value!r}.")
        if value:
            enabled.append(kind)
    return enabled


def control_overrides(kind: str, warmup: TrainConfig) -> dict[str, Any]:
    """The dotted overrides a control of `kind` sets, for a row whose warm-up trained with `warmup`."""
    overrides = dict(CONTROL_OVERRIDES[kind])
    if kind == CONTINUED_WARMUP:
        overrides.update({f"rodpo.{name}": getattr(warmup, name) for name in WARMUP_OPTIMIZER})
    return overrides


def check_row_controls(controls: Any, where: str) -> dict[str, str]:
    """`controls: {name: row label}` of a row: other rows of the study it is to be tested against."""
    if controls is None:
        return {}
    if not isinstance(controls, Mapping):
        raise ValueError(f"{where}: expected a mapping of control names to row labels, e.g. "
                         f"{{dpo_same_losers: 'DPO, M = 4, top-K uniform'}}, got {controls!r}.")
    for name in controls:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)) or name in CONTROL_OVERRIDES:
            raise ValueError(f"{where}: control name {name!r} must be lower_snake_case and not one of the automatic "
                             f"controls {sorted(CONTROL_OVERRIDES)}.")
    return {str(name): str(label) for name, label in controls.items()}


def resolve_row_controls(entries: list[dict[str, Any]], settings: list[str], where: str) -> list[dict[str, str]]:
    """Per row, its `controls:` resolved from row labels to the settings of those rows."""
    setting_of: dict[str, str] = {}
    repeated = set()
    for entry, setting in zip(entries, settings):
        if entry["label"] in setting_of:
            repeated.add(entry["label"])
        setting_of[entry["label"]] = setting
    resolved = []
    for index, entry in enumerate(entries):
        controls = {}
        for name, label in entry.get("controls", {}).items():
            parameter = f"{where}.rows[{index}].controls.{name}"
            if label not in setting_of:
                raise ValueError(f"{parameter}: no row labelled {label!r} in this study; use one of "
                                 f"{sorted(setting_of)}.")
            if label in repeated:
                raise ValueError(f"{parameter}: several rows are labelled {label!r}; give them distinct labels.")
            if label == entry["label"]:
                raise ValueError(f"{parameter}: a row cannot be its own control; name another row.")
            controls[name] = setting_of[label]
        resolved.append(controls)
    return resolved
