"""RoDPO's objective (Eq. 6, `rodpo_loss`) and the stage-2 preference objectives on item scores.

Every objective maps per-row scores to a per-row loss (N,): the policy's score of the winning item
s(w) (N,) and of M losing items s(l) (N, M), plus, for the reference-based ones, the frozen
reference's s_ref(w) (N,) and s_ref(l) (N, M). Scores are logits over the catalog; the softmax
partition cancels in every difference below, so log-probabilities are never needed.

Config names in errors (`rodpo.dpo.objective`, `rodpo.dpo.n_negatives`, ...) are the stage-2
parameters of `conf/base/parameters_rodpo.yml`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rodpo.training.negatives import NEGATIVE_STRATEGIES, pool_size

REFERENCE_FREE = {"simpo", "bpr"}


def rodpo_loss(ce: torch.Tensor, preference: torch.Tensor | None, aux: torch.Tensor, *, lambda_dpo: float,
               aux_weight: float = 0.0) -> torch.Tensor:
    """L = L_CE + λ · L_pref  (paper Eq. 6), plus the MoE load-balancing term aux_weight · L_aux.

    The warm-up (stage 1) is the same with no preference term (`preference` None). The one place
    the terms are combined: the optimised loss and the logged loss both come from here.
    """
    loss = ce + aux_weight * aux
    return loss if preference is None else loss + lambda_dpo * preference


def dpo(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
        reference_rejected: torch.Tensor, *, beta: float) -> torch.Tensor:
    """L = mean_l -log σ(β[(s(w) - s(l)) - (s_ref(w) - s_ref(l))])  (paper Eq. 5; Rafailov et al. 2023).

    The one definition of DPO in rodpo. With M > 1 losers it is the mean of M pairwise DPO terms,
    each loser on its own: drawn from the same pool as S-DPO's M losers, so "S-DPO vs DPO with M
    losers" differs only in the softmax form.
    """
    policy_margin = policy_chosen.unsqueeze(1) - policy_rejected  # (N, M)
    reference_margin = reference_chosen.unsqueeze(1) - reference_rejected  # (N, M)
    return -F.logsigmoid(beta * (policy_margin - reference_margin)).mean(dim=1)


def sdpo(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
         reference_rejected: torch.Tensor, *, beta: float) -> torch.Tensor:
    """L = -log σ(-log Σ_l exp(β[(s(l) - s_ref(l)) - (s(w) - s_ref(w))]))  over the M losers.

    S-DPO (Chen et al., "On Softmax Direct Preference Optimization for Recommendation", NeurIPS
    2024). With M = 1 it is exactly `dpo`. The sum is a logsumexp, stable for large margins.
    """
    chosen_reward = policy_chosen - reference_chosen  # (N,)
    rejected_reward = policy_rejected - reference_rejected  # (N, M)
    log_sum = torch.logsumexp(beta * (rejected_reward - chosen_reward.unsqueeze(1)), dim=1)
    return -F.logsigmoid(-log_sum)


def simpo(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, *, beta: float,
          gamma: float = 0.0) -> torch.Tensor:
    """L = mean_l -log σ(β(s(w) - s(l)) - γ): reference-free, with a target margin γ.

    SimPO-style (Meng et al., "SimPO: Simple Preference Optimization with a Reference-Free Reward",
    NeurIPS 2024): the reward is the policy's own (length-normalised) log-probability; a next item is
    one token, so the reward difference is the logit difference. With M > 1 losers the pairwise
    losses are averaged over the losers (SimPO itself is pairwise).
    """
    margin = beta * (policy_chosen.unsqueeze(1) - policy_rejected) - gamma  # (N, M)
    return -F.logsigmoid(margin).mean(dim=1)


def bpr(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor) -> torch.Tensor:
    """L = mean_l -log σ(s(w) - s(l))  (BPR, Rendle et al. 2009): no reference, β = 1, averaged over losers."""
    return -F.logsigmoid(policy_chosen.unsqueeze(1) - policy_rejected).mean(dim=1)


OBJECTIVES = {"dpo": dpo, "sdpo": sdpo, "simpo": simpo, "bpr": bpr}


def _check_objective(objective: str, *, beta: float | None, gamma: float) -> None:
    """Known objective, β > 0, and no parameter set that the objective would silently ignore."""
    if objective not in OBJECTIVES:
        raise ValueError(f"rodpo.dpo.objective={objective!r}: unknown preference objective; expected one of "
                         f"{sorted(OBJECTIVES)}.")
    if beta is not None:
        if not beta > 0:
            raise ValueError(f"rodpo.dpo.beta={beta}: must be > 0 (β <= 0 removes or inverts the preference).")
        if objective == "bpr" and beta != 1.0:
            raise ValueError(f"rodpo.dpo.beta={beta} with rodpo.dpo.objective='bpr': BPR has no β (it is β = 1); "
                             "leave rodpo.dpo.beta at 1.0, or use rodpo.dpo.objective=simpo to scale the margin.")
    if gamma != 0.0 and objective != "simpo":
        raise ValueError(f"rodpo.dpo.gamma={gamma} with rodpo.dpo.objective={objective!r}: only 'simpo' has a "
                         "target margin γ; set rodpo.dpo.gamma=0 or rodpo.dpo.objective=simpo.")


def _as_losers(name: str, scores: torch.Tensor, n_rows: int) -> torch.Tensor:
    """(N,) or (N, M) loser scores -> (N, M)."""
    if scores.dim() == 1:
        scores = scores.unsqueeze(1)
    if scores.dim() != 2 or scores.shape[0] != n_rows or scores.shape[1] < 1:
        raise ValueError(f"{name}: expected shape ({n_rows}, M) with M >= 1 losers per row, "
                         f"got {tuple(scores.shape)}.")
    return scores


def preference_loss(objective: str, policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    reference_chosen: torch.Tensor | None = None, reference_rejected: torch.Tensor | None = None,
                    *, beta: float, gamma: float = 0.0) -> torch.Tensor:
    """Per-row loss (N,) of `objective` (a key of OBJECTIVES) on winner (N,) and loser (N, M) scores.

    Reference scores are required by 'dpo'/'sdpo' and refused by the REFERENCE_FREE objectives, so a
    misconfigured run fails instead of silently training a different objective. A (N,) loser
    tensor is read as M = 1.
    """
    _check_objective(objective, beta=beta, gamma=gamma)
    if policy_chosen.dim() != 1:
        raise ValueError(f"policy_chosen: expected shape (N,), got {tuple(policy_chosen.shape)}.")
    n_rows = policy_chosen.shape[0]
    policy_rejected = _as_losers("policy_rejected", policy_rejected, n_rows)

    if objective in REFERENCE_FREE:
        given = [name for name, value in (("reference_chosen", reference_chosen),
                                          ("reference_rejected", reference_rejected)) if value is not None]
        if given:
            raise ValueError(f"preference_loss: objective {objective!r} is reference-free but got {given}; pass "
                             "None (skip the reference forward pass) or use rodpo.dpo.objective=dpo/sdpo.")
        if objective == "bpr":
            return bpr(policy_chosen, policy_rejected)
        return simpo(policy_chosen, policy_rejected, beta=beta, gamma=gamma)

    missing = [name for name, value in (("reference_chosen", reference_chosen),
                                        ("reference_rejected", reference_rejected)) if value is None]
    if missing:
        raise ValueError(f"preference_loss: objective {objective!r} needs the frozen reference's scores; "
                         f"{missing} is None. Score the winner and losers with the reference model too, or use a "
                         f"reference-free objective ({sorted(REFERENCE_FREE)}).")
    if reference_chosen.shape != policy_chosen.shape:
        raise ValueError(f"reference_chosen: expected shape {tuple(policy_chosen.shape)} like policy_chosen, "
                         f"got {tuple(reference_chosen.shape)}.")
    reference_rejected = _as_losers("reference_rejected", reference_rejected, n_rows)
    if reference_rejected.shape != policy_rejected.shape:
        raise ValueError(f"reference_rejected: expected shape {tuple(policy_rejected.shape)} like "
                         f"policy_rejected, got {tuple(reference_rejected.shape)}.")
    return OBJECTIVES[objective](policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta)


def validate_objective_config(objective: str, n_negatives: int, k: int, strategy: str, *,
                              beta: float | None = None, gamma: float = 0.0) -> None:
    """Fail at config time on a combination `preference_loss` or `draw_from_pool` would reject later.

    M = n_negatives losers per row, for every objective: at least 1; at most the pool size for the
    pooled strategies (topk_uniform: K = k; argmax: 1). 'random' draws from the whole catalog.
    """
    _check_objective(objective, beta=beta, gamma=gamma)
    if strategy not in NEGATIVE_STRATEGIES:
        raise ValueError(f"rodpo.dpo.negative_strategy={strategy!r}: expected one of {NEGATIVE_STRATEGIES}.")
    if n_negatives < 1:
        raise ValueError(f"rodpo.dpo.n_negatives={n_negatives}: need at least one loser per row.")
    size = pool_size(strategy, k)  # None: random draws from the whole catalog
    if size is not None:
        if size < 1:
            raise ValueError(f"rodpo.dpo.k={k}: the top-K pool needs at least one item.")
        if n_negatives > size:
            fix = ("set rodpo.dpo.n_negatives=1 (argmax has a pool of one item) or use "
                   "rodpo.dpo.negative_strategy=topk_uniform" if strategy == "argmax"
                   else f"lower rodpo.dpo.n_negatives to <= {k} or raise rodpo.dpo.k")
            raise ValueError(f"rodpo.dpo.n_negatives={n_negatives} > pool size {size} of "
                             f"rodpo.dpo.negative_strategy={strategy!r}: M distinct losers cannot come from a "
                             f"pool of {size}; {fix}.")


