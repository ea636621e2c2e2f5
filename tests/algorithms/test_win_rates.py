"""Win rates of benchmark rows on the first turn: the scoring rule, pairing and the table."""

import numpy as np
import pytest

from algorithms.win_rates import first_turn_preferences, win_rate_markdown, win_rates, win_scores
from envs.tasks.base import EpisodeRecord
from tests.algorithms.test_benchmark import tutoring_task


def records(driver, texts):
    prefix = [{"role": "system", "content": "Topic: t"}, {"role": "teacher", "content": "Hello."},
              {"role": "student", "content": "hi"}]
    return [EpisodeRecord(driver=driver, options={"topic": "t", "i": i}, label={"persona": "direct"},
                          start={"topic": "t"}, observations=[prefix], actions=[text], feedback=["ok"])
            for i, text in enumerate(texts)]


class LengthJudge:
    """Prefers the longer first candidate; ties on equal length."""

    slot_a_rate = 0.5

    def compare_batch(self, comparisons):
        return [float(np.sign(len(c.first) - len(c.second))) for c in comparisons]


def test_wins_count_one_and_ties_one_half():
    assert win_scores([1.0, 0.5, 0.0, -0.5, -1.0]).tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_win_rates_pair_episodes_and_report_intervals():
    task = tutoring_task()
    rows = {"router": records("router", ["long answer", "long answer", "x", "same"]),
            "blend": records("blend", ["short", "short", "long answer", "same"])}
    out = win_rates(task, LengthJudge(), rows, ["router"], ["blend"], bootstrap=200, confidence=0.95, seed=0)
    rate = out["rates"]["router"]["blend"]
    assert rate["value"] == pytest.approx((1 + 1 + 0 + 0.5) / 4) and rate["n"] == 4
    assert 0 <= rate["low"] <= rate["value"] <= rate["high"] <= 1
    assert rate["decisive"] == pytest.approx(0.75) and out["slot_a_rate"] == 0.5
    table = win_rate_markdown(out, "LengthJudge", 0.95)
    assert "| Policy | vs blend |" in table and "| router | 0.625" in table and "Slot-A pick rate" in table


def test_rows_from_different_episodes_are_refused():
    task = tutoring_task()
    a, b = records("a", ["x"]), records("b", ["y"])
    b[0].options = {"topic": "other"}
    with pytest.raises(ValueError, match="same episodes"):
        first_turn_preferences(task, LengthJudge(), a, b)


def test_heuristic_judge_refuses_margins_out_of_order():
    from envs.judges import HeuristicPairwiseJudge

    with pytest.raises(ValueError, match="tie_margin <= clear_margin"):
        HeuristicPairwiseJudge(tie_margin=0.5, clear_margin=0.1)
