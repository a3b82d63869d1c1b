"""Two-stage RoDPO training: CE warm-up, then CE + lambda * DPO with stochastic top-K negatives.

Import from the submodules (``rodpo.training.trainer``, ``.batching``, ``.dpo``): re-exporting
them here would make ``rodpo.evaluation.evaluate`` -> ``rodpo.training.batching`` circular.
"""
