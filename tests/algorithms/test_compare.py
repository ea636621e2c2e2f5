"""algorithms.compare: seeds of one configuration pooled, with intervals that carry the seed-to-seed spread."""

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from algorithms.compare import compare, configurations, seed_pooled
from tests.conftest import compose_config


def _units(rate: float, topics: int = 12, turns: int = 3) -> dict[str, list[float]]:
    rng = np.random.default_rng(int(rate * 1000))
    return {f"t{i}": [float(rng.binomial(turns, rate)), float(turns)] for i in range(topics)}


def test_the_pooled_value_is_the_mean_of_the_seeds_and_the_interval_widens_with_their_spread():
    rng = np.random.default_rng(0)
    same = [_units(0.5)] * 3
    spread = [_units(0.2), _units(0.5), _units(0.8)]
    a, _ = seed_pooled(same, samples=4000, confidence=0.95, rng=rng)
    b, _ = seed_pooled(spread, samples=4000, confidence=0.95, rng=rng)
    ratios = [sum(v[0] for v in u.values()) / sum(v[1] for v in u.values()) for u in spread]
    assert b.value == pytest.approx(np.mean(ratios)) and b.n == 3
    assert (b.high - b.low) > 2 * (a.high - a.low)
    assert b.low < min(ratios[1:]) and b.high > max(ratios[:2])


def _fake_run(folder, seed, feedback, rate, split="eval"):
    cfg = compose_config("opsd", "agent=tiny", f"seed={seed}", f"env.teacher_feedback={feedback}",
                         f"algorithm.eval.split={split}")
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    units = {"satisfaction/matched": {"head_direct": _units(rate)}}
    report = {"rows": {}, "student_types": ["direct", "interactive"], "styles": ["direct", "interactive"],
              "unit": "topic", "units": units}
    (folder / "test.json").write_text(json.dumps({"report": report}))


def test_a_multirun_folder_is_grouped_into_configurations_by_everything_but_the_seed(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in range(3):  # seed 0 of "a" was reported on eval at the end of training, then evaluated on test
        _fake_run(sweep / f"a_seed={seed}", seed, True, 0.7, split="eval" if seed == 0 else "test")
        _fake_run(sweep / f"b_seed={seed}", seed, False, 0.3)
    groups = configurations([sweep])
    assert sorted(len(g.runs) for g in groups) == [3, 3]
    assert all(len({c.seed for c in g.configs}) == 3 for g in groups)
    with_feedback = [g for g in groups if g.configs[0].env.teacher_feedback][0]
    markdown = compare([sweep], split="test", samples=500)
    assert "**satisfaction/matched**" in markdown and "(n=3:" in markdown and "Differences against" in markdown
    assert with_feedback.label in markdown
    assert "differ in: `env.teacher_feedback` (" in markdown
    gain = markdown.split("**Feedback gain**")[1]
    value = float(gain.split(with_feedback.label + " | ")[1].split(" ")[0])
    assert value == pytest.approx(0.4, abs=0.15)  # with (0.7) minus without (0.3), whichever came first
    assert "**Feedback gain**" not in compare([sweep / "a_seed=0", sweep / "a_seed=1"], split="test", samples=50)
    with pytest.raises(FileNotFoundError, match="has no eval.json"):
        compare([sweep], split="eval")
