"""Two-stage RoDPO training: CE warm-up, then CE + lambda * DPO with stochastic top-K negatives."""

from rodpo.training.batching import SequenceData, build_sequence_data
from rodpo.training.trainer import DPOConfig, TrainConfig, train

__all__ = ["DPOConfig", "SequenceData", "TrainConfig", "build_sequence_data", "train"]
