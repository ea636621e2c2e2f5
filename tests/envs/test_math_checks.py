"""The math env's independent check disagrees with the reward on hedged answers and agrees on plain ones."""

import pytest

from envs.checks.math import check_answer, check_answers
from envs.math_reward import answer_reward


@pytest.mark.parametrize("text", [
    "It is 12 or maybe 15. #### 12 #### 15",
    "The answer is 12. Hmm, no. #### 15",
    "= 9, so perhaps = 15. #### 15",
])
def test_a_hedged_answer_fools_the_reward_but_not_the_check(text):
    assert answer_reward(text, 15) == 1.0  # the reward reads the last marker
    check = check_answer(text)
    assert not check.committed and check.first != 15
    assert check_answers([text], [15]) == {"first_cue_correct": 0.0, "committed": 0.0}


@pytest.mark.parametrize("text, value", [
    ("She has 3 + 4 = 7 apples left. #### 7", 7),
    ("Total: $1,234.50 in all. The answer is 1,234.5", 1234.5),
    ("So the temperature falls to -3 degrees.", -3),
    ("#### 0.5", 0.5),
])
def test_plain_answers_agree_with_the_reward(text, value):
    assert answer_reward(text, value) == 1.0
    assert check_answers([text], [value])["first_cue_correct"] == 1.0


def test_no_number_and_empty_lists():
    assert check_answer("I do not know.").first is None
    assert check_answers([], [])["committed"] != check_answers([], [])["committed"]  # NaN
    with pytest.raises(ValueError):
        check_answers(["1"], [])
