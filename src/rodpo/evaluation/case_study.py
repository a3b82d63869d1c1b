"""A qualitative case study in the manner of the paper's Figure 5 (§5.4).

For a few test users: the last items of their history, and the top-K of the warm-up (SFT) model
and of RoDPO, with the ground-truth next item marked. Users are picked deterministically (seeded)
among those where the two models disagree: mostly users whose target RoDPO ranks in its top-K while
the warm-up model does not (the paper's story), plus counter-examples where it is the other way
round, so the report does not only show RoDPO's good side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HIT_MARK = "✓"
# Why a user was picked, in the order the report lists them.
RODPO_ONLY = "RoDPO hits, warm-up misses"
WARMUP_ONLY = "warm-up hits, RoDPO misses (counter-example)"
BOTH_OR_NEITHER = "no disagreement found; a random test user"


@dataclass(frozen=True)
class CaseStudyUser:
    """One user of the case study: internal ids, why the user was picked, both top-K lists."""

    row: int            # row in the test arrays
    user_id: int
    reason: str
    history: list[int]  # most recent last
    target: int
    warmup_top: list[int]
    rodpo_top: list[int]


def select_case_study_rows(
    target: np.ndarray,
    warmup_top: np.ndarray,
    rodpo_top: np.ndarray,
    *,
    n_rodpo_wins: int = 3,
    n_counter_examples: int = 1,
    seed: int = 0,
) -> list[tuple[int, str]]:
    """Rows (and the reason each was picked) for the case study, seeded and reproducible.

    ``target`` (users,), ``warmup_top`` / ``rodpo_top`` (users, K) item ids. Picks up to
    ``n_rodpo_wins`` rows where only RoDPO has the target in its top-K and up to
    ``n_counter_examples`` where only the warm-up model does. When neither kind exists (e.g. two
    identical models) it falls back to random rows, so the report is never empty.
    """
    if target.ndim != 1 or warmup_top.shape != rodpo_top.shape or warmup_top.shape[0] != target.shape[0]:
        raise ValueError(f"target {target.shape}, warmup_top {warmup_top.shape}, rodpo_top {rodpo_top.shape}: "
                         "expected (users,), (users, K) and (users, K) for the same users.")
    rng = np.random.default_rng(seed)
    warmup_hit = (warmup_top == target[:, None]).any(axis=1)
    rodpo_hit = (rodpo_top == target[:, None]).any(axis=1)

    def pick(mask: np.ndarray, n: int) -> list[int]:
        rows = np.flatnonzero(mask)
        return sorted(rng.choice(rows, size=min(n, rows.size), replace=False).tolist()) if n > 0 else []

    chosen = [(row, RODPO_ONLY) for row in pick(rodpo_hit & ~warmup_hit, n_rodpo_wins)]
    chosen += [(row, WARMUP_ONLY) for row in pick(warmup_hit & ~rodpo_hit, n_counter_examples)]
    if not chosen:
        chosen = [(row, BOTH_OR_NEITHER) for row in pick(np.ones_like(target, dtype=bool),
                                                         n_rodpo_wins + n_counter_examples)]
    return chosen


def build_case_study(
    user_ids: np.ndarray,
    histories: np.ndarray,
    target: np.ndarray,
    warmup_top: np.ndarray,
    rodpo_top: np.ndarray,
    *,
    history_len: int = 5,
    n_rodpo_wins: int = 3,
    n_counter_examples: int = 1,
    seed: int = 0,
) -> list[CaseStudyUser]:
    """The chosen users with their last ``history_len`` items (right-padded ``histories``)."""
    users = []
    for row, reason in select_case_study_rows(target, warmup_top, rodpo_top, n_rodpo_wins=n_rodpo_wins,
                                              n_counter_examples=n_counter_examples, seed=seed):
        history = [int(item) for item in histories[row] if item > 0]
        users.append(CaseStudyUser(
            row=int(row), user_id=int(user_ids[row]), reason=reason, history=history[-history_len:],
            target=int(target[row]), warmup_top=[int(i) for i in warmup_top[row]],
            rodpo_top=[int(i) for i in rodpo_top[row]],
        ))
    return users


def case_study_markdown(
    users: Sequence[CaseStudyUser],
    item_titles: Sequence[str],
    original_user_ids: dict[int, str],
    *,
    dataset: str = "",
    total_users: int | None = None,
    rodpo_only_hits: int | None = None,
    warmup_only_hits: int | None = None,
) -> str:
    """The report: per user, the recent history and both top-K lists side by side, ✓ = ground truth.

    ``item_titles[i]`` is the display name of item i (index 0 = padding, unused).
    """
    def title(item: int) -> str:
        return _cell(item_titles[item]) if 0 < item < len(item_titles) else f"item {item}"

    k = len(users[0].rodpo_top) if users else 0
    lines = [f"# Case study: warm-up (SFT) vs RoDPO top-{k}" + (f" ({dataset})" if dataset else ""), ""]
    lines.append(
        f"Test users, next-item prediction on the test split (history = train + valid items). "
        f"{HIT_MARK} marks the ground-truth next item. Users are drawn with a fixed seed among those "
        f"where the two models disagree (in the manner of the paper's Figure 5)."
    )
    if total_users is not None and rodpo_only_hits is not None and warmup_only_hits is not None:
        lines += ["", f"Of {total_users:,} test users, {rodpo_only_hits:,} have the target in RoDPO's top-{k} "
                      f"but not in the warm-up model's, and {warmup_only_hits:,} the other way round."]
    for number, user in enumerate(users, start=1):
        lines += ["", f"## {number}. User `{original_user_ids.get(user.user_id, user.user_id)}`: {user.reason}", ""]
        lines.append(f"Recent history (oldest first, last {len(user.history)}):")
        lines.append("")
        lines += [f"{position}. {title(item)}" for position, item in enumerate(user.history, start=1)]
        lines += ["", f"Ground truth next item: **{title(user.target)}**", ""]
        lines += ["| Rank | Warm-up (SFT) | RoDPO |", "|---:|---|---|"]
        for rank, (warmup_item, rodpo_item) in enumerate(zip(user.warmup_top, user.rodpo_top), start=1):
            lines.append(f"| {rank} | {_marked(title(warmup_item), warmup_item == user.target)} "
                         f"| {_marked(title(rodpo_item), rodpo_item == user.target)} |")
    if not users:
        lines += ["", "_No test users to show._"]
    return "\n".join(lines) + "\n"


def _marked(text: str, is_target: bool) -> str:
    return f"**{text}** {HIT_MARK}" if is_target else text


def _cell(text: str, max_chars: int = 80) -> str:
    """One markdown table cell: no pipes or newlines, long titles shortened."""
    text = " ".join(str(text).replace("|", "/").split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
