"""Evaluation of next-item recommenders beyond the ranking loop (``rodpo.ranking``, ``rodpo.metrics``):
paired statistics, reports, top-N recommendations and the case study.

- ``statistics``: paired bootstrap / sign-flip test between two systems, mean ± std over seeds.
- ``reports``: markdown tables (paper Tables 1-3) and the logit KDE figure (paper Figure 4).
- ``recommend``: top-N per user for serving; ``case_study``: the paper's Figure 5.
"""
