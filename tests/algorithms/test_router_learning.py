"""Router learning: the pure losses, the pairwise judges, toy problems with a known answer, and a tiny run."""

import json
import shutil

import pytest
import torch
from hydra.errors import ConfigCompositionException

import algorithms.router as rl
from agents import Router, RouterFeatures
from algorithms.components import build_task
from algorithms.losses import (
    bt_mixture_loss,
    hedge_router_loss,
    hedge_step,
    hedge_targets,
    matched_head_loss,
    pairwise_log_losses,
    pairwise_preference_loss,
    reaction_head_losses,
    soft_cross_entropy,
)
from algorithms.router_data import PrefixExample, matched_head, prefix_features, route
from configs.validation import ConfigError
from envs import judges
from envs.chat import JsonReply
from envs.tasks import TutoringTask
from tests.conftest import compose_config, group_options, make_tiny_run

TINY_ROUTER = ["router.hidden_dim=16", "router.num_layers=2", "router.epochs=3", "router.batch_size=4",
               "data.episodes=4", "data.val_episodes=2", "data.turns=2", "data.max_new_tokens=4", "data.openings=0",
               "device=cpu"]


def router_cfg(policy_dir, *overrides):
    return compose_config("router", f"policy={policy_dir}", *TINY_ROUTER, *overrides)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


# ---- losses -----------------------------------------------------------------------------------


def test_matched_loss_is_cross_entropy_to_the_matched_head():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log(torch.tensor(2.0))) / 2
    torch.testing.assert_close(matched_head_loss(logits, torch.tensor([0, 1])), expected)


def test_pairwise_loss_values():
    delta = torch.tensor([[1.0, -1.0], [0.5, -0.5]])
    onehot = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(pairwise_preference_loss(onehot, delta), torch.tensor(-0.75))
    uniform = torch.full((2, 2), 0.5)
    # w.delta = 0 on both rows; entropy log 2 each: loss = -lambda log 2
    torch.testing.assert_close(pairwise_preference_loss(uniform, delta, 0.1), -0.1 * torch.log(torch.tensor(2.0)))


def test_hedge_targets_are_multiplicative_weights():
    prior = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    losses = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    got = hedge_targets(prior, losses, tau=1.0)
    e = torch.exp(torch.tensor(-1.0))
    want = torch.stack([torch.stack([1 / (1 + e), e / (1 + e)]),
                        torch.stack([0.9 * e / (0.9 * e + 0.1), 0.1 / (0.9 * e + 0.1)])])
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got.sum(-1), torch.ones(2))
    # equal losses leave the prior unchanged; a huge tau too
    torch.testing.assert_close(hedge_targets(prior, torch.ones(2, 2), 0.3), prior)
    torch.testing.assert_close(hedge_targets(prior, losses, 1e9), prior)


def test_hedge_router_loss_targets_are_detached_and_soft_ce_matches_ce_on_one_hot():
    logits = torch.tensor([[0.3, -0.2, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 1.0]])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([2]))
    torch.testing.assert_close(soft_cross_entropy(logits, target), ce)
    loss = hedge_router_loss(logits, torch.tensor([[1.0, 1.0, 0.0]]), tau=0.5)
    loss.backward()
    assert logits.grad[0, 2] < 0  # pushes weight towards the lowest-loss head


def test_micro_losses_on_hand_computed_cases():
    # log-loss scale of the judged preferences: a clear win costs 0, a tie log 2, a clear loss -log 0.01
    torch.testing.assert_close(pairwise_log_losses(torch.tensor([[1.0, 0.0, -1.0]])),
                               torch.tensor([[0.0, 0.6931472, 4.6051702]]))
    # Eq. 6 with prior (1/2, 1/2), losses (0, log 2), tau 1: targets (1/2, 1/4) / (3/4) = (2/3, 1/3)
    targets = hedge_targets(torch.tensor([[0.5, 0.5]]), pairwise_log_losses(torch.tensor([[1.0, 0.0]])), tau=1.0)
    torch.testing.assert_close(targets, torch.tensor([[2 / 3, 1 / 3]]))
    # Stage 1, Eqs. 3-5: f = (1/4, 3/4), margins (0, log 3) -> sigma = (1/2, 3/4), mixture 11/16;
    # L = -log(11/16) + 0.5 (1/4 log 1/4 + 3/4 log 3/4)
    f, m = torch.tensor([[0.25, 0.75]]), torch.tensor([[0.0, float(torch.log(torch.tensor(3.0)))]])
    expected = -torch.log(torch.tensor(11 / 16)) + 0.5 * (0.25 * torch.log(torch.tensor(0.25))
                                                          + 0.75 * torch.log(torch.tensor(0.75)))
    torch.testing.assert_close(bt_mixture_loss(f, m, alpha=0.5), expected)
    # a router sure of the right head has a near-zero likelihood term; alpha=0 leaves only that term
    assert bt_mixture_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[20.0, -20.0]]), alpha=0.0) < 1e-6


def test_micro_trains_towards_hedge_targets_of_the_fixed_prior():
    data = toy_data(4, 0)
    rc = rl.RouterConfig(method="micro", hedge_tau=0.5)
    logits = torch.tensor([[1.0, -1.0], [0.5, 0.0], [0.0, 2.0], [-1.0, 1.0]], requires_grad=True)
    out = type("Out", (), {"logits": logits, "weights": torch.softmax(logits, -1)})()
    prior = torch.tensor([[0.9, 0.1]] * 4)
    with_prior = rl.method_loss("micro", out, rl.RouterData(data.features, data.target, data.turn, data.deltas,
                                                            data.head_losses, prior), rc)
    expected = soft_cross_entropy(logits, hedge_targets(prior, data.head_losses, 0.5))
    torch.testing.assert_close(with_prior, expected)
    own = rl.method_loss("micro", out, data, rc)  # no prior yet: the router's own weights, as hedge
    torch.testing.assert_close(own, hedge_router_loss(logits, data.head_losses, 0.5))
    assert not torch.allclose(with_prior, own)


def test_budget_keeps_at_most_b_prefixes_per_persona_label():
    examples = [PrefixExample(observation=[], persona=p, context={}, episode=i, turn=0, driver=p, matched=True,
                              state={}) for i, p in enumerate(["direct"] * 7 + ["interactive"] * 3)]
    kept = rl.within_budget(examples, 4, seed=0)
    assert [e.persona for e in kept].count("direct") == 4 and [e.persona for e in kept].count("interactive") == 3
    assert kept == rl.within_budget(examples, 4, seed=0) and rl.within_budget(examples, None, 0) == examples
    assert [e.episode for e in kept] == sorted(e.episode for e in kept)  # original order kept


def test_online_hedge_step_follows_reactions():
    w = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.5, 0.5]])
    reward = torch.tensor([1.0, -1.0, -1.0])
    new = hedge_step(w, reaction_head_losses(w, reward), lr=2.0)
    assert new[0, 0] > 0.7 and new[1, 0] < 0.7  # good: more of the same; bad: move away
    torch.testing.assert_close(new[2], torch.tensor([0.5, 0.5]))  # equal weights: no evidence
    torch.testing.assert_close(hedge_step(w, torch.randn(3, 2), lr=0.0), w)
    floored = hedge_step(torch.tensor([[1.0, 0.0]]), torch.zeros(1, 2), lr=1.0, floor=0.1)
    torch.testing.assert_close(floored, torch.tensor([[0.95, 0.05]]))


# ---- pairwise judges --------------------------------------------------------------------------


def comparison(first_reply, second_reply):
    prefix = [{"role": "teacher", "content": "Hi"}, {"role": "student", "content": "hey"}]
    return judges.PairwiseComparison("volcanoes", prefix, "turn one", "turn two", first_reply, second_reply)


def test_heuristic_pairwise_judge_uses_the_preference_levels():
    good = "Ohh, okay, that makes so much sense now! I get it, that's cool."
    bad = "Ugh, whatever. I don't know."
    judge = judges.HeuristicPairwiseJudge()
    scores = judge.compare_batch([comparison(good, bad), comparison(bad, good), comparison(good, good)])
    assert scores == [1.0, -1.0, 0.0]
    assert isinstance(judge, judges.PairwiseJudge)


class FakeClient:
    """Always prefers whichever option shows the word 'first', and counts what it was asked."""

    def __init__(self, verdict_for_first="A much better"):
        self.calls = []
        self.verdict_for_first = verdict_for_first

    def chat_json_batch(self, conversations, *, default, max_tokens=None, temperature=None):
        self.calls.append(conversations)
        out = []
        for convo in conversations:
            text = convo[-1]["content"]
            a_first = "Option A (teacher): first" in text
            verdict = self.verdict_for_first if a_first else self.verdict_for_first.replace("A", "B", 1)
            out.append(JsonReply(data={"reason": "x", "verdict": verdict}, raw="", ok=True))
        return out


def test_llm_pairwise_judge_randomises_order_and_maps_back():
    judge = judges.LLMPairwiseJudge(client=FakeClient("A slightly better"), seed=3)
    items = [judges.PairwiseComparison("t", [], "first candidate", "second candidate", "r1", "r2") for _ in range(40)]
    scores = judge.compare_batch(items)
    assert scores == [0.5] * 40  # the first candidate wins whatever side it was shown on
    shown_first = ["Option A (teacher): first" in c[-1]["content"] for c in judge.client.calls[0]]
    assert 5 < sum(shown_first) < 35  # both orders were used
    assert judge.counter.calls == 40 and judge.counter.fallbacks == 0


class SlotAClient:
    """A judge with pure position bias: always 'A much better'."""

    def __init__(self):
        self.calls = []

    def chat_json_batch(self, conversations, *, default, max_tokens=None, temperature=None):
        self.calls.append(conversations)
        return [JsonReply(data={"reason": "x", "verdict": "A much better"}, raw="", ok=True) for _ in conversations]


def test_a_judge_that_always_prefers_slot_a_gives_zero_mean_label_and_a_slot_a_rate_of_one():
    judge = judges.LLMPairwiseJudge(client=SlotAClient(), seed=0)
    scores = judge.compare_batch([judges.PairwiseComparison("q", [], "x", "y") for _ in range(400)])
    assert abs(sum(scores) / len(scores)) < 0.1 and set(scores) == {1.0, -1.0}  # the swap is undone
    assert judge.slot_a_rate == 1.0


def test_persona_comparisons_show_the_judge_the_request_only():
    task = build_task(compose_config("opsd", "env=persona"))
    batch = task.make_batch(1, split="router_train")
    obs, infos = batch.reset(seed=0)
    system = obs[0][0]["content"]
    c = task.comparison(obs[0], infos[0], "Answer one.", "Answer two.", "critique one", "critique two")
    assert c.topic == obs[0][-1]["content"] and c.prefix == [{"role": "user", "content": c.topic}]
    assert not c.has_replies  # the critiques name the facet: never shown
    client = SlotAClient()
    judges.LLMPairwiseJudge(client=client).compare_batch([c])
    shown = json.dumps(client.calls[0])
    assert system not in shown and "critique" not in shown and infos[0]["label"]["persona"] not in shown.lower()


def test_heuristic_judge_compares_fit_to_the_question_without_replies():
    judge = judges.HeuristicPairwiseJudge()
    question = "How do volcanoes form along tectonic plate boundaries?"
    on_topic = "Volcanoes form where tectonic plates pull apart or dive under each other, letting magma rise."
    off_topic = "My favourite recipe uses basil. My favourite recipe uses basil. My favourite recipe uses basil."
    scores = judge.compare_batch([judges.PairwiseComparison(question, [], on_topic, off_topic),
                                  judges.PairwiseComparison(question, [], off_topic, on_topic),
                                  judges.PairwiseComparison(question, [], on_topic, on_topic)])
    assert scores == [1.0, -1.0, 0.0]
    assert judges.question_fit(question, off_topic) == 0.0 < judges.question_fit(question, on_topic)


def test_llm_pairwise_judge_falls_back_to_a_tie_on_bad_replies():
    class Broken:
        def chat_json_batch(self, conversations, *, default, max_tokens=None, temperature=None):
            return [JsonReply(data={"verdict": "no idea"}, raw="", ok=True), JsonReply(data={}, raw="?", ok=False)]

    judge = judges.LLMPairwiseJudge(client=Broken())
    assert judge.compare_batch([comparison("a", "b"), comparison("a", "b")]) == [0.0, 0.0]
    assert judge.counter.fallbacks == 2
    assert judges.parse_verdict({"verdict": "B much better"}) == (-1.0, None)
    assert judges.parse_verdict({"verdict": 0.5}) == (0.5, None)
    assert judges.parse_verdict({"verdict": "A > B"})[0] is None


# ---- toy problems with a known answer ---------------------------------------------------------


def toy_data(n, seed, dim=8):
    """Features whose first coordinate encodes the student type (head 0 vs 1), the rest noise."""
    g = torch.Generator().manual_seed(seed)
    target = torch.arange(n) % 2
    features = torch.randn(n, dim, generator=g) * 0.5
    features[:, 0] += torch.where(target == 0, 1.5, -1.5)
    deltas = torch.where(torch.nn.functional.one_hot(target, 2).bool(), 1.0, -0.5)
    head_losses = (1.0 - torch.where(torch.nn.functional.one_hot(target, 2).bool(), 1.0, -1.0)) / 2
    return rl.RouterData(features, target, torch.arange(n) % 3, deltas, head_losses)


@pytest.mark.parametrize("method", rl.METHODS)
def test_each_method_learns_the_toy_problem(method):
    rc = rl.RouterConfig(method=method, hidden_dim=32, num_layers=2, dropout=0.0, lr=3e-3, epochs=25, batch_size=16,
                         select_by="accuracy", entropy_coef=0.01, hedge_tau=0.5)
    fit = rl.fit_router(toy_data(128, 0), toy_data(64, 1), rc, num_heads=2, seed=0)
    losses = [row["train_loss"] for row in fit.history]
    assert losses[-1] < losses[0] - 0.05, losses
    assert fit.best["accuracy"] >= 0.95
    assert fit.best["matched_weight"] > 0.6
    if method == "matched":
        assert fit.best["accuracy_turn1"] >= 0.95


def test_selection_keeps_the_best_validation_epoch():
    rc = rl.RouterConfig(method="pairwise", hidden_dim=16, num_layers=2, epochs=6, select_by="auto")
    assert rc.select_by == "preference"
    fit = rl.fit_router(toy_data(32, 0), toy_data(16, 1), rc, num_heads=2, seed=0)
    best = max(row["val/preference"] for row in fit.history)
    assert fit.best["preference"] == best == fit.history[fit.best_epoch - 1]["val/preference"]
    torch.testing.assert_close(rl.router_metrics(fit.router, toy_data(16, 1), rc)["preference"], best)


def test_an_envs_own_router_settings_apply_to_that_env_only():
    tutoring = rl.router_config(compose_config("router", "policy=somewhere"))[1]
    assert tutoring.episodes == 256  # configs/env_router/tutoring.yaml
    assert rl.router_config(compose_config("router", "policy=somewhere", "data.episodes=64"))[1].episodes == 64
    persona = rl.router_config(compose_config("router", "policy=somewhere", "env=persona"))[1]
    assert persona == rl.RouterDataConfig()  # no file of its own: the dataclass's defaults


def test_bad_router_config_values_get_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="router.method='vote' is not allowed: must be one of"):
        rl.router_config(router_cfg("somewhere", "router.method=vote"))
    with pytest.raises(ConfigCompositionException, match="router.learning_rate"):
        router_cfg("somewhere", "router.learning_rate=1")
    with pytest.raises(ConfigError, match="data.openings"):
        rl.router_config(router_cfg("somewhere", "data.openings=-1"))
    with pytest.raises(ConfigCompositionException, match="data.openings=many"):
        router_cfg("somewhere", "data.openings=many")
    no_policy = compose_config("router")
    with pytest.raises(ValueError, match="Set policy="):
        rl.train(no_policy, tmp_path)
    with pytest.raises(ValueError, match="No head is named after persona"):
        matched_head(["shared"], "direct")


# ---- the router never sees the hidden label ---------------------------------------------------


def test_router_output_ignores_the_hidden_label(tiny_policy):
    policy, tok = tiny_policy
    messages = [{"role": "system", "content": "Topic: volcanoes"}, {"role": "teacher", "content": "What erupts?"},
                {"role": "student", "content": "Ooh, let me think... magma?"}]
    examples = [PrefixExample(observation=[dict(m) for m in messages], persona=t, context={"topic": "volcanoes"},
                              episode=i, turn=0, driver="a", matched=bool(i), state={})
                for i, t in enumerate(["direct", "interactive"])]
    features = RouterFeatures(policy, tok)
    task = TutoringTask
    data = rl.build_router_data(prefix_features(features, task, [e.observation for e in examples]), examples,
                                ["direct", "interactive", "c"])
    assert data.target.tolist() == [0, 1]  # the labels differ ...
    router = Router(policy.config.hidden_size, 3, hidden_dim=16, num_layers=3, dropout=0.1)
    out = route(router, features, task, [e.observation for e in examples])
    assert torch.equal(data.features[0], data.features[1])  # ... the inputs do not
    assert torch.equal(out.weights[0], out.weights[1])


# ---- a tiny end-to-end run --------------------------------------------------------------------


def test_micro_preset_runs_on_a_budget(tiny_run, tmp_path):
    cfg = compose_config("router", "router_settings@router=micro", f"policy={tiny_run}", *TINY_ROUTER[4:],
                         "router.budget=2", "router.epochs=2")
    rc, _ = rl.router_config(cfg)
    assert (rc.method, rc.hidden_dim, rc.num_layers, rc.batch_size, rc.hedge_loss) == (
        "micro", 128, 2, 32, "log_pairwise")
    summary = rl.train(cfg, tmp_path)
    assert summary["method"] == "micro" and summary["train_prefixes"] == 4  # 2 per student type
    assert rl.load_router(tmp_path).hparams["hidden_dim"] == 128


@pytest.mark.parametrize("method", ["matched", "pairwise", "hedge"])
def test_tiny_router_run_writes_a_loadable_router(tiny_run, tmp_path, method):
    out = tmp_path / method
    summary = rl.train(router_cfg(tiny_run, f"router.method={method}"), out)
    router = rl.load_router(out)
    assert router.num_heads == 2 and router.hparams["hidden_dim"] == 16
    assert summary["train_prefixes"] == 8 and summary["val_prefixes"] == 4
    assert 1 <= summary["best_epoch"] <= 3 and 0 <= summary["val"]["accuracy"] <= 1
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    train = [r for r in rows if r["split"] == "train"]
    assert sorted(r["persona"] for r in train) == ["direct"] * 4 + ["interactive"] * 4
    assert sum(r["matched"] for r in train) == 4  # half matched, half mismatched
    assert all(r["driver"] == r["persona"] for r in train if r["matched"])
    assert all(r["driver"] != r["persona"] for r in train if not r["matched"])
    assert all("state" not in r and "feature" not in r for r in rows)  # nor do the kept features
    assert summary["features_from_rollouts"] == 12  # every played prefix's feature came from its rollout
    if method != "matched":
        assert all(len(r["deltas"]) == 2 and set(r["deltas"]) <= set(judges.PREFERENCE_LEVELS) for r in rows)
        assert all(len(r["candidates"]) == 3 for r in rows)
        assert "preference" in summary["val"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()


def test_a_router_run_can_reuse_the_prefixes_of_an_earlier_one(tiny_run, tmp_path):
    first = tmp_path / "pairwise"
    rl.train(router_cfg(tiny_run, "router.method=pairwise"), first)
    again = tmp_path / "again"
    summary = rl.train(router_cfg(tiny_run, "router.method=hedge", "router.features=last_message",
                                  f"prefixes={first}"), again)
    assert (summary["train_prefixes"], summary["val_prefixes"]) == (8, 4)
    assert summary["rollout_s"] < 1  # nothing was played or scored again
    assert (again / "data.jsonl").read_text() == (first / "data.jsonl").read_text()
    assert rl.load_router(again).hparams["pooling"] == "last_message"
    assert summary["features_from_rollouts"] == 0  # reused prefixes and other poolings are computed

    matched = tmp_path / "matched"
    rl.train(router_cfg(tiny_run), matched)  # matched targets: no candidates are written
    with pytest.raises(ValueError, match="no candidate scores"):
        rl.train(router_cfg(tiny_run, "router.method=pairwise", f"prefixes={matched}"), tmp_path / "x")
    other = shutil.copytree(tiny_run, tmp_path / "other_policy")
    with pytest.raises(ValueError, match="collected with policy="):
        rl.train(router_cfg(other, f"prefixes={first}"), tmp_path / "y")
    with pytest.raises(ValueError, match="not a finished router run folder"):
        rl.train(router_cfg(tiny_run, f"prefixes={tmp_path}"), tmp_path / "z")


def test_openings_add_first_turn_prefixes_without_generating(tiny_run, tmp_path):
    rc, data = rl.router_config(router_cfg(tiny_run, "data.openings=null"))
    assert data.opening_counts(rc.needs_candidates) == (512, 256)  # matched: 512, val in proportion
    rc, data = rl.router_config(router_cfg(tiny_run, "data.openings=null", "router.method=hedge"))
    assert data.opening_counts(rc.needs_candidates) == (0, 0)  # a candidate method would score each one

    first = tmp_path / "matched"
    summary = rl.train(router_cfg(tiny_run, "data.openings=4"), first)
    assert (summary["train_prefixes"], summary["val_prefixes"]) == (8 + 4, 4 + 2)
    assert summary["openings"] == {"train": 4, "val": 2}
    rows = [json.loads(line) for line in (first / "data.jsonl").read_text().splitlines()]
    openings = [r for r in rows if r["driver"] is None]
    assert len(openings) == 6 and all(r["turn"] == 0 and not r["matched"] for r in openings)
    train_openings = [r for r in openings if r["split"] == "train"]
    assert sorted(r["persona"] for r in train_openings) == ["direct", "direct", "interactive", "interactive"]
    for r in openings:  # a bare reset: the seed teacher turn and the student's reaction, nothing generated
        assert [m["role"] for m in r["observation"]] == ["system", "teacher", "student"]
        assert r["observation"][1]["content"] == r["context"]["seed_turn"]

    # reusing the run plays nothing again, keeps its played prefixes and makes this run's openings
    again = rl.train(router_cfg(tiny_run, "data.openings=2", f"prefixes={first}"), tmp_path / "again")
    assert (again["train_prefixes"], again["val_prefixes"], again["rollout_s"] < 1) == (8 + 2, 4 + 1, True)

    # a candidate method scores its openings like any other prefix
    scored = rl.train(router_cfg(tiny_run, "router.method=pairwise", "data.openings=2"), tmp_path / "pairwise")
    assert scored["train_prefixes"] == 10
    rows = [json.loads(line) for line in (tmp_path / "pairwise" / "data.jsonl").read_text().splitlines()]
    assert all(len(r["deltas"]) == 2 and len(r["candidates"]) == 3 for r in rows if r["driver"] is None)


@pytest.mark.parametrize("judge", [j for j in group_options("pairwise_judge") if j != "custom"])
def test_every_pairwise_judge_config_instantiates(judge, monkeypatch):
    from hydra.utils import instantiate

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    extra = ["chat@pairwise_judge.client=openai"] if judge == "llm" else []
    cfg = router_cfg("somewhere", f"pairwise_judge={judge}", "router.method=pairwise", *extra)
    built = instantiate(cfg.pairwise_judge)  # chat clients connect lazily: nothing heavy happens here
    assert isinstance(built, judges.PairwiseJudge)
    if judge == "llm":
        assert type(built.client).__name__ == "OpenAIChatClient"
