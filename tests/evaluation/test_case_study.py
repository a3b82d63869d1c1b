"""Case study (Figure 5): which users are picked, and what the report marks."""

from __future__ import annotations

import numpy as np

from rodpo.evaluation.case_study import (
    BOTH_OR_NEITHER,
    HIT_MARK,
    RODPO_ONLY,
    WARMUP_ONLY,
    build_case_study,
    case_study_markdown,
    select_case_study_rows,
)

TARGET = np.array([1, 2, 3, 4, 5])
# rows 1 and 2: only RoDPO has the target; rows 0 and 3: only the warm-up; row 4: neither
WARMUP_TOP = np.array([[1, 9], [9, 8], [9, 8], [4, 9], [9, 8]])
RODPO_TOP = np.array([[9, 8], [8, 2], [3, 9], [9, 8], [9, 8]])


def test_picks_disagreements_reproducibly():
    chosen = select_case_study_rows(TARGET, WARMUP_TOP, RODPO_TOP, n_rodpo_wins=3, n_counter_examples=1, seed=7)
    assert [row for row, reason in chosen if reason == RODPO_ONLY] == [1, 2]
    counter = [row for row, reason in chosen if reason == WARMUP_ONLY]
    assert len(counter) == 1 and counter[0] in (0, 3)
    assert chosen == select_case_study_rows(TARGET, WARMUP_TOP, RODPO_TOP, n_rodpo_wins=3,
                                            n_counter_examples=1, seed=7)


def test_identical_models_fall_back_to_random_users():
    chosen = select_case_study_rows(TARGET, WARMUP_TOP, WARMUP_TOP, n_rodpo_wins=2, n_counter_examples=1)
    assert len(chosen) == 3 and {reason for _, reason in chosen} == {BOTH_OR_NEITHER}


def test_report_marks_the_ground_truth_and_shows_recent_history():
    target = np.array([1, 2])
    warmup_top = np.array([[9, 8], [2, 9]])  # user 0: only RoDPO hits; user 1: only the warm-up
    rodpo_top = np.array([[8, 1], [9, 8]])
    histories = np.array([[5, 6, 7, 8], [3, 0, 0, 0]])
    users = build_case_study(np.array([10, 11]), histories, target, warmup_top, rodpo_top,
                             history_len=2, n_rodpo_wins=1, n_counter_examples=1, seed=0)
    assert [(u.user_id, u.reason, u.history) for u in users] == [(10, RODPO_ONLY, [7, 8]), (11, WARMUP_ONLY, [3])]
    titles = ["", "one", "two | pipe", "three", "four", "five", "six", "seven", "eight", "nine"]
    text = case_study_markdown(users, titles, {10: "REVIEWER10", 11: "REVIEWER11"}, dataset="demo")
    first, second = text.split("## 2.")
    assert "User `REVIEWER10`" in first and "User `REVIEWER11`" in second
    assert "1. seven\n2. eight\n" in first and "six" not in first  # the last two, oldest first
    assert f"| 2 | eight | **one** {HIT_MARK} |" in first               # RoDPO's rank 2 is the target
    assert f"| 1 | **two / pipe** {HIT_MARK} | nine |" in second        # the warm-up's rank 1; no raw pipe
    assert text.count(HIT_MARK) == 3                                    # the intro sentence + two hits
