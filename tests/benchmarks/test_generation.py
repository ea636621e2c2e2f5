"""benchmarks/generation.py: every row is timed and the report names the weights' dtype."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generation_benchmark_reports_each_configuration_in_the_dtype_asked_for(tmp_path, dtype):
    out = tmp_path / "generation.json"
    subprocess.run([sys.executable, "benchmarks/generation.py", "--model", "tiny-random", "--new-tokens", "4",
                    "--repeats", "1", "--batches", "1", "2", "--dtype", dtype, "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    assert report["dtype"] == dtype
    configs = {(r["config"], r["batch"]) for r in report["rows"]}
    assert ("single head", 2) in configs and ("5-head per-sample mixture", 2) in configs
    assert ("2-head Persona-judge, exact", 1) in configs
    assert all(r["tokens_per_s"] > 0 for r in report["rows"])
    assert report["mixture_cost_vs_single_head"]["5-head"] > 0


def test_generation_benchmark_refuses_an_unknown_dtype_by_name(tmp_path):
    out = tmp_path / "generation.json"
    done = subprocess.run([sys.executable, "benchmarks/generation.py", "--model", "tiny-random", "--dtype", "float8",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and not out.exists()
    assert "--dtype" in done.stderr and "float8" in done.stderr and "bfloat16" in done.stderr


def test_configurations_are_timed_in_rounds_of_alternating_order():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import timing

    calls = []

    def measure(config, repeat):
        calls.append(config)
        return {"a": [1.0, 3.0, 2.0], "b": [5.0, 4.0, 0.5], "c": [1.0, 1.0, 9.0]}[config][repeat]

    rounds = timing.interleaved(["a", "b", "c"], 3, measure)
    assert rounds == [[1.0, 3.0, 2.0], [5.0, 4.0, 0.5], [1.0, 1.0, 9.0]]  # every round of every config
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    # cost ratios pair the rounds: a's rounds over b's are 0.2, 0.75, 4, whose median is 0.75, where the
    # ratio of the best rounds (3 / 5) would mix a fast round of one with a slow round of the other
    assert timing.paired_ratio(rounds[0], rounds[1]) == 0.75


@pytest.mark.parametrize("script, flag", [("generation.py", "--repeats"), ("opsd_step.py", "--rounds"),
                                          ("opsd_step.py", "--repeats")])
def test_a_round_count_below_one_is_refused_by_name(script, flag):
    done = subprocess.run([sys.executable, f"benchmarks/{script}", "--model", "tiny-random", flag, "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and flag in done.stderr and "at least 1" in done.stderr
