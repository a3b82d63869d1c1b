"""Do sampled losers hit false negatives? The paper's Figure 1 claim, measured where the truth is known.

RoDPO draws the losing item y_l uniformly from the policy's top-K, not the argmax, because in
implicit feedback the hardest "negative" is often a positive the data never recorded. On
`rodpo.data.known_preferences` data every user's true utility is known, so the share of sampled
losers the user truly prefers can be counted at every DPO step (`FalseNegativeMonitor`, the
trainer's pair monitor). For each exposure (observation rate) the study generates a world, splits
it leave-one-out, trains one CE warm-up per seed and runs stage 2 from it for every (strategy, K,
objective), plus a lambda = 0 control (stage 2 with CE only, whose draws are measured but never
trained on). Per variant: the per-epoch false-negative rate of the losers under four definitions
(`FN_DEFINITIONS`) and, for the model the trainer returns (best valid epoch), test NDCG@10 against
the held-out observed item and against the true preference.

The true context of a pair is (user, the item chosen just before y_w), observed or not: the trainer
only knows the last *observed* item, so the monitor looks the true one up in the generator's
`choices` (a (user, item) pair is chosen at most once).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from rodpo.data.known_preferences import (
    ABOVE_CHOSEN,
    GroundTruth,
    KnownPreferenceSpec,
    false_negative_rate,
    generate_known_preferences,
    true_preference_ranks,
)
from rodpo.data.preprocess import ITEM, USER, build_sequences, leave_one_out_split
from rodpo.ranking import evaluate_model
from rodpo.model.config import ModelConfig
from rodpo.model.assembly import DATA_FIELDS, build_model
from rodpo.sequences import EvalSequences, SequenceData, build_sequence_data
from rodpo.training.config import DPOConfig, TrainConfig
from rodpo.training.negatives import NEGATIVE_STRATEGIES
from rodpo.training.objectives import OBJECTIVES
from rodpo.training.trainer import train

PARAMS = "false_negatives"  # the parameter block (conf/base/parameters_false_negatives.yml), named in errors
# Four readings of "the sampled loser is truly a positive", in the true context (user, previous choice).
ABOVE = "above_chosen"        # its true utility is above the chosen y_w's
TRUE_TOP = "true_top"         # it is in the user's true top ceil(top_fraction * n_items)
UNOBSERVED = "unobserved_choice"  # the user chose it at some step, but that choice was never observed
OBSERVED = "observed_choice"  # the user's own observed item of another step (in the history, or a later target)
FN_DEFINITIONS = (ABOVE, TRUE_TOP, UNOBSERVED, OBSERVED)
PAIRS = "pairs"
REPORT_K = 10                 # NDCG@10 in the table, against the observed item and against the truth
EVAL_KS = (5, REPORT_K)
WARMUP, CONTROL, DPO = "warmup", "control", "dpo"  # row kinds
# The study's model is ID-only (the generated items have no text or images) and plain SASRec-style.
FIXED_MODEL = {"modalities": ["id"], "moe_mode": "none", "temporal": False}
SCORE_BATCH = 1024            # test users per dense score_next call (the catalog is small)
STRATEGY_NAMES = {"topk_uniform": "top-K uniform", "argmax": "argmax (hardest)", "random": "random"}


def _default_generator() -> KnownPreferenceSpec:
    return KnownPreferenceSpec(n_users=600, n_items=200)


def _default_model() -> dict[str, Any]:
    return {"hidden_size": 32, "max_seq_len": 20, "n_layers": 2, "n_heads": 2, "inner_size": 64}


@dataclass(frozen=True)
class FalseNegativeStudyParams:
    """`params:false_negatives`; `preset` names an entry of `presets` (overrides of these fields) or is None."""

    generator: KnownPreferenceSpec = field(default_factory=_default_generator)  # its `exposure` is replaced
    exposures: tuple[float, ...] = (0.3, 0.6, 1.0)
    strategies: tuple[str, ...] = NEGATIVE_STRATEGIES
    ks: tuple[int, ...] = (5, 20, 50)  # pool sizes of topk_uniform (argmax and random have none)
    objectives: tuple[str, ...] = ("dpo",)
    seeds: tuple[int, ...] = (2020, 2021, 2022)
    warmup_epochs: int = 12
    dpo_epochs: int = 3
    lambda_zero_control: bool = True
    control_k: int = 20  # the control draws (and the monitor scores) topk_uniform losers with this K
    model: dict[str, Any] = field(default_factory=_default_model)
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10
    beta: float = 1.0
    lambda_dpo: float = 1.0
    n_negatives: int = 1
    top_fraction: float = 0.1
    device: str = "cpu"
    preset: str | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.generator, Mapping):
            if "exposure" in self.generator:
                raise ValueError(f"{PARAMS}.generator.exposure: set the observation rates in "
                                 f"{PARAMS}.exposures instead (one world per exposure).")
            try:
                object.__setattr__(self, "generator", KnownPreferenceSpec(**self.generator))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{PARAMS}.generator: {error}") from error
        for name in ("exposures", "strategies", "ks", "objectives", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "model", dict(self.model))
        object.__setattr__(self, "presets", {name: dict(values) for name, values in self.presets.items()})
        self._check()

    def _check(self) -> None:
        n_items = self.generator.n_items
        checks = [
            ("exposures", bool(self.exposures) and all(0.0 < e <= 1.0 for e in self.exposures),
             "need one or more observation rates, each in (0, 1]"),
            ("strategies", bool(self.strategies) and set(self.strategies) <= set(NEGATIVE_STRATEGIES),
             f"need one or more of {NEGATIVE_STRATEGIES}"),
            ("ks", all(isinstance(k, int) and 1 <= k < n_items for k in self.ks),
             f"each K must be an integer in 1..n_items - 1 = {n_items - 1}"),
            ("ks", bool(self.ks) or "topk_uniform" not in self.strategies, "topk_uniform needs at least one K"),
            ("objectives", bool(self.objectives) and set(self.objectives) <= set(OBJECTIVES),
             f"need one or more of {sorted(OBJECTIVES)}"),
            ("seeds", bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), "need one or more distinct seeds"),
            ("warmup_epochs", self.warmup_epochs >= 1, "the warm-up needs at least one epoch"),
            ("dpo_epochs", self.dpo_epochs >= 1, "stage 2 needs at least one epoch to sample any pair"),
            ("control_k", 1 <= self.control_k < n_items, f"must be in 1..n_items - 1 = {n_items - 1}"),
            ("top_fraction", 0.0 < self.top_fraction <= 1.0, "must be in (0, 1], e.g. 0.1 for the true top 10%"),
            ("lambda_dpo", self.lambda_dpo > 0.0, "must be > 0 (the lambda = 0 control is lambda_zero_control)"),
            ("batch_size", self.batch_size >= 1, "must be >= 1 sequence"),
            ("patience", self.patience >= 1, "must be >= 1 evaluation"),
            ("device", self.device in ("cpu", "cuda", "mps", "auto") or self.device.startswith("cuda:"),
             "use cpu, cuda, cuda:N, mps or auto (the pair monitor needs one process)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{PARAMS}.{name}={getattr(self, name)!r}: {why}.")
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
        values["generator"] = {k: v for k, v in dataclasses.asdict(self.generator).items() if k != "exposure"}
        for name, value in self.presets[self.preset].items():
            values[name] = {**values[name], **value} if name in ("generator", "model") else value
        try:
            return FalseNegativeStudyParams(**{**values, "preset": None, "presets": {}})
        except ValueError as error:
            raise ValueError(f"{PARAMS}.presets.{self.preset}: {error}") from error

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
                         n_negatives=self.n_negatives)


def stage2_variants(params: FalseNegativeStudyParams) -> list[dict[str, Any]]:
    """Every stage-2 run from a warm-up: the lambda = 0 control, then (objective, strategy, K)."""
    variants = []
    if params.lambda_zero_control:
        variants.append({"kind": CONTROL, "strategy": "topk_uniform", "k": params.control_k,
                         "objective": params.objectives[0], "lambda_dpo": 0.0})
    for objective in params.objectives:
        for strategy in params.strategies:
            for k in (params.ks if strategy == "topk_uniform" else (None,)):
                variants.append({"kind": DPO, "strategy": strategy, "k": k, "objective": objective,
                                 "lambda_dpo": params.lambda_dpo})
    return variants


def variant_label(row: Mapping[str, Any]) -> str:
    if row["kind"] == WARMUP:
        return "Warm-up (CE), π_sft"
    if row["kind"] == CONTROL:
        return f"λ = 0 control (CE only; draws top-K, K={row['k']})"
    name = STRATEGY_NAMES[row["strategy"]]
    return f"{name}, K={row['k']}" if row["k"] is not None else name


# ----------------------------------------------------------------------------------- counting
class FalseNegativeJudge:
    """Counts false negatives among sampled losers against a world's truth (see `FN_DEFINITIONS`)."""

    def __init__(self, truth: GroundTruth, choices: pl.DataFrame, top_fraction: float = 0.1) -> None:
        self.truth, self.top_fraction = truth, float(top_fraction)
        shape = (truth.n_users + 1, truth.n_items + 1)
        users, items, last = (torch.from_numpy(choices.get_column(c).to_numpy().astype(np.int64))
                              for c in (USER, ITEM, "last_item_id"))
        self.previous_choice = torch.full(shape, -1, dtype=torch.int64)  # (users, items): the choice before it
        self.previous_choice[users, items] = last
        observed = torch.from_numpy(choices.get_column("observed").to_numpy())
        self.unobserved = torch.zeros(shape, dtype=torch.bool)  # chosen but never observed
        self.unobserved[users[~observed], items[~observed]] = True
        self.observed = torch.zeros(shape, dtype=torch.bool)  # chosen and observed: in the user's sequence
        self.observed[users[observed], items[observed]] = True

    def true_last_items(self, users: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The item each user chose just before `chosen` (N,), 0 = none; every pair must be a choice."""
        last = self.previous_choice[users.cpu().long(), chosen.cpu().long()]
        if bool((last < 0).any()):
            raise ValueError("FalseNegativeJudge: some (user, chosen item) pairs were never chosen in this world; "
                             "the judge must come from the world the training data was generated from.")
        return last

    def count(self, users: torch.Tensor, chosen: torch.Tensor, losers: torch.Tensor) -> dict[str, int]:
        """Number of losers (N, M) and of false negatives among them under each definition."""
        users, chosen, losers = users.cpu().long(), chosen.cpu().long(), losers.cpu().long()
        last = self.true_last_items(users, chosen)
        n = losers.numel()
        counts = {PAIRS: n, UNOBSERVED: int(self.unobserved[users[:, None], losers].sum()),
                  OBSERVED: int(self.observed[users[:, None], losers].sum())}  # a loser is never y_w itself
        for name, threshold in ((ABOVE, ABOVE_CHOSEN), (TRUE_TOP, self.top_fraction)):
            rate = false_negative_rate(losers, chosen, users, last, self.truth, threshold=threshold)
            counts[name] = round(rate * n)
        return counts

    def random_expectation(self, users: torch.Tensor, chosen: torch.Tensor, chunk: int = 4096) -> dict[str, float]:
        """Expected false-negative rate of the `random` strategy over these targets (one draw each), and
        its standard error: a uniform draw among the n_items - 1 non-positive items is a false
        negative with probability (false-negative items) / (n_items - 1), whatever the model."""
        n_items, top_n = self.truth.n_items, math.ceil(self.top_fraction * self.truth.n_items)
        probabilities = {name: [] for name in FN_DEFINITIONS}
        for start in range(0, users.numel(), chunk):
            u, c = users[start:start + chunk].cpu().long(), chosen[start:start + chunk].cpu().long()
            utilities = self.truth.true_utilities(u, self.true_last_items(u, c))  # (B, n_items + 1), col 0 = -inf
            chosen_utility = utilities.gather(1, c[:, None])
            cutoff = utilities[:, 1:].topk(top_n, dim=1).values[:, -1:]
            counts = {ABOVE: (utilities > chosen_utility).sum(dim=1),
                      TRUE_TOP: (utilities >= cutoff).sum(dim=1) - (chosen_utility >= cutoff).squeeze(1).long(),
                      UNOBSERVED: self.unobserved[u].sum(dim=1),
                      OBSERVED: self.observed[u].sum(dim=1) - 1}  # y_w is observed but never its own loser
            for name, count in counts.items():
                probabilities[name].append(count.double() / (n_items - 1))
        result = {}
        for name, parts in probabilities.items():
            p = torch.cat(parts)
            result[name] = float(p.mean())
            result[f"{name}_se"] = float(torch.sqrt((p * (1 - p)).sum()) / max(p.numel(), 1))
        return result


class FalseNegativeMonitor:
    """The trainer's pair monitor: one record of counts per DPO step (`epoch_rates` reduces them)."""

    def __init__(self, judge: FalseNegativeJudge) -> None:
        self.judge = judge
        self.steps: list[dict[str, int]] = []

    def __call__(self, *, users: torch.Tensor, last_items: torch.Tensor, chosen: torch.Tensor,
                 losers: torch.Tensor) -> None:
        del last_items  # the last *observed* item; the judge uses the true previous choice
        self.steps.append(self.judge.count(users, chosen, losers))


def epoch_rates(steps: Sequence[Mapping[str, int]], steps_per_epoch: int) -> list[dict[str, float]]:
    """Per-epoch rates from per-step counts: consecutive blocks of `steps_per_epoch` steps, each
    definition's false negatives over the epoch's losers (pooled, not a mean of step rates)."""
    if steps_per_epoch < 1 or len(steps) % steps_per_epoch:
        raise ValueError(f"epoch_rates: {len(steps)} monitored steps do not make whole epochs of "
                         f"{steps_per_epoch} steps; was the run resumed from a checkpoint (the monitor "
                         "must see every step)?")
    epochs = []
    for start in range(0, len(steps), steps_per_epoch):
        block = steps[start:start + steps_per_epoch]
        pairs = sum(step[PAIRS] for step in block)
        epochs.append({"epoch": start // steps_per_epoch + 1, PAIRS: pairs,
                       **{name: sum(step[name] for step in block) / max(pairs, 1) for name in FN_DEFINITIONS}})
    return epochs


# ----------------------------------------------------------------------------------- one world
def training_targets(data: SequenceData) -> tuple[torch.Tensor, torch.Tensor]:
    """(users (N,), chosen items (N,)) of every supervised training position, the pairs' y_w."""
    items = torch.from_numpy(data.train.items)
    is_target = items[:, 1:] > 0
    users = torch.from_numpy(data.train.user_ids)[:, None].expand_as(is_target)
    return users[is_target], items[:, 1:][is_target]


def truth_ndcg(model: nn.Module, sequences: EvalSequences, judge: FalseNegativeJudge, k: int = REPORT_K) -> float:
    """Mean NDCG@k of the model's next-item list against the true preference at the held-out step
    (graded by p(i | user, true previous choice)); dense `score_next`, fine for a small catalog."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    values = []
    with torch.inference_mode():
        for start in range(0, len(sequences.targets), SCORE_BATCH):
            rows = slice(start, start + SCORE_BATCH)
            scores = model.score_next(torch.from_numpy(sequences.items[rows]).to(device),
                                      torch.from_numpy(sequences.timestamps[rows]).to(device)).float().cpu()
            users = torch.from_numpy(sequences.user_ids[rows])
            last = judge.true_last_items(users, torch.from_numpy(sequences.targets[rows]))
            values.append(true_preference_ranks(scores, users, last, judge.truth, k=k))
    model.train(was_training)
    return float(torch.cat(values).mean())


def _best_epoch(history: Sequence[Mapping[str, Any]]) -> int:
    """The epoch whose weights `train` returns: the last of the best valid NDCG@10 (epoch 0 never counts)."""
    scored = [(entry["valid_ndcg@10"], entry["epoch"]) for entry in history
              if entry["epoch"] >= 1 and "valid_ndcg@10" in entry]
    return max(scored)[1] if scored else 0


def _evaluated(model: nn.Module, data: SequenceData, judge: FalseNegativeJudge) -> dict[str, Any]:
    metrics = evaluate_model(model, data.test, ks=EVAL_KS)["metrics"]
    return {"test": metrics, f"ndcg@{REPORT_K}_observed": metrics[f"ndcg@{REPORT_K}"],
            f"ndcg@{REPORT_K}_truth": truth_ndcg(model, data.test, judge)}


def run_world(params: FalseNegativeStudyParams, exposure: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One exposure: the world's summary and one row per (seed, variant), warm-up first."""
    world = generate_known_preferences(replace(params.generator, exposure=exposure))
    splits = leave_one_out_split(build_sequences(world.interactions))
    data = build_sequence_data(splits, params.model["max_seq_len"], n_items=params.generator.n_items)
    judge = FalseNegativeJudge(world.truth, world.choices, params.top_fraction)
    users, chosen = training_targets(data)
    summary = {"exposure": exposure, "observation_rate": world.observation_rate, "n_users": splits.height,
               "n_interactions": world.interactions.height, "n_choices": world.choices.height,
               "n_train_targets": int(chosen.numel()), "random_expectation": judge.random_expectation(users, chosen)}
    steps_per_epoch = math.ceil(data.train.items.shape[0] / params.batch_size)
    rows = []
    for seed in params.seeds:
        started = time.perf_counter()
        fresh = build_model(data, params.model_params(), seed=seed)
        sft, history = train(fresh, data, params.train_config("warmup", params.warmup_epochs, seed))
        rows.append({"exposure": exposure, "seed": seed, "kind": WARMUP, "strategy": None, "k": None,
                     "objective": None, "lambda_dpo": None, "epochs": [], "best_epoch": _best_epoch(history),
                     **_evaluated(sft, data, judge), "history": history, "seconds": time.perf_counter() - started})
        for variant in stage2_variants(params):
            started = time.perf_counter()
            monitor = FalseNegativeMonitor(judge)
            config = params.train_config("dpo", params.dpo_epochs, seed, params.dpo_config(variant))
            policy, history = train(sft, data, config, pair_monitor=monitor)
            rows.append({"exposure": exposure, "seed": seed, **variant,
                         "epochs": epoch_rates(monitor.steps, steps_per_epoch), "best_epoch": _best_epoch(history),
                         **_evaluated(policy, data, judge), "history": history,
                         "seconds": time.perf_counter() - started})
    return summary, rows


def run_false_negative_study(params: FalseNegativeStudyParams) -> dict[str, Any]:
    """Every exposure's world and rows, with the settings that produced them (json-ready)."""
    params = params.effective()
    started = time.perf_counter()
    worlds, rows = [], []
    for exposure in params.exposures:
        summary, world_rows = run_world(params, exposure)
        worlds.append(summary)
        rows.extend(world_rows)
    settings = dataclasses.asdict(params)
    for name in ("preset", "presets"):
        settings.pop(name)
    return {"title": "False negatives among sampled losers (paper Figure 1), on data with known preferences",
            "definitions": {ABOVE: "true utility above the chosen item's", TRUE_TOP:
                            f"in the user's true top {params.top_fraction:.0%} of items",
                            UNOBSERVED: "chosen by the user at some step but never observed",
                            OBSERVED: "the user's own observed item of another step (history or a later target)"},
            "settings": settings, "worlds": worlds, "rows": rows, "seconds": time.perf_counter() - started}


# ----------------------------------------------------------------------------------- reports
