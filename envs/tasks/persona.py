"""The persona critic (``pluralgym/PersonaCritic-v0``) as the trainers see it: :class:`PersonaTask`.

One head per facet of the five-facet persona (professional, sports, arts, travel, culinary). Every
head, the base model and the router see the same prompt: the whole persona and the user's request.
The privileged prompt of head d keeps only facet d and adds the critic's critique of the sampled
response for that facet (the rubric, when used, guides the critic and never reaches the teacher).
``label["persona"]`` is the episode's focal facet: it picks which critique the episode returns.

The report (:meth:`PersonaTask.evaluate`) judges every response of every row under all five facets
with the evaluation judge, giving the paper's head x judge matrix Q(h, d) (its Table 1), and for
the heads Q_own, Delta_base and Delta_diag (its Table 2), with bootstrap intervals over prompts.
:func:`compare_runs` puts several runs side by side (rubric vs no rubric, MAH vs MT) with the
diagonal wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.data.persona import FACET_LABELS, FACETS, PersonaData, PersonaRecord, load_split
from envs.data.splits import check_contexts, read_split
from envs.judges.fidelity import FidelityItem
from envs.judges.pairwise import PairwiseComparison, question_comparison
from envs.judges.persona import ResponseQuery, delta_diag, diag_wins, q_own
from envs.persona import PersonaCriticBatch, teacher_messages
from envs.tasks.base import EpisodeRecord, EvalReport, Messages, Persona
from envs.tasks.reporting import fmt, heatmap, markdown_table, pyplot, save_figure, unit_sums

EMPTY_RESPONSE = "I would rather not say."  # stands in for a sampled response that is empty once decoded
ATTRIBUTION_PROMPT = "Answer the user as the person described here would:"  # one facet's system text


class PersonaTask:
    """The persona-critic environment seen by the trainers, the router and the benchmark (the task contract).

    Args:
        critic: Writes the critique of a response for the focal facet (the privileged feedback).
        rubric_extractor: Writes the joint contrastive rubric the critic may use.
        eval_judge: Marks good and bad spans of a response for a judging facet (the env's reward and
            the report's Q matrix).
        rubric: Give the critic the rubric (false: the no-rubric ablation).
        records: Persona records per episode draw (default: records composed from the shipped data).
        num_records: How many composed records each split draws from (null: all).
        drop_code: Leave out the code-only requests (persona voice matters little there).
        max_request_chars: Leave out requests longer than this many characters (null: keep all).
            The default keeps about 85% of the non-code requests and all of a CPU run's batches short.
        seed: Seeds the composed records and the request split.
        max_action_chars: Longest response kept.
        teacher_feedback: Show the privileged teacher the critic's critique (the paper's setting);
            false gives the same run without feedback: the teacher sees the focal facet alone.
        attribution: An independent check for the report (``envs.judges.fidelity.PersonaAttribution``,
            null: none): the frozen base model scores each response under each single facet and under
            none, so a response written for facet d should be likelier under d. It uses no lexicon,
            and neither the critic nor the reward calls it.
    """

    max_turns = 1
    feedback_follows_head = True  # head d's response is critiqued for facet d

    def __init__(self, critic: Any, rubric_extractor: Any, eval_judge: Any, rubric: bool = True,
                 num_records: int | None = None, drop_code: bool = True, max_request_chars: int | None = 500,
                 seed: int = 0, max_action_chars: int = 8000, attribution: Any = None, teacher_feedback: bool = True):
        self.personas = [Persona(f, FACET_LABELS[f]) for f in FACETS]
        self.critic, self.rubric_extractor, self.eval_judge = critic, rubric_extractor, eval_judge
        self.attribution = attribution
        self.teacher_feedback = bool(teacher_feedback)
        self.rubric = bool(rubric)
        self.max_action_chars = int(max_action_chars)
        self._load = dict(seed=seed, num_records=num_records, drop_code=drop_code, max_request_chars=max_request_chars)
        self._data: dict[str, PersonaData] = {}

    def data(self, split: str) -> PersonaData:
        """The records and requests of ``split``, loaded on first use (a split nobody asks for is never read)."""
        read_split(split, "the persona task")
        if split not in self._data:
            self._data[split] = load_split(split, **self._load)
        return self._data[split]

    # ---- episodes -----------------------------------------------------------------------

    def make_batch(self, num: int, *, split: str = "train") -> PersonaCriticBatch:
        """``num`` episodes over the records and requests of ``split``."""
        data = self.data(split)
        return PersonaCriticBatch(num, records=data.records, requests=data.requests, critic=self.critic,
                                  rubric_extractor=self.rubric_extractor, reward_judge=self.eval_judge,
                                  rubric=self.rubric, max_action_chars=self.max_action_chars)

    @staticmethod
    def persona_options(persona: str) -> dict[str, Any]:
        """Reset options that make ``persona`` the episode's focal facet."""
        return {"facet": persona}

    def eval_options(self, contexts: int | None, *, split: str = "eval", repeat: bool = False) -> list[dict[str, Any]]:
        """``contexts`` distinct requests of ``split`` (None: all), each with a record, focal facets cycling.

        The focal facet only decides which critique and reward an episode returns (the response does
        not depend on it), and the report judges every response under all five facets, so each
        context is played once. A split with fewer records than requests gives a record to more than
        one request (a request is the unit the report resamples). ``repeat`` lets requests cycle too
        (the router's training prefixes; never an evaluation).
        """
        data = self.data(split)
        n_req, n_rec = len(data.requests), len(data.records)
        if not repeat:
            contexts = check_contexts(contexts, n_req, split, "request")
        return [{"request": data.requests[c % n_req].uid, "record": data.records[c % n_rec].id,
                 "facet": FACETS[c % len(FACETS)]} for c in range(contexts)]

    # ---- prompts and actions ------------------------------------------------------------

    @staticmethod
    def policy_messages(observation: Messages) -> Messages:
        """The policy's prompt: the five-facet scaffold and the request, as observed."""
        return [dict(m) for m in observation]

    def teacher_messages(self, observation: Messages, persona: Persona, feedback: str | None) -> Messages:
        """The privileged prompt: the same request, with only facet ``persona`` and the critique in the system text."""
        return teacher_messages(observation, persona.name, feedback if self.teacher_feedback else None)

    @staticmethod
    def actions(texts: Sequence[str]) -> list[str]:
        """Sampled responses as env actions: stripped, an empty one replaced by ``EMPTY_RESPONSE``."""
        return [text.strip() or EMPTY_RESPONSE for text in texts]

    @staticmethod
    def comparison(observation: Messages, context: dict[str, Any], first: str, second: str,
                   first_feedback: str = "", second_feedback: str = "") -> PairwiseComparison:
        """The user's request and the two responses only: no persona scaffold, no critique (000 App. B.5)."""
        return question_comparison(observation, first, second)

    @staticmethod
    def step_metrics(texts: Sequence[str], infos: Sequence[dict]) -> dict[str, list[float]]:
        """Per-response figures logged per head: Q under the focal facet, and length in words."""
        return {"q_focal": [float(info.get("q", float("nan"))) for info in infos],
                "words": [float(len(t.split())) for t in texts]}

    def chat_plugins(self) -> list[Any]:
        """The critic, the rubric extractor and the evaluation judge."""
        return [self.critic, self.rubric_extractor, self.eval_judge]

    # ---- the report ---------------------------------------------------------------------

    def judge_rows(self, rows: dict[str, list[EpisodeRecord]]) -> dict[str, np.ndarray]:
        """``row -> (N, 5)`` Q of each response under each judging facet (one batched judge call)."""
        records = {r.id: r for data in self._data.values() for r in data.records}  # the splits played
        queries, where = [], []
        for name, episodes in rows.items():
            for i, episode in enumerate(episodes):
                record: PersonaRecord = records[episode.label["record"]]
                prompt = episode.observations[0][-1]["content"]
                for j, facet in enumerate(FACETS):
                    queries.append(ResponseQuery(record, facet, prompt, episode.actions[0]))
                    where.append((name, i, j))
        judgements = self.eval_judge.judge_batch(queries) if queries else []
        q = {name: np.zeros((len(episodes), len(FACETS))) for name, episodes in rows.items()}
        for (name, i, j), judgement in zip(where, judgements):
            q[name][i, j] = judgement.q
        return q

    def evaluate(self, rows: dict[str, list[EpisodeRecord]], *, heads: Sequence[str], base: str | None = None,
                 bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> EvalReport:
        """The Q matrix (rows x judging facets) and, for the heads, Q_own, Delta_base and Delta_diag."""
        q = self.judge_rows(rows)
        n = min((len(v) for v in q.values()), default=0)
        rng = np.random.default_rng(seed)
        replicates = [rng.integers(0, n, size=n) for _ in range(bootstrap)] if n else []
        alpha = (1 - confidence) / 2

        def interval(stat) -> dict[str, float]:
            value = stat(np.arange(n))
            reps = np.array([stat(idx) for idx in replicates]) if replicates else np.array([np.nan])
            reps = reps[np.isfinite(reps)]
            return {"value": float(value), "low": float(np.quantile(reps, alpha)) if reps.size else float("nan"),
                    "high": float(np.quantile(reps, 1 - alpha)) if reps.size else float("nan"), "n": int(n)}

        matrix = {name: {f: interval(lambda idx, v=v, j=j: v[idx, j].mean()) for j, f in enumerate(FACETS)}
                  for name, v in q.items()}
        for name, v in q.items():
            matrix[name]["mean"] = interval(lambda idx, v=v: v[idx].mean())
        head_rows = [h for h in heads if h in q] if len(heads) == len(FACETS) else []
        aggregates: dict[str, Any] = {}
        if head_rows:
            block = np.stack([q[h] for h in head_rows], axis=1)  # (N, heads, facets)
            aggregates["q_own"] = interval(lambda idx: q_own(block[idx].mean(0)))
            aggregates["delta_diag"] = interval(lambda idx: delta_diag(block[idx].mean(0)))
            aggregates["diagonal_is_row_max"] = [bool(np.argmax(block.mean(0)[i]) == i) for i in range(len(FACETS))]
            if base in q:
                base_q = q[base]
                aggregates["delta_base"] = interval(lambda idx: q_own(block[idx].mean(0)) - base_q[idx].mean())
        requests = [e.options.get("request", i) for i, e in enumerate(next(iter(rows.values()), []))][:n]
        units = {"q_mean": {name: unit_sums(requests, v[:n].mean(1)) for name, v in q.items()}}
        if head_rows:  # per request, the statistic on that request's (heads, facets) block (all are linear)
            per_request = [block[i][None] for i in range(n)]
            units["q_own"] = {"heads": unit_sums(requests, [q_own(b.mean(0)) for b in per_request])}
            units["delta_diag"] = {"heads": unit_sums(requests, [delta_diag(b.mean(0)) for b in per_request])}
            if base in q:
                units["delta_base"] = {"heads": unit_sums(
                    requests, [q_own(b.mean(0)) - base_q[i].mean() for i, b in enumerate(per_request)])}
        checks = self._attribution(rows, head_rows, base, requests, n, units, interval) if self.attribution else {}
        metrics = {"facets": list(FACETS), "heads": head_rows, "base": base, "rows": matrix, "aggregates": aggregates,
                   "confidence": confidence, "prompts": n, "unit": "request", "units": units, "checks": checks}
        scalars = {f"q/{name}/{f}": cells[f]["value"] for name, cells in matrix.items() for f in FACETS + ("mean",)}
        scalars.update({k: v["value"] for k, v in aggregates.items() if isinstance(v, dict)})
        return EvalReport(metrics, self._markdown(metrics), scalars, plot=lambda path: self._plot(metrics, path))

    def _attribution(self, rows: dict[str, list[EpisodeRecord]], heads: Sequence[str], base: str | None,
                     requests: Sequence[Any], n: int, units: dict[str, Any], interval) -> dict[str, Any]:
        """The independent facet-attribution check (see ``attribution``).

        Per row, the base model's log-probability lift (per token) of each response under each
        single facet over no persona. For the heads: the share of responses whose own facet gives
        the largest lift (chance 1/5), the own-facet lift minus the other facets' (an analogue of
        Delta_diag), and the own-facet lift minus the base model's lift on that facet.
        """
        where = [(name, i) for name, episodes in rows.items() for i in range(len(episodes[:n]))]
        lifts = self.facet_lifts([rows[name][i].observations[0] for name, i in where],
                                 [rows[name][i].actions[0] for name, i in where],
                                 [rows[name][i].label for name, i in where])
        lift = {name: np.zeros((n, len(FACETS))) for name in rows}
        for (name, i), values in zip(where, lifts):
            lift[name][i] = values
        out: dict[str, Any] = {"lift": {name: lift[name].mean(0).tolist() for name in rows}}
        if heads:
            block = np.stack([lift[h] for h in heads], axis=1)  # (N, heads, facets)
            own = block.argmax(2) == np.arange(len(heads))  # (N, heads)
            diag = np.einsum("nhh->nh", block)  # (N, heads) own-facet lift
            gap = (diag - (block.sum(2) - diag) / (len(FACETS) - 1)).mean(1)  # (N,)
            figures = {"own_facet_first": own.mean(1), "own_lift_gap": gap}
            if base in lift:
                figures["own_lift_over_base"] = (diag - lift[base]).mean(1)
            for key, per_request in figures.items():
                out[key] = interval(lambda idx, v=per_request: v[idx].mean())
                units[f"checks/{key}"] = {"heads": unit_sums(requests, per_request)}
            out["own_facet_first_per_head"] = own.mean(0).tolist()
        return out

    def facet_lifts(self, observations: Sequence[Any], texts: Sequence[str], labels: Sequence[dict]) -> np.ndarray:
        """``(N, 5)``: the attribution model's log-probability lift (per token) of each response under each facet.

        Each facet's system text alone, over no persona, for the request of ``observations[i]`` and
        the person of ``labels[i]["record"]``.
        """
        records = {r.id: r for data in self._data.values() for r in data.records}
        items = []
        for observation, text, label in zip(observations, texts, labels):
            record = records[label["record"]]
            systems = [f"{ATTRIBUTION_PROMPT} {record.facets[f]}" for f in FACETS]
            request = [m for m in observation if m["role"] != "system"]
            items.append(FidelityItem(systems[0], FACETS[0], request, text, tuple(systems[1:])))
        scores = self.attribution.candidate_scores(items) if items else []
        return np.array([values[:-1] - values[-1] for values in scores]).reshape(len(items), len(FACETS))

    def turn_checks(self, observations: Sequence[Any], texts: Sequence[str],
                    labels: Sequence[dict]) -> dict[str, list[float]]:
        """Per response, the attribution check on its focal facet (empty without an ``attribution`` model).

        ``own_facet_first``: the focal facet gives the largest lift (chance 1/5); ``own_lift_gap``:
        the focal facet's lift minus the mean of the others'; ``own_lift``: the focal facet's lift.
        Neither the critic nor the judge computes them.
        """
        if self.attribution is None:
            return {}
        lifts = self.facet_lifts(observations, texts, labels)
        own = np.array([FACETS.index(label["persona"]) for label in labels], dtype=int)
        rows = np.arange(len(own))
        mine = lifts[rows, own]
        gap = mine - (lifts.sum(1) - mine) / (len(FACETS) - 1)
        return {"own_facet_first": (lifts.argmax(1) == own).astype(float).tolist(), "own_lift_gap": gap.tolist(),
                "own_lift": mine.tolist()}

    @staticmethod
    def _markdown(metrics: dict[str, Any]) -> str:
        facets, rows, agg = metrics["facets"], metrics["rows"], metrics["aggregates"]
        labels = [FACET_LABELS[f] for f in facets]
        lines = [f"Q(h, d) = (G - B) / (G + B + 1) under each judging facet d, mean over {metrics['prompts']} "
                 f"held-out prompts (bootstrap {metrics['confidence']:.0%} intervals for the row means); "
                 "a head's own facet in bold:", ""]
        table = []
        for name, cells in rows.items():
            own = facets[metrics["heads"].index(name)] if name in metrics["heads"] else None
            table.append([name] + [f"**{fmt(cells[f]['value'], 3)}**" if f == own else fmt(cells[f]["value"], 3)
                                   for f in facets]
                         + [f"{fmt(cells['mean']['value'], 3)} [{fmt(cells['mean']['low'], 3)}, "
                            f"{fmt(cells['mean']['high'], 3)}]"])
        lines += markdown_table(["Generator"] + labels + ["Mean"], table)
        checks = metrics.get("checks") or {}
        if checks:
            lines += ["", "Independent check (not the critic's lexicon: the frozen base model's log-probability "
                      "lift per token of each response under each single facet over no persona):", ""]
            lines += markdown_table(["Generator"] + labels, [[name] + [fmt(v, 3) for v in lifts]
                                                          for name, lifts in checks["lift"].items()])
            if "own_facet_first" in checks:
                lines += ["", "Heads: own facet's lift is the largest (chance 0.2), own-facet lift minus the other "
                          "facets', and own-facet lift minus the base model's on that facet:", ""]
                lines += markdown_table(["own facet first", "own minus others", "own minus base"], [[
                    _span(checks.get(k)) for k in ("own_facet_first", "own_lift_gap", "own_lift_over_base")]])
        if agg:
            lines += ["", "Aggregates of the heads:", ""]
            lines += markdown_table(["Q_own", "Delta_base", "Delta_diag", "Diagonal is the row max"], [[
                *(f"{fmt(agg[k]['value'], 3)} [{fmt(agg[k]['low'], 3)}, {fmt(agg[k]['high'], 3)}]" if k in agg
                  else "n/a" for k in ("q_own", "delta_base", "delta_diag")),
                f"{sum(agg['diagonal_is_row_max'])}/{len(facets)}"]])
        return "\n".join(lines) + "\n"

    @staticmethod
    def _plot(metrics: dict[str, Any], path: Path) -> None:
        plt = pyplot()
        rows, facets = metrics["rows"], metrics["facets"]
        fig, ax = plt.subplots(figsize=(1.2 * len(facets) + 3, 0.5 * len(rows) + 2))
        values = [[cells[f]["value"] for f in facets] for cells in rows.values()]
        low = min(-0.5, float(np.nanmin(values))) if values else -1
        heatmap(ax, values, [FACET_LABELS[f] for f in facets], list(rows), "Q(generator, judging facet)",
                vmin=low, vmax=1.0)
        save_figure(fig, path)


def _span(stat: dict[str, float] | None) -> str:
    """``value [low, high]`` of an interval dict (``n/a`` when missing)."""
    if not stat:
        return "n/a"
    return f"{fmt(stat['value'], 3)} [{fmt(stat['low'], 3)}, {fmt(stat['high'], 3)}]"


def compare_runs(reports: dict[str, dict[str, Any]]) -> str:
    """Puts the persona reports of several runs side by side (the paper's Table 2 and the head diagonals).

    Args:
        reports: Run label -> the ``report`` of its ``eval.json``.

    Returns:
        Markdown: per run Q_own, Delta_base, Delta_diag and how many diagonals are row maxima; the
        diagonal of every run; and diagonal wins between every pair of multi-head runs.
    """
    lines = markdown_table(
        ["Run", "Q_own", "Delta_base", "Delta_diag", "Diagonal is the row max", "Mean Q (single head)"],
        [[label] + [fmt(r["aggregates"][k]["value"], 3) if k in r["aggregates"] else "n/a"
                    for k in ("q_own", "delta_base", "delta_diag")]
         + [f"{sum(r['aggregates']['diagonal_is_row_max'])}/5" if r["aggregates"] else "n/a",
            fmt(next((c["mean"]["value"] for n, c in r["rows"].items() if n == "head_shared"), float("nan")), 3)]
         for label, r in reports.items()])
    diagonals = {label: [r["rows"][h][f]["value"] for h, f in zip(r["heads"], FACETS)]
                 for label, r in reports.items() if r["heads"]}
    lines += ["", "Own-facet Q of each head (MT-OPSD: its single head under each facet):", ""]
    single = {label: [r["rows"]["head_shared"][f]["value"] for f in FACETS] for label, r in reports.items()
              if "head_shared" in r["rows"]}
    table = [[label] + [fmt(v, 3) for v in values] for label, values in {**diagonals, **single}.items()]
    lines += markdown_table(["Run"] + [FACET_LABELS[f] for f in FACETS], table)
    multi = list(diagonals)
    if len(multi) >= 2:
        lines += ["", "Diagonal wins (facets where the first run's own-facet Q is higher):", ""]
        pairs = [(a, b) for i, a in enumerate(multi) for b in multi[i + 1:]]
        lines += markdown_table(["Runs", "Wins"], [[f"{a} vs {b}", "{} - {}".format(*diag_wins(
            np.diag(diagonals[a]), np.diag(diagonals[b])))] for a, b in pairs])
    return "\n".join(lines) + "\n"
