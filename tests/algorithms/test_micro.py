"""MiCRo at the reward level: pairs, the two stages on a problem with a known answer, the run and its benchmark row."""

import json

import pytest
import torch

import algorithms.benchmark as bm
import algorithms.micro as mc
from agents import MultiHeadPolicy, generate
from tests.conftest import compose_config, make_candidates_run

SETTINGS = mc.MicroConfig(num_heads=2, router_hidden=16, epochs=40, batch_size=32, stage2_epochs=5, budget=40,
                          tau=0.1, lr=1e-2)


def test_candidate_pairs_drop_ties_and_put_the_better_first():
    assert mc.candidate_pairs([1.0, 0.0, 1.0, -1.0]) == [(0, 1), (0, 3), (2, 1), (1, 3), (2, 3)]
    assert mc.candidate_pairs([0.5, 0.5]) == []


def two_groups(n, seed, dim=6):
    """Two sub-populations that disagree: group 0 prefers candidates along +u, group 1 along -u.

    The prefix feature tells the groups apart (its first coordinate), so a router can pick the right
    head, while one Bradley-Terry head cannot fit both (MiCRo's Theorem 3.2).
    """
    g = torch.Generator().manual_seed(seed)
    group = torch.arange(n) % 2
    context = torch.randn(n, dim, generator=g) * 0.3
    context[:, 0] += torch.where(group == 0, 2.0, -2.0)
    a, b = torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)
    sign = torch.where(group == 0, 1.0, -1.0)
    a_wins = (sign * (a[:, 1] - b[:, 1])) > 0
    chosen = torch.where(a_wins[:, None], a, b)
    rejected = torch.where(a_wins[:, None], b, a)
    return mc.PreferencePairs(context, chosen, rejected, group)


def test_a_routed_mixture_fits_disagreeing_groups_where_one_head_and_a_static_mixture_cannot():
    train, val = two_groups(512, 0), two_groups(256, 1)
    labels = ["g0", "g1"]
    single = mc.fit_stage1(train, SETTINGS, num_heads=1, seed=0)
    static = mc.fit_stage1(train, SETTINGS, num_heads=2, static=True, seed=0)
    micro = mc.fit_stage1(train, SETTINGS, num_heads=2, seed=0)
    acc = {name: mc.pairwise_accuracy(m, val, labels)["routed"]["all"]
           for name, m in (("single", single), ("static", static), ("micro", micro))}
    assert acc["micro"] > 0.9 and acc["single"] < 0.65 and acc["static"] < 0.65, acc
    per_head = mc.pairwise_accuracy(micro, val, labels)["per_head"]
    assert max(per_head["g0"]) > 0.9 and max(per_head["g1"]) > 0.9  # one head per group
    budget = mc.per_label_budget(train, 40, seed=0)
    assert len(budget) == 80 and (budget.persona == 0).sum() == 40
    tuned = mc.fit_stage2(micro, budget, SETTINGS, seed=0)
    assert mc.pairwise_accuracy(tuned, val, labels)["routed"]["all"] > 0.9
    torch.testing.assert_close(tuned.heads.weight, micro.heads.weight)  # Stage 2 trains the router only
    with pytest.raises(ValueError, match="static mixture"):
        mc.fit_stage2(static, budget, SETTINGS)


def test_reward_model_round_trips_and_refuses_a_wrong_folder(tmp_path):
    model = mc.MixtureReward(8, 3, router_hidden=4)
    model.save_pretrained(tmp_path / "reward")
    again = mc.MixtureReward.from_pretrained(tmp_path / "reward")
    x = torch.randn(5, 8)
    torch.testing.assert_close(again.score(x, x), model.eval().score(x, x))
    with pytest.raises(FileNotFoundError, match="algorithms.micro"):
        mc.MixtureReward.from_pretrained(tmp_path)


def test_best_of_n_with_equal_scores_keeps_the_first_heads_sample(tiny):
    policy = MultiHeadPolicy(tiny.model, num_heads=2, head_names=["a", "b"], seed=0).eval()
    reward = mc.MixtureReward(policy.config.hidden_size, 2, router_hidden=4)
    with torch.no_grad():
        reward.heads.weight.zero_()  # every candidate scores the same: argmax keeps source 0
    decoder = mc.BestOfN(reward, tiny.tokenizer, ["a", "b", "blend"])
    prompts = ["Tell me about volcanoes.", "Hi"]
    picked = generate(policy, tiny.tokenizer, prompts, max_new_tokens=6, temperature=1.0, seed=5, decoder=decoder)
    first = generate(policy, tiny.tokenizer, prompts, head="a", max_new_tokens=6, temperature=1.0, seed=5)
    assert picked.completion_ids.tolist() == first.completion_ids.tolist()
    assert decoder.statistics() == {"picked a": 1.0, "picked b": 0.0, "picked blend": 0.0}


@pytest.fixture(scope="module")
def candidates_run(tmp_path_factory):
    """A tiny policy run and a router-run folder whose data.jsonl holds scored candidates."""
    return make_candidates_run(tmp_path_factory.mktemp("micro"))


def test_micro_run_writes_the_report_and_its_reward_model_drives_a_benchmark_row(candidates_run, tmp_path):
    run, router = candidates_run / "run", candidates_run / "router"
    cfg = compose_config("micro", f"policy={run}", f"candidates={router}", "device=cpu", "micro.epochs=3",
                         "micro.stage2_epochs=2", "micro.router_hidden=8", "micro.num_heads=2")
    summary = mc.train(cfg, tmp_path / "micro")
    assert summary["pairs"] == {"train": 24, "val": 12, "stage2": 24}  # 3 pairs per prefix, no tie
    assert set(summary["accuracy"]) == {"Single Bradley-Terry head", "Static mixture",
                                        "Best Stage-1 head per label (oracle)", "MiCRo, Stage 1",
                                        "MiCRo, Stage 2 (Hedge, budget)"}
    table = (tmp_path / "micro" / "micro.md").read_text()
    assert "| Model | direct | interactive | all |" in table and "nan" not in table
    oracle = summary["accuracy"]["Best Stage-1 head per label (oracle)"]
    assert min(oracle["direct"], oracle["interactive"]) <= oracle["all"] <= max(oracle["direct"], oracle["interactive"])
    bench = compose_config("benchmark", f"policy={run}", "benchmark.contexts=1", "benchmark.turns=1",
                           "benchmark.max_new_tokens=4", "benchmark.bootstrap=20", "device=cpu",
                           "benchmark.entries.base=null", "benchmark.entries.persona_judge=null",
                           f"+benchmark.entries.micro={{_target_: algorithms.micro.MicroRerank, path: {tmp_path / 'micro'}}}")
    results = bm.run_benchmark(bench, tmp_path / "bench")
    assert "MiCRo best-of-N" in results["rows"]
    picks = json.loads((tmp_path / "bench" / "benchmark.json").read_text())["row_statistics"]["MiCRo best-of-N"]
    assert sum(picks.values()) == pytest.approx(1.0, abs=0.01)


def test_missing_inputs_get_clear_errors(candidates_run, tmp_path):
    with pytest.raises(ValueError, match="Set policy="):
        mc.train(compose_config("micro", "candidates=x"), tmp_path)
    with pytest.raises(FileNotFoundError, match="router run folder"):
        mc.load_candidates(tmp_path)
    (tmp_path / "data.jsonl").write_text(json.dumps({"split": "train", "candidates": None, "head_scores": None}) + "\n")
    with pytest.raises(ValueError, match="router.method=pairwise"):
        mc.load_candidates(tmp_path)


def test_bad_settings_are_refused_with_the_key_named():
    from configs.validation import ConfigError

    with pytest.raises(ConfigError, match="micro.num_heads"):
        mc.MicroConfig(num_heads=0)
    with pytest.raises(ConfigError, match="micro.tau"):
        mc.MicroConfig(tau=0.0)
    with pytest.raises(ConfigError, match="router.budget"):
        import algorithms.router as rl

        rl.RouterConfig(budget=0)
