"""Do sampled losers hit false negatives? The paper's Figure 1 claim, measured where the truth is known.

RoDPO draws the losing item y_l uniformly from the policy's top-K, not the argmax, because in
implicit feedback the hardest "negative" is often a positive the data never recorded. On
`rodpo.data.known_preferences` data every user's true utility is known, so the share of sampled
losers that are false negatives can be counted at every DPO step (`FalseNegativeMonitor`). Only
items the user could still choose at that step can be false negatives (the generator never repeats
a choice; `false_negatives_judge`). For each exposure and world seed the study generates a world,
splits it leave-one-out, trains one CE warm-up per training seed and runs stage 2 from it for every
(pool exclusion, objective, strategy, K share), plus a lambda = 0 control (CE only; its draws are
measured, never trained on). Per run: per-epoch false-negative rates and, for the model the trainer
returns, test NDCG@10 against the observed item and against the true preference. Rates and
comparisons are reported over replicates (world x training seed; `false_negatives_inference`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rodpo.data.known_preferences import KnownPreferenceSpec, generate_known_preferences
from rodpo.data.preprocess import build_sequences, leave_one_out_split
from rodpo.experiments.false_negatives_inference import (
    CONTROL,
    DPO,
    OBSERVED_NDCG,
    PARAMS,
    REPORT_K,
    TRUTH_NDCG,
    TRUTH_NDCG_ALL_ITEMS,
    WARMUP,
    check_primary,
    comparisons,
    levels,
    significance,
)
from rodpo.experiments.false_negatives_judge import (
    FalseNegativeJudge,
    FalseNegativeMonitor,
    check_pool_share,
    definitions,
    epoch_rates,
    per_user_rates,
    pool_exclusion_ids,
    training_targets,
    truth_ndcg,
)
from rodpo.metrics import per_user_metrics
from rodpo.model.config import ModelConfig
from rodpo.model.assembly import DATA_FIELDS, build_model
from rodpo.ranking import evaluate_model
from rodpo.sequences import SequenceData, build_sequence_data
from rodpo.training.config import DPOConfig, TrainConfig
from rodpo.training.negatives import NEGATIVE_STRATEGIES
from rodpo.training.objectives import OBJECTIVES
from rodpo.training.trainer import train

# The study's pool-exclusion axis: none = the paper's pool (every item but y_w); earlier_items = also
# leave out the items before y_w in its training window (what the user had interacted with then).
EXCLUSIONS = ("none", "earlier_items")
# The study's model is ID-only (the generated items have no text or images) and plain SASRec-style.
FIXED_MODEL = {"modalities": ["id"], "moe_mode": "none", "temporal": False}
STRATEGY_NAMES = {"topk_uniform": "top-K uniform", "argmax": "argmax (hardest)", "random": "random"}
EXCLUSION_NAMES = {"none": "no exclusion", "earlier_items": "earlier items excluded"}
APPLIED_NAMES = {"none": "nothing", "earlier_items": "the items before y_w in its window",
                 "window_items": "the whole training window, later targets included"}


def _default_generator() -> KnownPreferenceSpec:
    return KnownPreferenceSpec(n_users=2000, n_items=2000)


def _default_model() -> dict[str, Any]:
    return {"hidden_size": 32, "max_seq_len": 20, "n_layers": 2, "n_heads": 2, "inner_size": 64}


def _exclusion_fields(name: str) -> dict[str, Any]:
    """DPOConfig fields of the study's exclusion `name` (none | earlier_items): the one place the
    axis meets the trainer; `applied_exclusion` reports what actually ran."""
    return {"exclude_from_pool": name}


def applied_exclusion(dpo: DPOConfig) -> str:
    """What the trainer's pool leaves out under `dpo` (a `POOL_SEMANTICS` name)."""
    return dpo.exclude_from_pool


def applied_exclusions(params: FalseNegativeStudyParams) -> dict[str, str]:
    """Each of the study's exclusions -> what its runs' pools actually leave out."""
    return {name: applied_exclusion(DPOConfig(**_exclusion_fields(name))) for name in params.exclusions}


def exclusion_label(name: str, applied: str) -> str:
    """The exclusion's name in tables, saying what actually ran when that differs from its name."""
    return EXCLUSION_NAMES[name] if applied == name else f"{EXCLUSION_NAMES[name]} (ran as {APPLIED_NAMES[applied]})"


@dataclass(frozen=True)
class FalseNegativeStudyParams:
    """`params:false_negatives`; `preset` names an entry of `presets` (overrides of these fields) or is None."""

    generator: KnownPreferenceSpec = field(default_factory=_default_generator)  # `exposure`, `seed` are replaced
    exposures: tuple[float, ...] = (0.3, 1.0)
    world_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # one world per (exposure, world seed): the replicates
    strategies: tuple[str, ...] = NEGATIVE_STRATEGIES
    k_shares: tuple[float, ...] = (0.0025, 0.01, 0.05)  # topk_uniform's K = round(share * n_items)
    exclusions: tuple[str, ...] = EXCLUSIONS
    objectives: tuple[str, ...] = ("dpo",)
    seeds: tuple[int, ...] = (2020,)  # training seeds per world
    warmup_epochs: int = 10
    dpo_epochs: int = 2
    lambda_zero_control: bool = True
    control_k_share: float = 0.01  # the control draws (and the monitor judges) topk_uniform losers with this share
    model: dict[str, Any] = field(default_factory=_default_model)
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 3
    beta: float = 1.0
    lambda_dpo: float = 1.0
    n_negatives: int = 1
    top_fraction: float = 0.1
    primary: tuple[str, ...] = ()  # names of `planned_comparisons`, declared before the run
    confidence: float = 0.95
    n_resamples: int = 10_000
    device: str = "cpu"
    preset: str | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.generator, Mapping):
            for name, where in (("exposure", "exposures (one world per exposure)"),
                                ("seed", "world_seeds (one world per seed)")):
                if name in self.generator:
                    raise ValueError(f"{PARAMS}.generator.{name}: set it in {PARAMS}.{where} instead.")
            try:
                object.__setattr__(self, "generator", KnownPreferenceSpec(**self.generator))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{PARAMS}.generator: {error}") from error
        for name in ("exposures", "world_seeds", "strategies", "k_shares", "exclusions", "objectives", "seeds",
                     "primary"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "presets", {name: dict(values) for name, values in self.presets.items()})
        self._check()

    def _check(self) -> None:
        n_items = self.generator.n_items
        checks = [
            ("exposures", bool(self.exposures) and all(0.0 < e <= 1.0 for e in self.exposures),
             "need one or more observation rates, each in (0, 1]"),
            ("world_seeds", bool(self.world_seeds) and len(set(self.world_seeds)) == len(self.world_seeds),
             "need one or more distinct world seeds (3 or more for a test over worlds)"),
            ("strategies", bool(self.strategies) and set(self.strategies) <= set(NEGATIVE_STRATEGIES),
             f"need one or more of {NEGATIVE_STRATEGIES}"),
            ("k_shares", bool(self.k_shares) or "topk_uniform" not in self.strategies,
             "topk_uniform needs at least one K share"),
            ("exclusions", bool(self.exclusions) and len(set(self.exclusions)) == len(self.exclusions)
             and set(self.exclusions) <= set(EXCLUSIONS), f"need one or more distinct of {EXCLUSIONS}"),
            ("objectives", bool(self.objectives) and set(self.objectives) <= set(OBJECTIVES),
             f"need one or more of {sorted(OBJECTIVES)}"),
            ("seeds", bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "need one or more distinct seeds"),
            ("warmup_epochs", self.warmup_epochs >= 1, "the warm-up needs at least one epoch"),
            ("dpo_epochs", self.dpo_epochs >= 1, "stage 2 needs at least one epoch to sample any pair"),
            ("top_fraction", 0.0 < self.top_fraction <= 1.0, "must be in (0, 1], e.g. 0.1 for the true top 10%"),
            ("lambda_dpo", self.lambda_dpo > 0.0, "must be > 0 (the lambda = 0 control is lambda_zero_control)"),
            ("batch_size", self.batch_size >= 1, "must be >= 1 sequence"),
            ("patience", self.patience >= 1, "must be >= 1 evaluation"),
            ("confidence", 0.0 < self.confidence < 1.0, "must be in (0, 1), e.g. 0.95"),
            ("n_resamples", self.n_resamples >= 100, "must be >= 100 bootstrap resamples"),
            ("device", self.device in ("cpu", "cuda", "mps", "auto") or self.device.startswith("cuda:"),
             "use cpu, cuda, cuda:N, mps or auto (the pair monitor needs one process)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{PARAMS}.{name}={getattr(self, name)!r}: {why}.")
        for index, share in enumerate(self.k_shares):
            check_pool_share(share, n_items, f"{PARAMS}.k_shares[{index}]")
        check_pool_share(self.control_k_share, n_items, f"{PARAMS}.control_k_share")
        clashing = set(self.model) & (set(DATA_FIELDS) | set(FIXED_MODEL))
        unknown = set(self.model) - {f.name for f in dataclasses.fields(ModelConfig)}
        if clashing or unknown:
            raise ValueError(f"{PARAMS}.model: {sorted(clashing | unknown)} cannot be set here; the model is ID-only "
                             f"({FIXED_MODEL}) and sized by the data; use ModelConfig fields such as hidden_size.")
        try:
            ModelConfig(n_items=n_items, **{**self.model, **FIXED_MODEL})
            for variant in stage2_variants(self):
                self.dpo_config(variant)
        except ValueError as error:
            raise ValueError(f"{PARAMS}: {error}") from error
        check_primary(self)
        if self.preset is not None and self.preset not in self.presets:
            raise ValueError(f"{PARAMS}.preset={self.preset!r}: not a key of {PARAMS}.presets "
                             f"({sorted(self.presets)}); use one of them or null.")
        known = {f.name for f in dataclasses.fields(self)} - {"preset", "presets"}
        for name, overrides in self.presets.items():
            if set(overrides) - known:
                raise ValueError(f"{PARAMS}.presets.{name}: unknown fields {sorted(set(overrides) - known)}; "
                                 f"expected some of {sorted(known)}.")

    def effective(self) -> FalseNegativeStudyParams:
        """These settings with the chosen preset applied (`generator` and `model` merged key by key)."""
        if self.preset is None:
            return self
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["generator"] = {k: v for k, v in dataclasses.asdict(self.generator).items()
                               if k not in ("exposure", "seed")}
        for name, value in self.presets[self.preset].items():
            values[name] = {**values[name], **value} if name in ("generator", "model") else value
        try:
            return FalseNegativeStudyParams(**{**values, "preset": None, "presets": {}})
        except ValueError as error:
            raise ValueError(f"{PARAMS}.presets.{self.preset}: {error}") from error

    def pool_size(self, share: float) -> int:
        """K of a K share of this study's catalog."""
        return check_pool_share(share, self.generator.n_items, f"{PARAMS}.k_shares")

    def model_params(self) -> dict[str, Any]:
        return {**self.model, **FIXED_MODEL}

    def train_config(self, stage: str, epochs: int, seed: int, dpo: DPOConfig | None = None) -> TrainConfig:
        """No checkpoints: every run trains afresh, so the monitor sees every step."""
        return TrainConfig(stage=stage, epochs=epochs, batch_size=self.batch_size, lr=self.lr, seed=seed,
                           device=self.device, patience=self.patience, progress_bar=False, checkpoint_dir=None,
                           dpo=dpo or DPOConfig())

    def dpo_config(self, variant: Mapping[str, Any]) -> DPOConfig:
        k = variant["k"] if variant["k"] is not None else DPOConfig().k  # argmax and random ignore K
        return DPOConfig(beta=self.beta, k=k, lambda_dpo=variant["lambda_dpo"],
                         negative_strategy=variant["strategy"], objective=variant["objective"],
                         n_negatives=self.n_negatives, **_exclusion_fields(variant["exclusion"]))


def stage2_variants(params: FalseNegativeStudyParams) -> list[dict[str, Any]]:
    """Every stage-2 run from a warm-up: the lambda = 0 control (no exclusion: it trains on CE only,
    so its model is the same under any pool), then (exclusion, objective, strategy, K share)."""
    variants = []
    if params.lambda_zero_control:
        variants.append({"kind": CONTROL, "strategy": "topk_uniform", "k_share": params.control_k_share,
                         "k": params.pool_size(params.control_k_share), "objective": params.objectives[0],
                         "lambda_dpo": 0.0, "exclusion": "none"})
    for exclusion in params.exclusions:
        for objective in params.objectives:
            for strategy in params.strategies:
                for share in (params.k_shares if strategy == "topk_uniform" else (None,)):
                    variants.append({"kind": DPO, "strategy": strategy, "k_share": share,
                                     "k": None if share is None else params.pool_size(share),
                                     "objective": objective, "lambda_dpo": params.lambda_dpo,
                                     "exclusion": exclusion})
    return variants


def variant_label(row: Mapping[str, Any]) -> str:
    if row["kind"] == WARMUP:
        return "Warm-up (CE), π_sft"
    if row["kind"] == CONTROL:
        return f"λ = 0 control (CE only; draws top-K, K={row['k']})"
    name = STRATEGY_NAMES[row["strategy"]]
    return f"{name}, K={row['k']} ({row['k_share']:.2%})" if row["k"] is not None else name


# ----------------------------------------------------------------------------------- one world
def _best_epoch(history: Sequence[Mapping[str, Any]]) -> int:
    """The epoch whose weights `train` returns: the last of the best valid NDCG@10 (epoch 0 never counts)."""
    scored = [(entry["valid_ndcg@10"], entry["epoch"]) for entry in history
              if entry["epoch"] >= 1 and "valid_ndcg@10" in entry]
    return max(scored)[1] if scored else 0


def _evaluated(model, data: SequenceData, judge: FalseNegativeJudge) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the row's metrics, per-user NDCG@10 vectors in test-user order for the tests over replicates)."""
    evaluation = evaluate_model(model, data.test, ks=(5, REPORT_K))
    per_user = {OBSERVED_NDCG: per_user_metrics(evaluation["ranks"], (REPORT_K,))[f"ndcg@{REPORT_K}"],
                TRUTH_NDCG: truth_ndcg(model, data.test, judge, REPORT_K, choosable_only=True),
                TRUTH_NDCG_ALL_ITEMS: truth_ndcg(model, data.test, judge, REPORT_K, choosable_only=False)}
    metrics = {"test": evaluation["metrics"], **{name: float(values.mean()) for name, values in per_user.items()}}
    return metrics, per_user


def run_world(params: FalseNegativeStudyParams, exposure: float,
              world_seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One world: its summary and one row per (training seed, variant), warm-up first. Rows carry
    their per-user vectors under "per_user" (not json: the inference reads them, then they go)."""
    world = generate_known_preferences(replace(params.generator, exposure=exposure, seed=world_seed))
    splits = leave_one_out_split(build_sequences(world.interactions))
    data = build_sequence_data(splits, params.model["max_seq_len"], n_items=params.generator.n_items)
    judge = FalseNegativeJudge(world.truth, world.choices, params.top_fraction)
    users, chosen = training_targets(data)
    applied = applied_exclusions(params)
    summary = {"exposure": exposure, "world_seed": world_seed, "observation_rate": world.observation_rate,
               "n_users": splits.height, "n_interactions": world.interactions.height,
               "n_choices": world.choices.height, "n_train_targets": int(chosen.numel()),
               "random_expectation": {name: judge.random_expectation(users, chosen, pool_exclusion_ids(data, semantics))
                                      for name, semantics in applied.items()}}
    steps_per_epoch = math.ceil(data.train.items.shape[0] / params.batch_size)
    rows = []
    for seed in params.seeds:
        started = time.perf_counter()
        fresh = build_model(data, params.model_params(), seed=seed)
        sft, history = train(fresh, data, params.train_config("warmup", params.warmup_epochs, seed))
        metrics, per_user = _evaluated(sft, data, judge)
        rows.append({"exposure": exposure, "world_seed": world_seed, "seed": seed, "kind": WARMUP, "strategy": None,
                     "k_share": None, "k": None, "objective": None, "lambda_dpo": None, "exclusion": None,
                     "applied_exclusion": None, "epochs": [], "best_epoch": _best_epoch(history), **metrics,
                     "history": history, "seconds": time.perf_counter() - started, "per_user": per_user})
        for variant in stage2_variants(params):
            started = time.perf_counter()
            monitor = FalseNegativeMonitor(judge, steps_per_epoch)
            config = params.train_config("dpo", params.dpo_epochs, seed, params.dpo_config(variant))
            policy, history = train(sft, data, config, pair_monitor=monitor)
            metrics, per_user = _evaluated(policy, data, judge)
            rows.append({"exposure": exposure, "world_seed": world_seed, "seed": seed, **variant,
                         "applied_exclusion": applied_exclusion(config.dpo),
                         "epochs": epoch_rates(monitor.steps, steps_per_epoch), "best_epoch": _best_epoch(history),
                         **metrics, "history": history, "seconds": time.perf_counter() - started,
                         "per_user": {**per_user, **per_user_rates(monitor.last_epoch_per_user)}})
    return summary, rows


def run_false_negative_study(params: FalseNegativeStudyParams) -> dict[str, Any]:
    """Every world's summary and rows, the rates with CIs over replicates and the comparisons, with
    the settings that produced them (json-ready)."""
    params = params.effective()
    started = time.perf_counter()
    worlds, rows = [], []
    for exposure in params.exposures:
        for world_seed in params.world_seeds:
            summary, world_rows = run_world(params, exposure, world_seed)
            worlds.append(summary)
            rows.extend(world_rows)
    rates = levels(rows, confidence=params.confidence, n_resamples=params.n_resamples)
    tests = comparisons(rows, params)
    for row in rows:
        del row["per_user"]
    settings = dataclasses.asdict(params)
    for name in ("preset", "presets"):
        settings.pop(name)
    return {"title": "False negatives among sampled losers (paper Figure 1), on data with known preferences",
            "definitions": definitions(params.top_fraction), "settings": settings,
            "exclusions": {name: {"applied": applied, "label": exclusion_label(name, applied)}
                           for name, applied in applied_exclusions(params).items()},
            "k_values": {f"{share:g}": params.pool_size(share) for share in params.k_shares},
            "significance": significance(params), "worlds": worlds, "rows": rows, "levels": rates,
            "comparisons": tests, "seconds": time.perf_counter() - started}
