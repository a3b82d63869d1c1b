"""From a study design (``parameters_experiments.yml``) to the distinct training runs it needs.

A *variant* is the base parameters (``params:model`` / ``params:warmup`` / ``params:rodpo``) plus a
few overrides written as dotted paths: ``{rodpo.dpo.k: 10}``, ``{model.moe_mode: mlp}``. Variants
with the same effective parameters are one *setting*, trained once per seed and shared by every
study row that names it (Top-K sampling in Table 2 = the full model in Table 3 = K=50 = beta=1.0
in Figure 3). A DPO setting starts from, and is referenced to, the warm-up of its model and
warm-up parameters, so DPO-only variants share one warm-up per seed and an architecture variant
(w/o Sparse MoE) gets its own.

Every DPO row also gets *controls* (``Row.controls``: kind -> setting; ``rodpo.experiments.controls``),
stage 2 from its warm-up with its stage-2 budget, shared by the rows of one warm-up: the λ = 0
control (also ``Row.control``) and the continued warm-up; a row may name other rows as controls.
A setting is named by how it differs from the base: ``rodpo`` (the base, the paper's RoDPO),
``rodpo_k10``, ``warmup_moe_mode_mlp``; a control by its kind and how else it differs:
``control_lambda0``, ``control_continued_warmup_moe_mode_mlp``; a run appends its seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from rodpo.experiments.controls import (CONTROL_LABELS, CONTROL_PREFIX, LAMBDA_ZERO, check_row_controls,
                                        control_overrides, enabled_controls, resolve_row_controls)
from rodpo.experiments.overrides import (
    SECTIONS,
    apply_overrides,
    check_override_path,
    normalised_sections,
    section_difference,
)
from rodpo.metrics import METRIC_NAMES
from rodpo.training.config import TrainConfig

STAGE_SECTIONS = {"warmup": ("model", "warmup"), "dpo": ("rodpo",)}
BASE_DPO = "rodpo"     # name of the base DPO setting: the reference every study tests against
BASE_WARMUP = "warmup"
MAX_NAME_CHARS = 48    # longer setting names are cut and get a hash suffix
NAME_HASH_CHARS = 8


@dataclass(frozen=True)
class Setting:
    """Effective parameters shared by the runs of all seeds: ``overrides`` relative to the base."""

    name: str
    stage: str                      # "warmup" | "dpo"
    overrides: dict[str, Any]       # dotted paths, only this stage's sections
    warmup: str | None = None       # the warm-up setting a DPO setting starts from
    difference: dict[str, Any] = field(default_factory=dict)  # every way it differs from the base

    def run(self, seed: int) -> str:
        return f"{self.name}_s{seed}"


@dataclass(frozen=True)
class Row:
    """One line of a table or one point of a sweep."""

    label: str
    setting: str                    # the setting evaluated (a warm-up setting when warmup_only)
    warmup: str                     # the warm-up setting it started from (itself when warmup_only)
    warmup_only: bool = False
    sweep: str | None = None        # sweeps: the swept parameter's label ("K") and value
    value: Any = None
    control: str | None = None      # the λ = 0 control (= controls["lambda0"]); None for warm-up rows
    controls: dict[str, str] = field(default_factory=dict)  # kind -> setting: lambda0, continued_warmup, named rows


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    kind: str                       # "rows" (a table, bar chart) | "sweeps" (line panels)
    rows: tuple[Row, ...]
    seeds: tuple[int, ...]
    reference: str = BASE_DPO
    reference_warmup: str = BASE_WARMUP
    reference_control: str | None = None  # the reference's λ = 0 control (= reference_controls["lambda0"])
    reference_controls: dict[str, str] = field(default_factory=dict)
    differences: dict[str, dict[str, Any]] = field(default_factory=dict)  # setting -> how it differs from the base

    def settings(self) -> list[str]:
        """Every setting the study reads: its rows, their warm-ups and the reference, in order."""
        names = [self.reference, self.reference_warmup, self.reference_control, *self.reference_controls.values()]
        for row in self.rows:
            names += [row.setting, row.warmup, row.control, *row.controls.values()]
        return [name for name in dict.fromkeys(names) if name is not None]

    def runs(self) -> list[str]:
        return [f"{setting}_s{seed}" for setting in self.settings() for seed in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Study:
        values = dict(values)
        values["rows"] = tuple(Row(**row) for row in values["rows"])
        values["seeds"] = tuple(values["seeds"])
        return cls(**values)


@dataclass(frozen=True)
class ExperimentPlan:
    seeds: tuple[int, ...]
    settings: dict[str, Setting]
    studies: dict[str, Study]
    base_overrides: dict[str, Any] = field(default_factory=dict)  # `overrides` of the preset, every run

    def runs(self) -> dict[str, dict[str, Any]]:
        """Run name -> the overrides that rebuild it from the base parameters (warm-ups first)."""
        runs = {}
        for stage in ("warmup", "dpo"):
            for setting in self.settings.values():
                if setting.stage != stage:
                    continue
                sections = STAGE_SECTIONS[stage]
                base = {k: v for k, v in self.base_overrides.items() if k.split(".")[0] in sections}
                seed_path = f"{'warmup' if stage == 'warmup' else 'rodpo'}.seed"
                for seed in self.seeds:
                    if any(seed in study.seeds and setting.name in study.settings() for study in self.studies.values()):
                        runs[setting.run(seed)] = {**base, **setting.overrides, seed_path: seed}
        return runs

    def warmup_run(self, run: str) -> str:
        """The warm-up run a DPO run starts from (same seed)."""
        setting, seed = self.split_run(run)
        return self.settings[self.settings[setting].warmup].run(seed)

    def split_run(self, run: str) -> tuple[str, int]:
        setting, _, seed = run.rpartition("_s")
        if setting not in self.settings:
            raise KeyError(f"run {run!r}: no setting {setting!r} in this plan.")
        return setting, int(seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seeds": list(self.seeds),
            "base_overrides": self.base_overrides,
            "settings": {name: dataclasses.asdict(s) for name, s in self.settings.items()},
            "studies": {name: s.to_dict() for name, s in self.studies.items()},
            "runs": self.runs(),
        }


# --------------------------------------------------------------------------------- names
def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "_".join(_slug(v) for v in value)
    text = str(value).lower().replace(".", "p").replace("-", "m")
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def _token(path: str, value: Any) -> str:
    section, _, key = path.partition(".")
    key = key.removeprefix("dpo.").replace(".", "_")
    if section == "warmup":
        key = f"warmup_{key}"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f"{key}{_slug(value)}" if is_number else f"{key}_{_slug(value)}"


def _setting_name(prefix: str, difference: Mapping[str, Any]) -> str:
    name = "_".join([prefix, *(_token(p, v) for p, v in difference.items())])
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(json.dumps(difference, sort_keys=True, default=str).encode()).hexdigest()
        name = f"{name[:MAX_NAME_CHARS - NAME_HASH_CHARS - 1]}_{digest[:NAME_HASH_CHARS]}"
    return name


# ---------------------------------------------------------------------------------- plan
def metric_cutoffs(metrics: Any) -> list[int]:
    """Cut-offs of metrics like ['ndcg@5', 'mrr@5'] (the studied ones); errors name the bad entry."""
    if not metrics or isinstance(metrics, str):
        raise ValueError(f"experiments.metrics: expected a list such as [ndcg@5, mrr@5], got {metrics!r}.")
    cutoffs = set()
    for metric in metrics:
        name, _, cutoff = str(metric).partition("@")
        if name not in METRIC_NAMES or not cutoff.isdigit() or int(cutoff) < 1:
            raise ValueError(f"experiments.metrics: {metric!r} is not like 'ndcg@5', 'mrr@5' or 'hit@10'.")
        cutoffs.add(int(cutoff))
    return sorted(cutoffs)


def _check_overrides(overrides: Any, where: str) -> dict[str, Any]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}: expected a mapping of dotted paths to values, e.g. "
                         f"{{rodpo.dpo.k: 10}}, got {overrides!r}.")
    trajectory_free = set(TrainConfig().to_dict()) - set(TrainConfig(stage="dpo").run_key_fields())
    for path in overrides:
        section, key = check_override_path(path, where=where)
        if section != "model" and key in trajectory_free:
            raise ValueError(
                f"{where}: override {path!r}: {key} is not part of a training run's checkpoint key "
                "(runs resume across its values), so variants may not differ in it; set it for every "
                "run in the preset's `overrides`."
            )
    return dict(overrides)


def _study_rows(name: str, study: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(kind, [{label, overrides, warmup_only, sweep, value}]) from `rows:` or `sweeps:`."""
    where = f"experiments.studies.{name}"
    if ("rows" in study) == ("sweeps" in study):
        raise ValueError(f"{where}: give either `rows:` (a table) or `sweeps:` (line panels), not "
                         f"{'both' if 'rows' in study else 'neither'}.")
    entries = []
    if "rows" in study:
        for index, row in enumerate(study["rows"]):
            row_where = f"{where}.rows[{index}]"
            unknown = set(row) - {"label", "overrides", "warmup_only", "controls"}
            if "label" not in row or unknown:
                raise ValueError(f"{row_where}: expected {{label, overrides, warmup_only, controls}}, got keys "
                                 f"{sorted(row)}.")
            entries.append({"label": str(row["label"]), "warmup_only": bool(row.get("warmup_only", False)),
                            "overrides": _check_overrides(row.get("overrides"), row_where),
                            "controls": check_row_controls(row.get("controls"), f"{row_where}.controls")})
        return "rows", entries
    for index, sweep in enumerate(study["sweeps"]):
        sweep_where = f"{where}.sweeps[{index}]"
        if set(sweep) != {"label", "path", "values"} or not sweep["values"]:
            raise ValueError(f"{sweep_where}: expected {{label, path, values: [at least one]}}, got {dict(sweep)}.")
        for value in sweep["values"]:
            entries.append({"label": f"{sweep['label']}={value}", "warmup_only": False, "sweep": str(sweep["label"]),
                            "value": value, "overrides": _check_overrides({sweep["path"]: value}, sweep_where)})
    return "sweeps", entries


def _study_seeds(name: str, study: Mapping[str, Any], seeds: tuple[int, ...]) -> tuple[int, ...]:
    """A study's own `seeds` (default: the preset's), narrowed to the preset's: the preset's `seeds` are
    what this run trains (a per-process environment may list one), a study's are what it reports."""
    own = study.get("seeds")
    if own is None:
        return seeds
    if not own or len(set(own)) != len(own) or not all(isinstance(s, int) and not isinstance(s, bool) for s in own):
        raise ValueError(f"experiments.studies.{name}.seeds: expected a list of distinct integers, got {own!r}.")
    return tuple(seed for seed in seeds if seed in own)


def plan_experiments(design: Mapping[str, Any], base: Mapping[str, Any]) -> ExperimentPlan:
    """Expand a preset (``seeds``, ``overrides``, ``studies``) over the base parameter sections.

    ``base`` maps "model", "warmup", "rodpo" to their parameter blocks (dicts or the dataclasses
    Kedro builds from them). Deterministic: the same design and base give the same names.
    """
    seeds = tuple(design.get("seeds") or ())
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"experiments.seeds: expected a list of distinct integers, got {list(seeds)}.")
    metric_cutoffs(design.get("metrics"))
    studies = design.get("studies") or {}
    if not studies:
        raise ValueError("experiments.studies: no study defined; add e.g. `negative_sampling: {rows: [...]}`.")
    missing = [s for s in SECTIONS if s not in base]
    if missing:
        raise ValueError(f"base parameters: missing {missing}; load parameters_warmup.yml and parameters_rodpo.yml.")
    preset_overrides = dict(design.get("overrides") or {})
    for path in preset_overrides:
        check_override_path(path, where="experiments.overrides")
    base_sections = apply_overrides({s: base[s] for s in SECTIONS}, preset_overrides,
                                    where="experiments.overrides")
    normal_base = normalised_sections(base_sections)

    settings: dict[str, Setting] = {}
    identities: dict[str, str] = {}  # identity json -> setting name

    def register(stage: str, difference: dict[str, Any], warmup: str | None, prefix: str,
                 named: Mapping[str, Any]) -> str:
        identity = json.dumps([stage, difference], sort_keys=True, default=str)
        if identity in identities:
            return identities[identity]
        name = _setting_name(prefix, named)
        if name in settings:  # two different settings with one readable name (e.g. 1 and "1")
            name = f"{name}_{hashlib.sha256(identity.encode()).hexdigest()[:NAME_HASH_CHARS]}"
        sections = STAGE_SECTIONS[stage]
        own = {p: v for p, v in difference.items() if p.split(".")[0] in sections}
        settings[name] = Setting(name=name, stage=stage, overrides=own, warmup=warmup, difference=difference)
        identities[identity] = name
        return name

    def add_variant(overrides: Mapping[str, Any], warmup_only: bool, where: str, prefix: str = BASE_DPO,
                    said_by_prefix: Collection[str] = ()) -> tuple[str, str]:
        """(setting, its warm-up setting). A DPO setting is named `prefix` plus how it differs from the
        base, except in the paths the prefix already says (a control's own overrides)."""
        effective = normalised_sections(apply_overrides(base_sections, overrides, where=where))
        difference = section_difference(normal_base, effective)
        warmup_difference = {p: v for p, v in difference.items() if p.split(".")[0] != "rodpo"}
        warmup = register("warmup", warmup_difference, None, BASE_WARMUP, warmup_difference)
        if warmup_only:
            if len(warmup_difference) != len(difference):
                raise ValueError(f"{where}: a warmup_only row evaluates the warm-up model, so rodpo.* "
                                 "overrides have no effect; remove them.")
            return warmup, warmup
        named = {p: v for p, v in difference.items() if p not in said_by_prefix}
        return register("dpo", difference, warmup, prefix, named), warmup

    enabled = enabled_controls(design)

    def add_controls(overrides: Mapping[str, Any], where: str) -> dict[str, str]:
        """The enabled controls of a DPO variant: its model / warm-up / stage-2 budget, CE only."""
        kept = {path: value for path, value in overrides.items() if not path.startswith("rodpo.dpo.")}
        warmup = TrainConfig(**apply_overrides(base_sections, kept, where=where)["warmup"])  # the row's own
        controls = {}
        for kind in enabled:
            control = control_overrides(kind, warmup)
            controls[kind] = add_variant({**kept, **control}, False, f"{where} (its {CONTROL_LABELS[kind]})",
                                         prefix=f"{CONTROL_PREFIX}{kind}", said_by_prefix=control)[0]
        return controls

    reference, reference_warmup = add_variant({}, False, "base parameters")
    reference_controls = add_controls({}, "base parameters")
    planned = {}
    for name, study in studies.items():
        study_seeds = _study_seeds(name, study, seeds)
        if not study_seeds:  # e.g. a per-seed process whose seed this study does not report
            continue
        kind, entries = _study_rows(name, study)
        where = f"experiments.studies.{name}"
        variants = [add_variant(entry["overrides"], entry["warmup_only"], where) for entry in entries]
        named = resolve_row_controls(entries, [setting for setting, _ in variants], where)
        rows = []
        for entry, (setting, warmup), row_named in zip(entries, variants, named):
            controls = {} if entry["warmup_only"] else add_controls(entry["overrides"], where)
            rows.append(Row(label=entry["label"], setting=setting, warmup=warmup, warmup_only=entry["warmup_only"],
                            sweep=entry.get("sweep"), value=entry.get("value"), control=controls.get(LAMBDA_ZERO),
                            controls={**controls, **row_named}))
        planned[name] = Study(name=name, title=str(study.get("title", name)), kind=kind, rows=tuple(rows),
                              seeds=study_seeds, reference=reference, reference_warmup=reference_warmup,
                              reference_control=reference_controls.get(LAMBDA_ZERO),
                              reference_controls=reference_controls)
        planned[name] = dataclasses.replace(planned[name], differences={
            setting: settings[setting].difference for setting in planned[name].settings()})
    if not planned:
        raise ValueError(f"experiments.seeds={list(seeds)}: no study reports any of these seeds (see the studies' "
                         "own `seeds:`).")
    return ExperimentPlan(seeds=seeds, settings=settings, studies=planned, base_overrides=preset_overrides)
