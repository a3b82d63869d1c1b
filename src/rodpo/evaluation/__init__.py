"""Evaluation of next-item recommenders: full-ranking metrics, paired statistics and reports.

- ``metrics``: target ranks among all items and NDCG/MRR/Hit@K (paper Eq. 7/8).
- ``statistics``: paired bootstrap / sign-flip test between two systems, mean ± std over seeds.
- ``reports``: markdown tables (paper Tables 1-3) and the logit KDE figure (paper Figure 4).
- ``evaluate``: the batched full-ranking loop over a model.
"""
