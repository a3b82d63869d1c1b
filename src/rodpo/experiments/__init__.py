"""The paper's ablation and sensitivity studies (Tables 2-3, Figures 3-4) with seeds and paired tests.

plan       study design -> the distinct settings and runs (shared warm-ups, deduplicated variants)
aggregate  mean ± std over seeds, paired tests over users, significance markers
reports    markdown tables, bar / line figures and logit panels of a study
"""
