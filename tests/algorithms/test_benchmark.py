"""The routing benchmark on tiny-random: end to end, metrics on known records, rows added by config."""

import json

import pytest
import torch

import algorithms.benchmark as bm
import algorithms.router as rl
from agents import Router
from envs.tasks import TutoringTask
from envs.tasks.base import EpisodeRecord
from tests.conftest import compose_config, make_tiny_run

TINY_BENCH = ["benchmark.contexts=4", "benchmark.turns=2", "benchmark.max_new_tokens=4", "benchmark.bootstrap=50",
              "device=cpu"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny two-head policy run folder and a matched-head router trained on it."""
    folder = tmp_path_factory.mktemp("bench")
    make_tiny_run(folder / "run")
    rcfg = compose_config("router", f"policy={folder / 'run'}", "router.hidden_dim=16", "router.num_layers=2",
                          "router.epochs=2", "data.episodes=4", "data.val_episodes=2", "data.turns=1",
                          "data.max_new_tokens=4", "data.openings=2", "device=cpu")
    rl.train(rcfg, folder / "router")
    return folder / "run", folder / "router"


def bench_cfg(*overrides):
    return compose_config("benchmark", *TINY_BENCH, *overrides)


def test_benchmark_runs_end_to_end_and_writes_every_report(tiny_run, tmp_path):
    run, router = tiny_run
    results = bm.run_benchmark(bench_cfg(f"policy={run}", f"router={router}"), tmp_path)
    for name in ("benchmark.json", "benchmark.md", "benchmark.png", "router_weights.png", "episodes.jsonl"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    labels = ["Base model", "always-DIRECT", "always-INTERACTIVE", "Equal blend", "Persona-judge", "Router",
              "Online router (oracle: reads the reward)"]
    assert list(saved["rows"]) == labels
    assert list(saved["rows"].values()) == ["base", "head_direct", "head_interactive", "blend", "persona_judge",
                                            "router", "online_router"]
    judge = saved["row_statistics"]["Persona-judge"]
    assert judge["variant"] == "exact sampling" and judge["block"] == 4 and judge["blocks"] >= 1
    assert 0 <= judge["accepted drafts per block"] <= 4 and 1 <= judge["tokens per block"] <= 5
    for row in saved["report"]["rows"].values():
        for key in ("direct", "interactive", "mean"):
            stat = row["satisfaction"][key]
            assert 0 <= stat["low"] <= stat["value"] <= stat["high"] <= 1
        assert row["satisfaction"]["direct"]["n"] == 4
    for label in ("Router", "Online router (oracle: reads the reward)"):
        st = saved["routers"][label]
        assert 0 <= st["accuracy_turn1"] <= 1 and 0 <= st["accuracy"] <= 1
        assert sum(st["mean_weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert len(st["weights_by_turn"]["direct"]) == 2
    assert set(saved["routers"]) == {"Router", "Online router (oracle: reads the reward)"}
    # both router rows start each episode from the same router weights
    episodes = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 7 * 8 and all("states" not in e for e in episodes)
    first = {name: [e["weights"][0] for e in episodes if e["driver"] == name] for name in ("router", "online_router")}
    torch.testing.assert_close(torch.tensor(first["router"]), torch.tensor(first["online_router"]))
    # every row met the same openings
    openings = {tuple(m["content"] for m in e["final"][:3]) for e in episodes}
    assert len(openings) == 8
    table = (tmp_path / "benchmark.md").read_text()
    assert "| Policy | Direct stu. | Interactive stu. | Mean |" in table
    for label in labels:
        assert f"| {label} |" in table
    assert table.count("**") >= 2  # the best mean is bold
    assert saved["oracle_rows"] == ["Online router (oracle: reads the reward)"]
    assert "read the env's reward (the student's satisfaction) during the dialogue" in table
    assert "- **Persona-judge**: variant exact sampling, block 4, blocks" in table
    wins = saved["win_rates"]["rates"]
    assert set(wins) == {"Persona-judge", "Router", "Online router (oracle: reads the reward)"}
    assert set(wins["Router"]) == {"always-DIRECT", "always-INTERACTIVE", "Equal blend"}
    assert all(0 <= r["value"] <= 1 and r["n"] == 8 for row in wins.values() for r in row.values())
    assert "| Policy | vs always-DIRECT | vs always-INTERACTIVE | vs Equal blend |" in table
    assert results["markdown"] == table


def test_without_a_router_the_router_rows_are_skipped_and_rows_come_from_config(tiny_run, tmp_path):
    run, _ = tiny_run
    cfg = bench_cfg(f"policy={run}", "benchmark.entries.base=null", "benchmark.entries.persona_judge=null",
                    "benchmark.entries.heads.heads=[interactive]", "benchmark.entries.heads.label='just-{head}'",
                    "+benchmark.entries.fixed_mix={_target_: tests.algorithms.test_benchmark.FixedMix, weights: [0.25, 0.75]}")
    results = bm.run_benchmark(cfg, tmp_path)
    assert results["rows"] == {"just-interactive": "head_interactive", "Equal blend": "blend", "fixed mix": "fixed_mix"}
    mix = results["routers"]["fixed mix"]
    assert mix["mean_weights"] == pytest.approx({"direct": 0.25, "interactive": 0.75})
    assert mix["accuracy"] == pytest.approx(0.5)  # argmax is always 'interactive': right for half the students
    assert (tmp_path / "router_weights.png").is_file()


def test_persona_router_and_benchmark_on_the_tiny_model_write_every_report(tmp_path):
    run = make_tiny_run(tmp_path / "run", env="persona")
    rcfg = compose_config("router", "env=persona", f"policy={run}", "router.method=pairwise", "router.hidden_dim=16",
                          "router.num_layers=2", "router.epochs=2", "data.episodes=5", "data.val_episodes=5",
                          "data.max_new_tokens=4", "device=cpu")
    summary = rl.train(rcfg, tmp_path / "router")
    assert summary["train_prefixes"] == 5 and "preference" in summary["val"]  # one turn per persona episode
    cfg = compose_config("benchmark", "env=persona", f"policy={run}", f"router={tmp_path / 'router'}",
                         "benchmark.contexts=5", "benchmark.turns=3", "benchmark.max_new_tokens=4",
                         "benchmark.bootstrap=20", "device=cpu")
    results = bm.run_benchmark(cfg, tmp_path / "bench")
    assert "1 generated turn each (the env's limit; benchmark.turns=3)" in results["markdown"]
    assert "Online router (oracle: reads the reward)" not in results["rows"]  # its Hedge steps need a second turn
    aggregates = results["report"]["aggregates"]
    assert results["report"]["base"] == "Base model" and "delta_base" in aggregates  # roles, not row names
    assert results["markdown"].count("| **") == 5  # each facet head's own cell of the Q table in bold
    for name in ("benchmark.json", "benchmark.md", "benchmark.png", "router_weights.png", "episodes.jsonl"):
        assert (tmp_path / "bench" / name).is_file(), name
    wins = results["win_rates"]["rates"]["Router"]
    assert len(wins) == 6 and all(r["n"] == 5 for r in wins.values())  # the blend and the five facet heads
    assert results["routers"]["Router"]["entropy"] >= 0
    assert "Persona-judge" in results["rows"] and "vs Equal blend" in results["markdown"]


class FixedMix:
    """A user-defined row: the same head weights for every dialogue (added through the config only)."""

    def __init__(self, weights, label="fixed mix", name="fixed_mix"):
        self.weights, self.label, self.name = list(weights), label, name

    def build(self, ctx):
        def select(observations, turn):
            return {"weights": torch.tensor([self.weights] * len(observations))}

        return [bm.Contender(self.name, self.label, select, mixes=True)]


# ---- metrics on known records -----------------------------------------------------------------


def record(student_type, labels, weights=(), topic="t"):
    dialogue = [{"role": "system", "content": "Topic: t"}, {"role": "teacher", "content": "Hello."},
                {"role": "student", "content": "hi"}]
    facts = ["The sun is a star that burns hydrogen into helium.", "Its light takes eight minutes to reach us.",
             "Its core is about fifteen million degrees hot.", "It holds most of the solar system's mass."]
    for i, _ in enumerate(labels):  # distinct explanations: saying the previous turn again is repetition
        dialogue += [{"role": "teacher", "content": facts[i % len(facts)]}, {"role": "student", "content": "ok"}]
    return EpisodeRecord(driver="x", options={}, label={"persona": student_type}, start={"topic": topic},
                         actions=["The sun is a star."] * len(labels), infos=[{"satisfaction": lab} for lab in labels],
                         final=dialogue, weights=[list(w) for w in weights])


def tutoring_task():
    from envs.judges import HeuristicSatisfactionJudge, HeuristicStyleJudge
    from envs.students import ScriptedStudent

    personas = [{"name": "direct", "label": "DIRECT"}, {"name": "interactive", "label": "INTERACTIVE"}]
    return TutoringTask(personas, ScriptedStudent(), HeuristicSatisfactionJudge(), HeuristicStyleJudge())


def test_bootstrap_intervals_on_known_records():
    # two topics, each played by both student types: the intervals resample topics
    records = [record("direct", ["good", "good"], topic="a"), record("direct", ["good", "bad"], topic="b"),
               record("interactive", ["bad", "neutral"], topic="a"), record("interactive", ["bad", "bad"], topic="b")]
    report = tutoring_task().evaluate({"x": records}, heads=[], bootstrap=500, confidence=0.95, seed=0)
    sat = report.metrics["rows"]["x"]["satisfaction"]
    assert sat["direct"]["value"] == 0.75 and sat["interactive"]["value"] == 0.0
    assert sat["mean"]["value"] == 0.375
    assert sat["interactive"]["low"] == sat["interactive"]["high"] == 0.0
    assert 0.5 <= sat["direct"]["low"] < 0.75 < sat["direct"]["high"] <= 1.0
    assert sat["mean"]["low"] <= 0.375 <= sat["mean"]["high"]
    assert sat["direct"]["n"] == 2
    units = report.metrics["units"]
    assert units["satisfaction/direct"]["x"] == {"a": [2.0, 2.0], "b": [1.0, 2.0]}
    assert units["satisfaction/mean"]["x"] == {"a": [2.0, 4.0], "b": [1.0, 4.0]}
    assert report.metrics["rows"]["x"]["style"] == {"direct": 1.0, "interactive": 0.0}  # every turn explains
    again = tutoring_task().evaluate({"x": records}, heads=[], bootstrap=500, confidence=0.95, seed=0)
    assert again.metrics == report.metrics


def test_router_statistics_on_known_weights():
    records = [record("direct", ["good", "good"], [[0.8, 0.2], [0.4, 0.6]]),
               record("interactive", ["good", "good"], [[0.3, 0.7], [0.1, 0.9]])]
    st = bm.router_statistics(records, ["direct", "interactive"])
    assert st["accuracy_turn1"] == 1.0 and st["accuracy"] == 0.75
    assert st["mean_weights"] == pytest.approx({"direct": 0.4, "interactive": 0.6})
    torch.testing.assert_close(torch.tensor(st["weights_by_turn"]["direct"]), torch.tensor([[0.8, 0.2], [0.4, 0.6]]))
    assert st["mean_weights_by_persona"]["interactive"] == pytest.approx({"direct": 0.2, "interactive": 0.8})
    assert bm.router_statistics([record("direct", ["good"])], ["direct", "interactive"]) == {}


def test_online_selector_moves_weights_with_the_reactions(tiny_policy):
    policy, tok = tiny_policy
    router = Router(policy.config.hidden_size, 3, hidden_dim=8, num_layers=3, dropout=0.1)
    from agents import RouterFeatures

    selector = bm._OnlineSelector(router, RouterFeatures(policy, tok), TutoringTask, lr=2.0, floor=0.0)
    obs = [[{"role": "teacher", "content": "Hi"}, {"role": "student", "content": "hey"}]] * 2
    start = selector(obs, 0)["weights"]
    torch.testing.assert_close(start[0], start[1])
    selector.observe([{}, {}], [1.0, -1.0])  # the first dialogue's student was pleased, the second's not
    after = selector(obs, 1)["weights"]
    top = int(start[0].argmax())
    assert after[0, top] > start[0, top] > after[1, top]
    torch.testing.assert_close(after.sum(-1), torch.ones(2))


def test_the_papers_protocol_is_a_preset_and_the_report_names_it(tiny_run, tmp_path):
    run, _ = tiny_run
    cfg = compose_config("benchmark", "benchmark_settings@benchmark=paper", f"policy={run}")
    assert cfg.benchmark.protocol == "paper" and cfg.benchmark.turns == 6
    with pytest.raises(ValueError, match="benchmark.turns"):
        bm.run_benchmark(compose_config("benchmark", "benchmark_settings@benchmark=paper", "benchmark.turns=7",
                                        f"policy={run}"), tmp_path / "refused")
    with pytest.raises(ValueError, match="benchmark.protocol"):
        bm.run_benchmark(bench_cfg("benchmark.protocol=mine", f"policy={run}"), tmp_path / "refused")
    small = [o for o in TINY_BENCH if not o.startswith("benchmark.turns")]
    cfg = compose_config("benchmark", "benchmark_settings@benchmark=paper", *small, f"policy={run}",
                         "benchmark.entries.base=null", "benchmark.entries.persona_judge=null", "benchmark.contexts=1")
    results = bm.run_benchmark(cfg, tmp_path / "paper")
    assert results["protocol"] == "paper" and results["turns"] == 6
    assert results["markdown"].startswith("Protocol: paper (000 Section 4.2.2")
