"""Two-stage RoDPO training: CE warm-up, then CE + lambda * DPO with stochastic top-K negatives.

Import from the submodules (``rodpo.training.trainer``, ``.stage``, ``.dpo``, ``.objectives``).
"""
