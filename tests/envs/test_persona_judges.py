"""Persona-setting judges: heuristics, span counting, LLM versions against a loopback server, Q metrics."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from envs.chat import OpenAIChatClient
from envs.data.persona import FACETS, PersonaRecord, content_stems
from envs.judges import (
    NEUTRAL_CRITIQUE,
    HeuristicPersonaCritic,
    HeuristicPersonaEvalJudge,
    HeuristicRubricExtractor,
    LLMPersonaCritic,
    LLMPersonaEvalJudge,
    LLMRubricExtractor,
    PersonaCritic,
    PersonaEvalJudge,
    ResponseQuery,
    RubricExtractor,
    RubricQuery,
    SpanJudgement,
    count_span_tokens,
    delta_base,
    delta_diag,
    diag_wins,
    heuristic_rubric,
    q_matrix,
    q_own,
    q_value,
)
from envs.judges.persona_llm import CRITIC_SYSTEM, JUDGE_SYSTEM, RUBRIC_SYSTEM
from tests.chat_server import MODEL, Reply

RECORD = PersonaRecord("hand-1", {
    "professional": "A 45-year-old marine biologist from Lisbon who studies coral reefs and teaches oceanography.",
    "sports": "They compete in amateur triathlons and swim in open water every morning.",
    "arts": "They play the cello in a community orchestra and love Baroque music.",
    "travel": "They have backpacked through Patagonia and Vietnam.",
    "culinary": "They bake sourdough bread and make their own kimchi.",
})
PROMPT = "How can I stay motivated when learning something new?"
ANSWERS = {
    "culinary": "Think of it like baking sourdough bread: you feed the starter every day, and the kimchi in my fridge "
                "only turns good after weeks of patience. Small daily feedings build the flavor.",
    "sports": "Treat it like training for a triathlon: an early swim in open water every morning, a steady pace, "
              "and racing yourself rather than others.",
    "arts": "Practice the way a cellist in an orchestra does: scales each day, rehearsals with others, and the joy "
            "of Baroque music once it clicks.",
    "travel": "When I backpacked through Patagonia I learned to take the trail one valley at a time; Vietnam taught "
              "me that getting lost is part of the journey.",
    "generic": "Set small goals, track your progress, and reward yourself when you reach a milestone. Consistency "
               "matters more than intensity.",
}


def _query(facet, answer, criteria=None, record=RECORD, prompt=PROMPT):
    return ResponseQuery(record, facet, prompt, answer, tuple(criteria) if criteria else None)


# --- Q metrics -------------------------------------------------------------------------------------

TABLE1 = {  # SPECS A8, columns professional / sports / arts / travel / culinary
    "no_rubric": {"professional": [.557, .354, .519, .505, .240], "sports": [.526, .540, .381, .546, .203],
                  "arts": [.377, .284, .600, .473, .181], "travel": [.485, .320, .515, .656, .119],
                  "culinary": [.481, .246, .356, .458, .590], "blend": [.432, .284, .551, .540, .310]},
    "rubric": {"professional": [.724, .533, .565, .693, .568], "sports": [.548, .627, .381, .570, .213],
               "arts": [.602, .436, .666, .551, .300], "travel": [.536, .502, .434, .651, .292],
               "culinary": [.384, .245, .377, .420, .671], "blend": [.522, .418, .547, .499, .402]},
}
BASE = [.620, .258, .407, .268, .091]


def _matrix(run):
    rows = {name: dict(zip(FACETS, values)) for name, values in TABLE1[run].items()}
    rows["base"] = dict(zip(FACETS, BASE))
    return q_matrix(rows)


def test_q_value_hand_cases():
    assert q_value(3, 1) == pytest.approx(2 / 5)  # default eps = 1 token
    assert q_value(0, 0) == 0.0
    assert q_value(2, 0, eps=0.0) == 1.0
    assert q_value(1, 3, eps=1e-9) == pytest.approx(-0.5)
    assert SpanJudgement(good_tokens=4, bad_tokens=0).q == pytest.approx(0.8)


def test_metrics_on_a_hand_computed_matrix():
    heads = np.array([[0.5, 0.1], [0.2, 0.7]])
    assert q_own(heads) == pytest.approx(0.6)
    assert delta_base(heads, [0.3, 0.1]) == pytest.approx(0.4)
    assert delta_diag(heads) == pytest.approx(((0.5 - 0.1) + (0.7 - 0.2)) / 2)
    assert diag_wins(heads, np.array([[0.6, 0], [0, 0.7]])) == (0, 1)  # a tie counts for neither
    with pytest.raises(ValueError, match="square"):
        q_own([[1.0, 2.0, 3.0]])


def test_table1_gives_table2():
    plain, rubric = _matrix("no_rubric"), _matrix("rubric")
    assert plain.rows[:5] == list(FACETS) and plain.heads().shape == (5, 5)
    assert float(np.mean(plain.row("base"))) == pytest.approx(0.3288)
    assert round(q_own(plain), 3) == 0.589 and round(q_own(rubric), 3) == 0.668
    assert round(delta_base(plain, plain), 3) == 0.260 and round(delta_base(rubric, rubric.row("base")), 3) == 0.339
    assert round(delta_diag(plain), 4) == 0.2102 and round(delta_diag(rubric), 4) == 0.2103
    assert round(delta_diag(plain), 3) == round(delta_diag(rubric), 3) == 0.210
    assert diag_wins(rubric, plain) == (4, 1)
    column_wise = np.mean([rubric.heads()[d, d] - np.mean(np.delete(rubric.heads()[:, d], d)) for d in range(5)])
    assert column_wise == pytest.approx(delta_diag(rubric))  # the paper notes both give the same mean


def test_q_matrix_from_judgements_mean_or_pooled():
    judgements = [SpanJudgement(good_tokens=3, bad_tokens=1), SpanJudgement(good_tokens=0, bad_tokens=0)]
    m = q_matrix({"culinary": {"culinary": judgements}}, columns=["culinary"])
    assert m.values[0, 0] == pytest.approx((0.4 + 0.0) / 2)
    pooled = q_matrix({"culinary": {"culinary": judgements}}, columns=["culinary"], pooled=True)
    assert pooled.values[0, 0] == pytest.approx(0.4)
    assert q_matrix({"h": {"culinary": [0.2, 0.4]}}, columns=["culinary"]).to_dict()["h"]["culinary"] == pytest.approx(0.3)


# --- span counting ----------------------------------------------------------------------------------

SENTENCE = "I bake sourdough bread every Sunday, and I swim in open water."


@pytest.mark.parametrize(
    "good, bad, counts",
    [
        (["sourdough bread", "bake sourdough"], ["open water"], (3, 2, 0)),  # overlapping good spans merge
        (["Sourdough"], [], (0, 0, 1)),  # not verbatim (case): dropped
        (["every Sunday"], ["Sunday, and"], (1, 1, 0)),  # "Sunday" marked both ways counts for neither
        (["ourdough bre"], [], (2, 0, 0)),  # a word counts when more than half of it is covered
        (['"open water"'], [], (2, 0, 0)),  # surrounding quote marks are stripped
        ([3, None, "  "], ["a moon"], (0, 0, 4)),
    ],
)
def test_count_span_tokens(good, bad, counts):
    j = count_span_tokens(SENTENCE, good, bad)
    assert (j.good_tokens, j.bad_tokens, j.dropped_spans) == counts
    assert all(s in SENTENCE for s in j.good_spans + j.bad_spans)


# --- heuristics ---------------------------------------------------------------------------------------


def test_heuristic_eval_judge_prefers_the_facets_own_details():
    judge = HeuristicPersonaEvalJudge()
    assert isinstance(judge, PersonaEvalJudge)
    for facet in ("culinary", "sports", "arts", "travel"):
        q = {name: judge.judge_batch([_query(facet, text)])[0].q for name, text in ANSWERS.items()}
        others = [q[name] for name in ANSWERS if name not in (facet, "generic")]
        assert q[facet] >= 0.4, (facet, q)
        assert q[facet] > q["generic"] + 0.4 and q[facet] > max(others) + 0.5, (facet, q)
        assert q["generic"] == 0.0
    j = judge.judge_batch([_query("culinary", ANSWERS["culinary"])])[0]
    assert all(s in ANSWERS["culinary"] for s in j.good_spans + j.bad_spans)
    assert "baking sourdough bread" in j.good_spans and j.good_tokens == 5 and j.bad_tokens == 0


def test_heuristic_eval_judge_ignores_the_requests_own_words():
    judge = HeuristicPersonaEvalJudge()
    text = "Bake the sourdough bread at a high heat."
    plain = judge.judge_batch([_query("sports", text)])[0]
    asked = judge.judge_batch([_query("sports", text, prompt="How do I bake sourdough bread?")])[0]
    assert plain.bad_tokens >= 3 and asked.bad_tokens == 0 and asked.q == 0.0


def test_heuristic_rubric_is_contrastive():
    rubric = heuristic_rubric(RECORD)
    stems = {f: content_stems(RECORD.facets[f]) for f in FACETS}
    for facet in FACETS:
        criteria = rubric.criteria[facet]
        assert 2 <= len(criteria) <= 4, (facet, criteria)
        others = set().union(*(stems[f] for f in FACETS if f != facet))
        for criterion in criteria:
            detail = re.sub(r"^Draws on | \(.*\)$", "", criterion)
            assert not content_stems(detail) & others
    assert any("kimchi" in c for c in rubric.criteria["culinary"])
    thin = PersonaRecord("thin", {f: "They like it." for f in FACETS[:-1]} | {"culinary": "They like cooking."})
    assert heuristic_rubric(thin).criteria["sports"][0].startswith("Frames points")


def test_rubric_cache_on_disk_is_reused(tmp_path):
    path = tmp_path / "rubrics.sqlite"
    first = HeuristicRubricExtractor(cache_path=path)
    assert isinstance(first, RubricExtractor)
    queries = [RubricQuery(RECORD, PROMPT), RubricQuery(RECORD, "Another question?"), RubricQuery(RECORD, PROMPT)]
    rubrics = first.extract_batch(queries)
    assert rubrics[0] == rubrics[2] and first.cache_hits == 0

    second = HeuristicRubricExtractor(cache_path=path)
    second._extract = lambda qs: pytest.fail("the rubric should come from the cache")
    assert second.extract_batch(queries) == rubrics and second.cache_hits == 3


def test_heuristic_critic_names_used_missing_and_off_facet_details():
    critic = HeuristicPersonaCritic()
    assert isinstance(critic, PersonaCritic)
    (good, off, generic) = critic.critique_batch([_query("culinary", ANSWERS["culinary"]),
                                                  _query("culinary", ANSWERS["sports"]),
                                                  _query("culinary", ANSWERS["generic"])])
    for c in (good, off, generic):
        assert 2 <= len(re.findall(r"[.!?](?:\s|$)", c.text)) <= 4 and not c.fallback
    assert "sourdough" in good.text and "generic" not in good.text
    assert "Nothing in the answer reflects" in off.text and "triathlon" in off.text and "other sides" in off.text
    assert "sourdough bread" in off.text or "kimchi" in off.text  # what it could have used
    assert "generic" in generic.text and "other sides" not in generic.text
    guided = critic.critique_batch([_query("culinary", ANSWERS["generic"], ["Draws on their own kimchi (food)"])])[0]
    assert "kimchi" in guided.text and "Draws on" not in guided.text


def test_the_critic_can_judge_off_facet_content_without_quoting_it():
    quoting, plain = HeuristicPersonaCritic(), HeuristicPersonaCritic(quote_off_facet=False)
    query = _query("culinary", ANSWERS["sports"])
    off = plain.critique_batch([query])[0].text
    assert "triathlon" in quoting.critique_batch([query])[0].text and "triathlon" not in off
    assert "leans instead on details from other sides of the person" in off
    assert "sourdough bread" in off or "kimchi" in off  # the suggestions stay
    good = _query("culinary", ANSWERS["culinary"])  # nothing off-facet: both write the same critique
    assert plain.critique_batch([good]) == quoting.critique_batch([good])


# --- LLM versions against the loopback server ----------------------------------------------------------


def _client(server):
    return OpenAIChatClient(model=MODEL, base_url=server.url, api_key_env=None, timeout=2.0, max_retries=1,
                            max_workers=1, cache_path=None)


GOOD_RUBRIC = json.dumps({f: [f"{f} one", f"{f} two", "x", "y", "z"] for f in FACETS})


def test_llm_rubric_extractor_falls_back_counts_and_caches(server, tmp_path):
    path = tmp_path / "rubrics.sqlite"
    server.script.extend([Reply("Sure! Here are the criteria: be nice."), Reply('{"professional": ["a"]}'),
                          Reply(GOOD_RUBRIC)])
    extractor = LLMRubricExtractor(client=_client(server), cache_path=path)
    queries = [RubricQuery(RECORD, f"Question {i}?") for i in range(3)]
    first = extractor.extract_batch(queries)
    assert [r.fallback for r in first] == [True, True, False]
    assert first[0].criteria == heuristic_rubric(RECORD).criteria
    assert first[2].criteria["arts"] == ["arts one", "arts two", "x", "y"]  # at most four
    assert extractor.counter.calls == 3 and extractor.counter.fallbacks == 2
    assert "no criteria list for 'sports'" in extractor.counter.reasons
    body = server.chat_requests[2]["messages"]
    assert body[0]["content"] == RUBRIC_SYSTEM and "## Culinary\n" + RECORD.facets["culinary"] in body[1]["content"]
    assert server.count == 3

    server.fallback = Reply(GOOD_RUBRIC)
    again = extractor.extract_batch(queries)  # the cached rubric is reused; the two fallbacks are asked again
    assert server.count == 5 and again[2] == first[2] and not any(r.fallback for r in again)
    fresh = LLMRubricExtractor(client=_client(server), cache_path=path)
    assert fresh.extract_batch(queries[2:])[0] == first[2] and server.count == 5  # from the file, no request


def test_llm_critic_prompt_fallbacks_and_criteria_block(server):
    server.script.extend([Reply("not json"), Reply('{"critique": "  "}'), Reply('{"critique": "Sounds  like a baker."}'),
                          Reply('```json\n{"critique": "Fine."}\n```')])
    critic = LLMPersonaCritic(client=_client(server))
    out = critic.critique_batch([_query("culinary", "a"), _query("culinary", "b"),
                                 _query("culinary", ANSWERS["culinary"], ["Mentions kimchi"]),
                                 _query("sports", "d")])
    assert [c.text for c in out] == [NEUTRAL_CRITIQUE, NEUTRAL_CRITIQUE, "Sounds like a baker.", "Fine."]
    assert [c.fallback for c in out] == [True, True, False, False]
    assert critic.counter.fallbacks == 2 and critic.counter.calls == 4
    system, user = server.chat_requests[2]["messages"]
    assert system["content"] == CRITIC_SYSTEM
    assert RECORD.facets["culinary"] in user["content"] and RECORD.facets["sports"] not in user["content"]
    assert "- Mentions kimchi" in user["content"] and ANSWERS["culinary"] in user["content"]
    assert "- " not in server.chat_requests[3]["messages"][1]["content"].split("Answer under review:")[1].split("In two")[0]


def test_llm_eval_judge_drops_non_verbatim_spans_and_falls_back(server):
    answer = ANSWERS["culinary"]
    server.script.extend([
        Reply(json.dumps({"critique": "Warm.", "good_spans": ["sourdough bread", "a quote it never wrote"],
                          "bad_spans": ["weeks of patience"]})),
        Reply('{"critique": "x", "good_spans": "sourdough"}'),
        Reply('{"good_spans": [], "bad_spans": []'),  # cut short: repaired
        Reply("no idea"),
    ])
    judge = LLMPersonaEvalJudge(client=_client(server))
    out = judge.judge_batch([_query("culinary", answer)] * 4)
    assert (out[0].good_tokens, out[0].bad_tokens, out[0].dropped_spans) == (2, 3, 1)
    assert out[0].critique == "Warm." and out[0].q == pytest.approx((2 - 3) / 6)
    assert out[1].fallback and out[1].q == 0.0 and not out[1].good_spans
    assert not out[2].fallback and out[2].q == 0.0
    assert out[3].fallback
    assert judge.counter.fallbacks == 2 and judge.counter.calls == 4
    system, user = server.chat_requests[0]["messages"]
    assert system["content"] == JUDGE_SYSTEM and RECORD.facets["arts"] not in user["content"]


def test_llm_plugins_never_crash_on_a_server_that_only_talks_nonsense(server):
    server.fallback = Reply("{{{ nope")
    client = _client(server)
    rubric = LLMRubricExtractor(client=client, cache_path=None).extract_batch([RubricQuery(RECORD, PROMPT)])[0]
    critique = LLMPersonaCritic(client=client).critique_batch([_query("arts", "x")])[0]
    judged = LLMPersonaEvalJudge(client=client).judge_batch([_query("arts", "x")])[0]
    assert rubric.fallback and critique.fallback and judged.fallback
    assert client.stats.fallbacks == 3


def test_route_by_system_prompt_serves_a_whole_episode(server):
    """The three plug-ins share one client; a route answers each by its system prompt."""
    answers = {RUBRIC_SYSTEM: GOOD_RUBRIC, CRITIC_SYSTEM: '{"critique": "Lean on the bread."}',
               JUDGE_SYSTEM: '{"critique": "ok", "good_spans": ["sourdough bread"], "bad_spans": []}'}
    server.route = lambda body: Reply(answers[body["messages"][0]["content"]])
    client = _client(server)
    rubric = LLMRubricExtractor(client=client, cache_path=None).extract_batch([RubricQuery(RECORD, PROMPT)])[0]
    query = _query("culinary", ANSWERS["culinary"], rubric.criteria["culinary"])
    assert LLMPersonaCritic(client=client).critique_batch([query])[0].text == "Lean on the bread."
    assert LLMPersonaEvalJudge(client=client).judge_batch([query])[0].good_tokens == 2
