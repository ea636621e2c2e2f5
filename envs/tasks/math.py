"""Persona-prefixed verifiable math (``pluralgym/PersonaMath-v0``) as the trainers see it: :class:`MathTask`.

RLVR and PerMix-RLVR train one head on the verifiable reward; the task can also serve OPSD, whose
privileged feedback here is the reference answer and solution. ``label["persona"]`` is the prompt
persona of the episode (``none``: no persona); it is not a head.

The report (:meth:`MathTask.evaluate`) plays every evaluation question under every evaluation
persona (PerMix's "persona lottery": four math experts, a kindergartener, a carpenter, no persona,
plus held-out PersonaGym personas) and gives, per row:

- accuracy per persona (with bootstrap intervals over questions) and their mean, std, min and max;
- the **persona-stability score** (PSS; the paper does not define it, this definition is the
  project's own): the share of questions answered correctly under *every* evaluation persona (or
  under at least ``pss_share`` of them), and ``1 - std / mean`` of the per-persona accuracies as a
  second, smoother figure;
- **persona fidelity** measured without an API (:class:`envs.judges.fidelity.PersonaAttribution`:
  can the frozen base model tell from the answer which persona wrote it?), and a 1-5 judge rating
  when an LLM fidelity judge is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.checks.math import check_answers
from envs.data.drills import DEFAULT_DRILL_KINDS, checked_kinds
from envs.data.problems import problems_for_split
from envs.data.splits import check_contexts, read_split
from envs.judges.fidelity import FidelityItem
from envs.judges.pairwise import PairwiseComparison, question_comparison
from envs.math import NONE_ID, PersonaMathBatch, persona_pools, personas_for_split
from envs.math_reward import has_final_marker
from envs.tasks.base import EpisodeRecord, EvalReport, Messages, Persona
from envs.tasks.reporting import (
    cell,
    estimate,
    fmt,
    grouped_bars,
    markdown_table,
    pyplot,
    ratio_estimate,
    save_figure,
    unit_sums,
)

EMPTY_ANSWER = "I do not know. #### 0"  # stands in for a sampled answer that is empty once decoded


class MathTask:
    """The persona math environment seen by the trainers and the evaluation (the task contract).

    Args:
        source: ``drill`` (one short arithmetic question each, ``envs.data.drills``: the default,
            because the embedded model gets 31-62% of them right and so has a signal to learn from),
            ``generated`` (arithmetic word problems) or ``gsm8k`` (for a larger model).
        difficulty: Level of the drills (``envs.data.drills.DRILL_LEVELS``) or of the generated
            problems (``envs.data.math.LEVELS``); null: the source's default level.
        drill_kinds: The drill kinds served with ``source=drill`` (``envs.data.drills.DRILL_KINDS``).
        gsm8k_max_steps: With ``source=gsm8k``, keep problems with at most this many calculator steps.
        num_problems: Problems per split (null: the stream's default size).
        persona_none_prob: Share of the env's own draws without a persona (RLVR pins personas itself).
        eval_heldout_personas: Held-out PersonaGym personas evaluated besides the seven lottery roles.
        fidelity: Offline fidelity scorer (``score_batch(items) -> scores``), null to skip it.
        fidelity_judge: Optional chat-model fidelity judge (1-5 ratings), null to skip it.
        fidelity_candidates: Other personas each answer is told apart from (chance = 1 / (this + 2)).
        fidelity_questions: Fidelity reads the answers to this many of the evaluated questions (the
            first ones, under every persona; null: all). Scoring one answer takes ``fidelity_candidates
            + 2`` passes of the base model, which on a CPU costs more than answering the questions.
        format_bonus: Reward added for writing the ``#### <number>`` form (0: the plain verifiable reward).
        pss_share: PSS counts a question as stable when it is answered right under at least this
            share of the evaluation personas (1: under every one).
        seed: Seeds the problem streams.
    """

    max_turns = 1
    feedback_follows_head = False
    personas = [Persona("solver", "SOLVER", "Solve the problem and give the final number after ####.")]

    def __init__(self, source: str = "drill", difficulty: int | None = None,
                 drill_kinds: Sequence[str] = DEFAULT_DRILL_KINDS, gsm8k_max_steps: int | None = None,
                 num_problems: int | None = None, persona_none_prob: float = 0.25,
                 eval_heldout_personas: int = 3, fidelity: Any = None, fidelity_judge: Any = None,
                 fidelity_candidates: int = 4, fidelity_questions: int | None = 16, format_bonus: float = 0.0,
                 pss_share: float = 1.0, seed: int = 0):
        if source not in ("generated", "drill", "gsm8k"):
            raise ValueError(f"source must be 'generated', 'drill' or 'gsm8k', got {source!r}")
        if not 0 < pss_share <= 1:
            raise ValueError(f"env.pss_share must be in (0, 1] (1: right under every persona), got {pss_share!r}")
        self.pss_share = float(pss_share)
        self.source, self.gsm8k_max_steps = source, gsm8k_max_steps
        self.difficulty = None if difficulty is None else int(difficulty)
        self.drill_kinds = checked_kinds(drill_kinds, "env.drill_kinds")
        self.num_problems, self.persona_none_prob, self.seed = num_problems, float(persona_none_prob), int(seed)
        self.fidelity, self.fidelity_judge = fidelity, fidelity_judge
        self.fidelity_candidates, self.format_bonus = int(fidelity_candidates), float(format_bonus)
        if fidelity_questions is not None and int(fidelity_questions) < 1:
            raise ValueError(f"env.fidelity_questions must be >= 1 or null (all), got {fidelity_questions!r}")
        self.fidelity_questions = None if fidelity_questions is None else int(fidelity_questions)
        pools = persona_pools()
        # Held-out splits: a few held-out PersonaGym personas and that split's role set.
        self._heldout_personas = {"eval": [*pools.held_out[:eval_heldout_personas], *pools.lottery],
                                  "test": [*pools.test[:eval_heldout_personas], *pools.test_lottery]}
        self.prompts = {p.id: p.system_prompt for p in
                        [*pools.train, *pools.held_out, *pools.lottery, *pools.test, *pools.test_lottery]}

    @property
    def eval_personas(self) -> list:
        """The personas the ``eval`` split is asked under."""
        return self._heldout_personas["eval"]

    def make_batch(self, num: int, *, split: str = "train") -> PersonaMathBatch:
        """``num`` episodes over the problems and personas of ``split``."""
        personas = self._heldout_personas.get(read_split(split, "the persona math task"))
        extra = {"personas": personas} if personas is not None else {}
        return PersonaMathBatch.for_split(num, split, task=self.source, num_problems=self.num_problems,
                                          difficulty=self.difficulty, seed=self.seed,
                                          gsm8k_max_steps=self.gsm8k_max_steps, drill_kinds=self.drill_kinds,
                                          persona_none_prob=self.persona_none_prob, format_bonus=self.format_bonus,
                                          **extra)

    def persona_pool(self, split: str = "train") -> list[str]:
        """The prompt personas of a split, ``none`` included (PerMix draws from it)."""
        read_split(split, "the persona math task")
        return [p.id for p in self._heldout_personas.get(split) or personas_for_split(split)]

    @staticmethod
    def persona_options(persona: str) -> dict[str, Any]:
        """Reset options that pose the episode's question under ``persona`` (``none``: no persona)."""
        return {"persona": persona}

    def eval_options(self, contexts: int | None, *, split: str = "eval", repeat: bool = False) -> list[dict[str, Any]]:
        """``contexts`` questions of ``split`` (None: all), each under every persona of the split.

        ``repeat`` lets questions cycle (the router's training prefixes; never an evaluation).
        """
        personas = self.persona_pool(split)
        available = len(problems_for_split(split, task=self.source, num=self.num_problems,
                                           difficulty=self.difficulty, seed=self.seed,
                                           gsm8k_max_steps=self.gsm8k_max_steps, drill_kinds=self.drill_kinds))
        if not repeat:
            contexts = check_contexts(contexts, available, split, "question")
        return [{"problem": q % available, **self.persona_options(p)} for q in range(contexts) for p in personas]

    @staticmethod
    def comparison(observation: Messages, context: dict[str, Any], first: str, second: str,
                   first_feedback: str = "", second_feedback: str = "") -> PairwiseComparison:
        """The question and the two answers, without the persona's system message or the verdicts."""
        return question_comparison(observation, first, second)

    @staticmethod
    def policy_messages(observation: Messages) -> Messages:
        """The policy's prompt: the persona system message (if any) and the question, as observed."""
        return [dict(m) for m in observation]

    @staticmethod
    def teacher_messages(observation: Messages, persona: Persona, feedback: str | None) -> Messages:
        """The privileged prompt (for OPSD on this env): the question, with the reference as a final system note."""
        if feedback is None:  # no feedback: the policy's own prompt
            return [dict(m) for m in observation]
        note = f"(Private notes for the answer, never shown to the user. {feedback} Answer in the same form.)"
        return [dict(m) for m in observation] + [{"role": "system", "content": note}]

    @staticmethod
    def actions(texts: Sequence[str]) -> list[str]:
        """Sampled answers as env actions: stripped, an empty one replaced by ``EMPTY_ANSWER``."""
        return [text.strip() or EMPTY_ANSWER for text in texts]

    @staticmethod
    def step_metrics(texts: Sequence[str], infos: Sequence[dict]) -> dict[str, list[float]]:
        """Per-answer figures: correct, and whether it used the ``#### <number>`` form."""
        return {"accuracy": [float(bool(info["label"].get("correct"))) for info in infos],
                "format": [float(has_final_marker(t)) for t in texts]}

    def chat_plugins(self) -> list[Any]:
        """The fidelity judge, when there is one."""
        return [self.fidelity_judge] if self.fidelity_judge is not None else []

    # ---- the report ---------------------------------------------------------------------

    def _fidelity(self, records: list[EpisodeRecord], seed: int) -> dict[str, Any]:
        items, pool = [], [p for p in self.prompts if p != NONE_ID]
        rng = np.random.default_rng(seed)
        if self.fidelity_questions is not None:
            read = set(sorted({r.options["problem"] for r in records})[:self.fidelity_questions])
            records = [r for r in records if r.options["problem"] in read]
        for r in records:
            pid = r.label["persona"]
            others = [p for p in pool if p != pid]
            chosen = rng.choice(len(others), size=min(self.fidelity_candidates, len(others)), replace=False)
            items.append(FidelityItem(self.prompts.get(pid) or "", pid, r.observations[0], r.actions[0],
                                      tuple(self.prompts[others[i]] for i in chosen)))
        out: dict[str, Any] = {}
        if self.fidelity is not None:
            scored = [(r.options["problem"], sc) for r, sc in zip(records, self.fidelity.score_batch(items))
                      if sc.attributed is not None]
            scores = [sc for _, sc in scored]
            out["attribution"] = float(np.mean([s.attributed for s in scores])) if scores else float("nan")
            out["margin"] = float(np.mean([s.margin for s in scores])) if scores else float("nan")
            out["chance"] = 1.0 / (self.fidelity_candidates + 2)
            out["answers"] = len(scores)
            # per question (its answers under every persona together), for intervals and seed pooling
            out["units"] = unit_sums([q for q, _ in scored], [float(sc.attributed) for _, sc in scored])
        if self.fidelity_judge is not None:
            ratings = [s.rating for s in self.fidelity_judge.score_batch(items) if s.rating is not None]
            out["rating"] = float(np.mean(ratings)) if ratings else float("nan")
        return out

    def _row(self, records: list[EpisodeRecord], samples: int, confidence: float, seed: int) -> dict[str, Any]:
        personas = list(dict.fromkeys(r.label["persona"] for r in records))
        questions = sorted({r.options["problem"] for r in records})
        correct = np.zeros((len(questions), len(personas)))
        for r in records:
            q, p = questions.index(r.options["problem"]), personas.index(r.label["persona"])
            correct[q, p] = bool(r.label["correct"])
        rng = np.random.default_rng(seed)
        reps = [rng.integers(0, len(questions), len(questions)) for _ in range(samples)]
        per_persona = {p: estimate(correct[:, j].mean(), np.array([correct[idx, j].mean() for idx in reps]),
                                   len(questions), confidence).as_dict() for j, p in enumerate(personas)}
        acc = correct.mean(0)
        stable = correct.mean(1) >= self.pss_share - 1e-9  # (Q,) right under enough of the personas
        pss = estimate(stable.mean(), np.array([stable[idx].mean() for idx in reps]),
                       len(questions), confidence).as_dict()
        answers = [(r.actions[0], r.infos[0].get("answer")) for r in records if r.actions and r.infos]
        checks = check_answers([a for a, _ in answers], [ref for _, ref in answers])  # never the reward's parser
        units = {"accuracy": unit_sums(questions, correct.sum(1), [len(personas)] * len(questions)),
                 "pss": unit_sums(questions, stable.astype(float))}
        fidelity = self._fidelity(records, seed)
        if "units" in fidelity:  # attribution per question: an interval here, seed pooling in algorithms.compare
            units["attribution"] = fidelity.pop("units")
            pairs = np.array(list(units["attribution"].values())).reshape(-1, 2)
            if len(pairs):
                fidelity["attribution_interval"], _ = ratio_estimate(pairs[:, 0], pairs[:, 1], samples=samples,
                                                                     confidence=confidence, rng=rng)
                fidelity["attribution_interval"] = fidelity["attribution_interval"].as_dict()
        mean = estimate(correct.mean(), np.array([correct[idx].mean() for idx in reps]), len(questions),
                        confidence).as_dict()
        return {"units": units, "checks": checks, "accuracy": mean, "accuracy_by_persona": per_persona,
                "mean": float(acc.mean()),
                "std": float(acc.std()), "min": float(acc.min()),
                "max": float(acc.max()), "best": personas[int(acc.argmax())], "worst": personas[int(acc.argmin())],
                "pss": pss, "stability": float(1 - acc.std() / acc.mean()) if acc.mean() > 0 else float("nan"),
                "format": float(np.mean([has_final_marker(r.actions[0]) for r in records])),
                "fidelity": fidelity}

    def evaluate(self, rows: dict[str, list[EpisodeRecord]], *, heads: Sequence[str], base: str | None = None,
                 bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> EvalReport:
        """Accuracy per evaluation persona, PSS and fidelity for every row."""
        results = {name: self._row(records, bootstrap, confidence, seed) for name, records in rows.items()}
        units: dict[str, dict[str, Any]] = {}
        for name, r in results.items():
            for figure, sums in r.pop("units").items():
                units.setdefault(figure, {})[name] = sums
        metrics = {"rows": results, "heads": list(heads), "confidence": confidence, "unit": "question", "units": units,
                   "pss_definition": "share of questions answered correctly under every evaluation persona"
                   if self.pss_share == 1 else f"share of questions answered correctly under at least "
                   f"{self.pss_share:.0%} of the evaluation personas",
                   "questions": len({r.options["problem"] for records in rows.values() for r in records})}
        scalars = {}
        for name, r in results.items():
            scalars[f"accuracy/{name}"] = r["accuracy"]["value"]
            scalars.update({f"accuracy/{name}/{p}": v["value"] for p, v in r["accuracy_by_persona"].items()})
            scalars.update({f"lottery/{name}/{k}": r[k] for k in ("mean", "std", "min", "max", "stability")})
            scalars[f"pss/{name}"] = r["pss"]["value"]
            scalars.update({f"fidelity/{name}/{k}": v for k, v in r["fidelity"].items()
                            if k != "chance" and isinstance(v, (int, float))})
        return EvalReport(metrics, math_markdown({"": metrics}), scalars,
                          plot=lambda path: plot_accuracy({name: r for name, r in results.items()}, path))


def _attribution(fidelity: dict[str, Any]) -> str:
    """The attribution rate, with its interval over questions when the report has one."""
    if "attribution_interval" in fidelity:
        return cell(fidelity["attribution_interval"])
    return fmt(fidelity.get("attribution"), 3)


def math_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """Tables of one or several runs' math reports (run label "" for a single run)."""
    summary, personas, per_persona = [], [], {}
    for run, report in reports.items():
        for name, r in report["rows"].items():
            label = f"{run} {name}".strip()
            f = r["fidelity"]
            acc = r["accuracy"]
            summary.append([label, f"{fmt(acc['value'], 3)} [{fmt(acc['low'], 3)}, {fmt(acc['high'], 3)}]",
                            fmt(r["std"], 3), fmt(r["min"], 3), fmt(r["max"], 3),
                            f"{fmt(r['pss']['value'], 3)} [{fmt(r['pss']['low'], 3)}, {fmt(r['pss']['high'], 3)}]",
                            fmt(r["stability"], 3), _attribution(f), fmt(f.get("margin"), 3),
                            fmt(f.get("rating"), 2), fmt(r["format"], 3),
                            fmt(r.get("checks", {}).get("first_cue_correct"), 3),
                            fmt(r.get("checks", {}).get("committed"), 3)])
            per_persona[label] = r["accuracy_by_persona"]
            personas += [p for p in r["accuracy_by_persona"] if p not in personas]
    first = next(iter(reports.values()))
    chance = next((r["fidelity"].get("chance") for r in first["rows"].values() if "chance" in r["fidelity"]), None)
    lines = [f"Accuracy over the evaluation personas on {first['questions']} questions; PSS = "
             f"{first['pss_definition']} (bootstrap {first['confidence']:.0%} interval over questions); stability = "
             "1 - std/mean of the per-persona accuracies; attribution = share of answers whose persona the frozen "
             f"base model picks out (chance {fmt(chance, 3)}); margin = mean log-prob per token gained by the "
             "persona over no persona. Independent checks (envs.checks.math, not the reward's parser): the "
             "number after the first answer cue is right; the answer commits to one value.", ""]
    lines += markdown_table(["Policy", "mean acc.", "std", "min", "max", "PSS", "stability", "attribution",
                             "margin", "judge 1-5", "#### used", "first cue right", "one value"], summary)
    lines += ["", "Accuracy per evaluation persona (the persona lottery):", ""]
    lines += markdown_table(["Persona"] + list(per_persona),
                            [[p] + [fmt(acc[p]["value"], 3) if p in acc else "n/a" for acc in per_persona.values()]
                             for p in personas])
    return "\n".join(lines) + "\n"


def plot_accuracy(rows: dict[str, dict[str, Any]], path: str | Path) -> None:
    """Accuracy per evaluation persona, one bar per row (base, RLVR, PerMix...)."""
    plt = pyplot()
    personas = list(dict.fromkeys(p for r in rows.values() for p in r["accuracy_by_persona"]))
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(personas) + 0.3 * len(rows), 4))
    grouped_bars(ax, {name: r["accuracy_by_persona"] for name, r in rows.items()}, personas, personas,
                 "accuracy per evaluation persona", "accuracy")
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylim(0, 1)
    save_figure(fig, path)
