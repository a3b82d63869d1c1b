"""Settings of one training stage (warm-up or DPO), typed for Kedro's parameter validation."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from rodpo.parameters import Number, check_number, check_numbers
from rodpo.training.negatives import NEGATIVE_STRATEGIES, POOL_EXCLUSIONS
from rodpo.training.objectives import OBJECTIVES, REFERENCE_FREE, validate_objective_config

STAGES = ("warmup", "dpo")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
REFERENCES = ("model", "cached_states")
VALID_KS = (5, 10, 20)
DEFAULT_EVAL_BATCH_SIZE = 2048
# Fields that change neither the optimisation trajectory nor the result of an epoch beyond float
# rounding: a rerun that only changes these resumes the same run (e.g. another chunk size). The
# budget (epochs, patience) is in the key: it decides when a run is finished, so runs with
# different budgets never share a folder (a finished 5-epoch run is not the 10-epoch one).
_NOT_IN_RUN_KEY = ("device", "eval_batch_size", "checkpoint_dir", "progress_bar", "score_chunk_items",
                   "dist_timeout_s")
# The parameter block each stage is read from (conf/base/parameters_<block>.yml): names in errors.
PARAMETER_BLOCKS = {"warmup": "warmup", "dpo": "rodpo"}
_DPO_NUMBERS = {
    "beta": Number(above=0, why="β <= 0 removes or inverts the preference"),
    "k": Number(int, at_least=1, why="the top-K pool needs at least one item"),
    "lambda_dpo": Number(at_least=0, why="λ < 0 maximises L_DPO, i.e. trains against the preference "
                                          "(λ = 0 is the CE-only control)"),
    "gamma": Number(),
    "n_negatives": Number(int, at_least=1, why="each row needs at least one loser"),
    "exclude_history": Number(bool),
    "policy_dropout_in_dpo": Number(bool),
}
_TRAIN_NUMBERS = {
    "epochs": Number(int, at_least=0),
    "batch_size": Number(int, at_least=1),
    "encoder_chunks": Number(int, at_least=1),
    "lr": Number(above=0, why="Adam takes no step at lr = 0 and climbs the loss below it"),
    "weight_decay": Number(at_least=0),
    "grad_clip": Number(at_least=0, why="0 disables clipping"),
    "seed": Number(int),
    "patience": Number(int, at_least=1),
    "eval_every": Number(int, at_least=1),
    "eval_batch_size": Number(int, at_least=1),
    "progress_bar": Number(bool),
    "world_size": Number(int, at_least=1, why="1 = one process"),
    "dist_timeout_s": Number(above=0),
}


@dataclass(frozen=True)
class DPOConfig:
    """Stage-2 settings (paper §3.4 and §4.1)."""

    beta: float = 1.0
    k: int = 50
    # Not given in the paper. On amazon-beauty (ID-only warm-up, 5 DPO epochs) valid NDCG@10 was
    # 0.0489 / 0.0490 / 0.0502 / 0.0504 for lambda = 0 / 0.1 / 0.5 / 1.0: 1.0 chosen on validation.
    lambda_dpo: float = 1.0
    negative_strategy: str = "topk_uniform"
    # Items left out of each target's negative pool besides the positive (rodpo.training.negatives.POOL_EXCLUSIONS):
    # none (the paper) | earlier_items (the window's items before the target) | window_items (the whole
    # window, later targets included). Every strategy honours it, random included.
    exclude_from_pool: str = "none"
    exclude_history: bool = False  # deprecated: true means exclude_from_pool=window_items (set to false on load)
    # False (TRL's default): no dropout / router noise in the policy during stage 2, so pi_theta == pi_ref
    # at the start and L_DPO starts at ln 2. With dropout on (amazon-beauty, lambda 1.0) L_DPO sat near 1.8
    # and reward accuracy near 0.25 (noise-dominated margins) for the same valid NDCG@10 (0.0504 both).
    policy_dropout_in_dpo: bool = False
    objective: str = "dpo"      # dpo (Eq. 5) | sdpo (softmax over M losers) | simpo | bpr (reference-free)
    n_negatives: int = 1        # M losers per pair, drawn without replacement from the same pool
    gamma: float = 0.0          # SimPO's target margin
    # model: a frozen copy of pi_sft scores (y_w, y_l) every step; cached_states: its sequence states
    # at every training target and its item table are computed once, and the copy is dropped.
    reference: str = "model"

    def __post_init__(self) -> None:
        check_numbers("rodpo.dpo", self, _DPO_NUMBERS)
        if self.exclude_history:
            if self.exclude_from_pool not in ("none", "window_items"):
                raise ValueError(f"rodpo.dpo.exclude_history=true with rodpo.dpo.exclude_from_pool="
                                 f"{self.exclude_from_pool!r}: the two disagree; drop exclude_history (deprecated).")
            warnings.warn("rodpo.dpo.exclude_history is deprecated: it removes the whole training window from the "
                          "negative pool, later targets included; read as rodpo.dpo.exclude_from_pool=window_items. "
                          "Set exclude_from_pool instead (earlier_items: only the items before each target).",
                          FutureWarning, stacklevel=3)
            object.__setattr__(self, "exclude_from_pool", "window_items")
            object.__setattr__(self, "exclude_history", False)
        if self.exclude_from_pool not in POOL_EXCLUSIONS:
            raise ValueError(f"rodpo.dpo.exclude_from_pool={self.exclude_from_pool!r}: expected one of "
                             f"{POOL_EXCLUSIONS}.")
        if self.negative_strategy not in NEGATIVE_STRATEGIES:
            raise ValueError(f"rodpo.dpo.negative_strategy={self.negative_strategy!r}: expected one of "
                             f"{NEGATIVE_STRATEGIES}.")
        if self.reference not in REFERENCES:
            raise ValueError(f"rodpo.dpo.reference={self.reference!r}: expected one of {REFERENCES}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"rodpo.dpo.objective={self.objective!r}: expected one of {sorted(OBJECTIVES)}.")
        validate_objective_config(self.objective, self.n_negatives, self.k, self.negative_strategy,
                                  beta=self.beta, gamma=self.gamma)

    @property
    def uses_reference(self) -> bool:
        return self.objective not in REFERENCE_FREE


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training stage. `batch_size` counts sequences (all their positions are targets)."""

    stage: str = "warmup"
    # Upper bound; early stopping ends the run. ID-only warm-up on amazon-beauty peaked at epoch 16
    # (the paper's 15 is close); the DPO stage is usually given a handful of epochs.
    epochs: int = 50
    batch_size: int = 256  # the global batch: shared out over the ranks of a distributed run
    # Length-sorted groups each batch is encoded in (exact; less padding). 1 = one padded call.
    encoder_chunks: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # a safety net only (RecBole does not clip); 0 disables
    seed: int = 2020
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 if bf16 is unsupported), fp32 elsewhere
    patience: int = 10  # evaluations without a new best (>=) before stopping; RecBole uses 10
    eval_every: int = 1
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    valid_metric: str = "ndcg@10"
    dpo: DPOConfig = field(default_factory=DPOConfig)
    checkpoint_dir: str | None = None
    progress_bar: bool = True
    # Items per scoring chunk (full-catalog CE, top-K pools, ranks): "auto" sizes it from memory.
    score_chunk_items: int | str = "auto"
    # Processes on this machine (one per GPU with NCCL, gloo on CPU); under torchrun leave it at 1.
    world_size: int = 1
    dist_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if isinstance(self.dpo, dict):
            object.__setattr__(self, "dpo", DPOConfig(**self.dpo))
        if self.stage not in STAGES:
            raise ValueError(f"TrainConfig.stage={self.stage!r}: expected one of {STAGES}.")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}: expected one of {PRECISIONS}.")
        valid_metrics = {f"{name}@{k}" for name in ("ndcg", "mrr", "hit") for k in VALID_KS}
        if self.valid_metric not in valid_metrics:
            raise ValueError(f"TrainConfig.valid_metric={self.valid_metric!r}: expected one of {sorted(valid_metrics)}.")
        block = PARAMETER_BLOCKS[self.stage]
        check_numbers(block, self, _TRAIN_NUMBERS)
        if self.score_chunk_items != "auto":
            check_number(f"{block}.score_chunk_items", self.score_chunk_items,
                         Number(int, at_least=1, why="use 'auto' or a positive number of items"))
        if self.batch_size < self.world_size:
            raise ValueError(f"{block}.batch_size={self.batch_size} < world_size={self.world_size}: every "
                             "rank needs at least one sequence per step.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def run_key_fields(self) -> dict[str, Any]:
        values = self.to_dict()
        for name in _NOT_IN_RUN_KEY:
            values.pop(name)
        if self.stage == "warmup":
            values.pop("dpo")
        else:  # the pool exclusion in the spelling runs had before exclude_from_pool: their checkpoints still resume
            dpo = values["dpo"]
            legacy = {"none": False, "window_items": True}.get(dpo["exclude_from_pool"])
            if legacy is not None:
                dpo.pop("exclude_from_pool")
                dpo["exclude_history"] = legacy
        return values
