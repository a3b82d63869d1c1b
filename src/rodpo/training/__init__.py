"""Two-stage RoDPO training (Algorithm 1): CE warm-up, then CE + lambda * DPO with stochastic top-K negatives.

Import from the submodules: ``trainer`` (runs a stage), ``stage`` (one step and one epoch),
``objectives`` (Eq. 5, Eq. 6 and the other preference losses), ``negatives`` (the pools of Eq. 4),
``reference`` (the frozen pi_ref), ``config``, ``checkpoints``.
"""
