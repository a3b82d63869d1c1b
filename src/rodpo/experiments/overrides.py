"""A study's parameter overrides: dotted paths (``rodpo.dpo.k``, ``model.moe_mode``) checked against
the config dataclasses, applied to copies of the parameter sections, and compared between settings."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from rodpo.model.assembly import DATA_FIELDS
from rodpo.model.config import ModelConfig
from rodpo.training.config import DPOConfig, TrainConfig

SECTIONS = ("model", "warmup", "rodpo")


def section_dict(value: Any) -> dict[str, Any]:
    """A parameter block as a plain dict, whether Kedro passed a dict or built the dataclass."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    raise TypeError(f"expected a parameter mapping or dataclass, got {type(value).__name__}.")


def _allowed_keys(section: str) -> dict[str, Any]:
    """Leaf paths (inside a section) a variant may override, mapped to their dataclass default."""
    if section == "model":
        return {f.name: _default(f) for f in dataclasses.fields(ModelConfig) if f.name not in DATA_FIELDS}
    keys = {f.name: _default(f) for f in dataclasses.fields(TrainConfig) if f.name != "dpo"}
    keys.update({f"dpo.{f.name}": _default(f) for f in dataclasses.fields(DPOConfig)})
    return keys


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def check_override_path(path: str, *, where: str, allow_seed: bool = False) -> tuple[str, str]:
    """Split 'rodpo.dpo.k' into ('rodpo', 'dpo.k'); errors name the path, the problem and the fix."""
    section, _, key = path.partition(".")
    if section not in SECTIONS or not key:
        raise ValueError(f"{where}: override {path!r} must start with one of {SECTIONS}, e.g. "
                         "'rodpo.dpo.k' or 'model.moe_mode'.")
    allowed = _allowed_keys(section)
    if key not in allowed:
        raise ValueError(f"{where}: override {path!r}: {section} has no setting {key!r}; "
                         f"use one of {sorted(allowed)}.")
    if key == "stage":
        raise ValueError(f"{where}: override {path!r}: the stage is fixed by the pipeline; use "
                         "`warmup_only: true` on a row to evaluate a warm-up model.")
    if key == "seed" and not allow_seed:
        raise ValueError(f"{where}: override {path!r}: seeds come from `seeds:` of the preset.")
    if section == "warmup" and key.startswith("dpo."):
        raise ValueError(f"{where}: override {path!r} has no effect in the warm-up stage; use 'rodpo.{key}'.")
    return section, key


def apply_overrides(sections: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Any],
                    *, where: str = "overrides") -> dict[str, dict[str, Any]]:
    """Copy of the parameter sections with dotted overrides set (``{'rodpo.dpo.k': 10}``)."""
    out = {name: section_dict(values) for name, values in sections.items()}
    for path, value in overrides.items():
        section, key = check_override_path(path, where=where, allow_seed=True)
        if section not in out:
            raise ValueError(f"{where}: override {path!r} does not apply to this stage (it sets "
                             f"{sorted(out)} only).")
        target = out[section]
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value
    return out


def normalised_sections(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every field filled with its default, so equal settings compare equal however they are written."""
    out = {}
    for section, values in sections.items():
        if section == "model":
            model = {**_allowed_keys("model"), **values}
            model["modalities"] = list(model["modalities"])
            out[section] = model
        else:
            out[section] = TrainConfig(**values).to_dict()
    return out


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def section_difference(base: Mapping[str, Mapping[str, Any]], other: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Dotted paths whose value in ``other`` differs from ``base``, sorted."""
    base_flat = {f"{s}.{k}": v for s in base for k, v in _flatten(base[s]).items()}
    other_flat = {f"{s}.{k}": v for s in other for k, v in _flatten(other[s]).items()}
    return {path: other_flat[path] for path in sorted(other_flat) if other_flat[path] != base_flat.get(path)}
