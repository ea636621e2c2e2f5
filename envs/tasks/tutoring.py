"""The tutoring environment (``pluralgym/Tutoring-v0``) as the trainers see it: :class:`TutoringTask`.

One head per teaching style (DIRECT, INTERACTIVE). The policy's prompt is the dialogue so far; the
privileged prompt adds one final system block naming the head's style and the episode's topic
(``configs/env/tutoring.yaml``) and, with ``teacher_feedback``, the student's actual reaction to the
sampled turn. ``label["persona"]`` is the student's hidden
learning style, so a head is *matched* when its name equals it.

The report (:meth:`TutoringTask.evaluate`, used by the end-of-run evaluation, the learning curve and
the benchmark) gives, per row: questions per generated turn; the style judge's good rate for each
style with neutral turns excluded (the paper's Table 4); satisfaction, the good-turn rate of the
student's replies with neutral turns included (Table 5), per student type and their mean, with
bootstrap intervals that resample topics (every dialogue of a drawn topic together, the same draw
for every row); and the quality of the generated turns (share judged
degenerate by :mod:`envs.turns.quality`, distinct-1/2, mean length, share cut at the token
limit, topic overlap), so gains that come with degeneration show at a glance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.checks import check_turn, check_turns
from envs.data import load_tutoring_topics
from envs.data.splits import check_contexts, read_split
from envs.judges.base import JudgeDialogue
from envs.judges.pairwise import PairwiseComparison
from envs.tasks.base import EpisodeRecord, EvalReport, Messages, Persona, personas_from
from envs.tasks.reporting import (
    ClusterDraw,
    cell,
    clustered_ratio,
    fmt,
    grouped_bars,
    heatmap,
    markdown_table,
    pyplot,
    save_figure,
    unit_sums,
)
from envs.turns.classifier import analyze_teacher_turn
from envs.turns.quality import last_full_sentence, quality_figures
from envs.tutoring import MAX_TURNS, SEED_TURNS_HELDOUT, TutoringBatch, observation_topic

_ROLES = {"system": "system", "teacher": "assistant", "student": "user"}
EMPTY_TURN = "Okay."  # stands in for a sampled turn that is empty once decoded (the env rejects blanks)

CHECK_COLUMNS = ("real_question_share", "lesson_question_share", "meta_talk_share", "lesson_content")
QUALITY_COLUMNS = ("degenerate_share", "distinct_1", "distinct_2", "mean_words", "cut_at_limit_share",
                   "topic_overlap")

HINDSIGHT_OPENING = "(Hindsight notes for the teacher's next turn, never shown to the student."
STYLE_CUE = " Use the {label} style. {description}"
# How the student's reply reaches the teacher. ``hindsight`` (the paper's reading) presents it as the
# reaction to the very turn being written, so the teacher favours turns that would draw it, bad
# ones included. ``retry`` presents it as the reaction to an earlier try at this turn, and asks for
# a better one.
REACTIONS = {
    "hindsight": " The student's actual reaction to that turn was: \"{feedback}\"",
    "retry": " An earlier try at this turn drew this reaction from the student: \"{feedback}\" Write a better turn.",
}
FEEDBACK_POSITIONS = ("after_style", "before_style")


def count_questions(text: str) -> int:
    """Number of questions in a teacher turn (each run of '?' counts once)."""
    return len(re.findall(r"\?+", text))


def split_topics(topics: Sequence[str], heldout_every: int) -> tuple[list[str], list[str]]:
    """Deterministic split: every ``heldout_every``-th topic goes to the second list."""
    if heldout_every < 2:
        raise ValueError(f"heldout_every must be at least 2, got {heldout_every}.")
    heldout = [t for i, t in enumerate(topics) if i % heldout_every == heldout_every - 1]
    return [t for t in topics if t not in heldout], heldout


def topic_splits(topics: Sequence[str], heldout_every: int, router_val_every: int) -> dict[str, list[str]]:
    """Every split's topics, none shared between ``eval``, ``test`` and the rest.

    Of every ``heldout_every`` topics in list order, the last goes to ``eval`` and the middle one
    (position ``(heldout_every - 1) // 2``) to ``test``; every ``router_val_every``-th of the others
    forms ``router_val``. ``train`` and ``router_train`` are the remaining topics (the trainer also
    plays the ``router_val`` topics, as the router learner plays the policy's own training topics).
    """
    if heldout_every < 3:
        raise ValueError(f"heldout_every must be at least 3 (one eval and one test topic in every group), "
                         f"got {heldout_every}.")
    test_at = (heldout_every - 1) // 2
    position = [i % heldout_every for i in range(len(topics))]
    test = [t for t, p in zip(topics, position) if p == test_at]
    heldout = [t for t, p in zip(topics, position) if p == heldout_every - 1]
    rest = [t for t, p in zip(topics, position) if p not in (test_at, heldout_every - 1)]
    router_train, router_val = split_topics(rest, router_val_every)
    return {"train": rest, "router_train": router_train, "router_val": router_val, "eval": heldout, "test": test}


class TutoringTask:
    """The tutoring environment seen by the trainers, the router and the benchmark (the task contract).

    The student's learning style is the episode's hidden persona label, drawn independently of the
    head that teaches (``feedback_follows_head = False``): every head meets matched and mismatched
    students.

    Args:
        personas: The teaching styles, one head each (``name``, ``label``, ``description``); their
            names are the student types (``direct``, ``interactive``).
        student: The student simulator shared by all dialogues.
        satisfaction_judge: The satisfaction judge that gives the env's reward.
        style_judge: The per-style judge used by the report.
        max_turns: Teacher turns per episode.
        heldout_every: Of every n topics, one is held out for ``eval`` and one for ``test``
            (:func:`topic_splits`); ``test`` dialogues also open with held-out templates.
        router_val_every: Every n-th remaining topic forms ``router_val``; the rest are ``train``
            and ``router_train``.
        trim_cut_turns: Deliver a sampled turn up to its last complete sentence (see
            :meth:`actions`); ``False`` sends the raw text, as before.
        teacher_feedback: Also show the privileged teacher the student's reply to the turn it
            scores, as the paper's privileged context does (000 Section 4.2.1). Off by default: on
            the embedded 135M model the reply in the block cancels the style cue (with it, the
            heads ask 0.09 vs 0.15 questions per turn after the default run; without it, 0.05 vs
            0.52), so the default distils the style cue alone.
        feedback_position: Where the reaction sits in the block: ``after_style`` (last, right
            before the turn, as in the paper) or ``before_style`` (so the style cue stays last).
        feedback_framing: How the reaction is put to the teacher (``REACTIONS``): ``hindsight``, the
            reaction to the turn being written, or ``retry``, the reaction to an earlier try at it.
        env_kwargs: Further ``TutoringEnv`` arguments (``max_action_chars``, ``student_type``...).
            ``topics`` here replaces the shipped list before the split.
    """

    feedback_follows_head = False

    def __init__(
        self,
        personas: Sequence[dict[str, str] | Persona],
        student: Any,
        satisfaction_judge: Any,
        style_judge: Any = None,
        max_turns: int = MAX_TURNS,
        heldout_every: int = 5,
        router_val_every: int = 5,
        trim_cut_turns: bool = True,
        teacher_feedback: bool = False,
        feedback_position: str = "after_style",
        feedback_framing: str = "hindsight",
        env_kwargs: dict[str, Any] | None = None,
    ):
        self.personas = personas_from(personas)
        self.student = student
        self.satisfaction_judge = satisfaction_judge
        self.style_judge = style_judge
        self.max_turns = int(max_turns)
        self.trim_cut_turns = bool(trim_cut_turns)
        self.teacher_feedback = bool(teacher_feedback)
        if feedback_position not in FEEDBACK_POSITIONS:
            raise ValueError(f"env.feedback_position={feedback_position!r} is not one of {FEEDBACK_POSITIONS}: "
                             "where the student's reaction sits in the teacher's block, after or before the style cue.")
        self.feedback_position = feedback_position
        if feedback_framing not in REACTIONS:
            raise ValueError(f"env.feedback_framing={feedback_framing!r} is not one of {tuple(REACTIONS)}: how the "
                             "student's reaction is put to the teacher.")
        self.reaction = REACTIONS[feedback_framing]
        env_kwargs = {k: v for k, v in dict(env_kwargs or {}).items() if v is not None}
        topics = env_kwargs.pop("topics", None) or load_tutoring_topics()
        self._topics = topic_splits(list(topics), heldout_every, router_val_every)
        self.env_kwargs = env_kwargs

    def topics(self, split: str) -> list[str]:
        """The topics of ``split`` (read through :func:`envs.data.splits.read_split`)."""
        return self._topics[read_split(split, "the tutoring task")]

    @property
    def persona_names(self) -> list[str]:
        """The personas' names, one per head."""
        return [p.name for p in self.personas]

    # ---- episodes -----------------------------------------------------------------------

    def make_batch(self, num: int, *, split: str = "train") -> TutoringBatch:
        """``num`` dialogues over the topics of ``split`` (``test`` also opens with its own templates)."""
        kwargs = dict(self.env_kwargs, topics=self.topics(split))
        if split == "test":
            kwargs["seed_turns"] = SEED_TURNS_HELDOUT
        return TutoringBatch(num, student=self.student, satisfaction_judge=self.satisfaction_judge,
                             max_turns=self.max_turns, **kwargs)

    @staticmethod
    def persona_options(persona: str) -> dict[str, Any]:
        """Reset options that give the episode a student of learning style ``persona``."""
        return {"student_type": persona}

    def eval_options(self, contexts: int | None, *, split: str = "eval", repeat: bool = False) -> list[dict[str, Any]]:
        """``contexts`` distinct topics of ``split`` (None: all), each against every student type.

        The same topic, student type and seed give the same dialogue in every row (paired rows).
        ``repeat`` lets the topics cycle (the router's training prefixes; never an evaluation).
        """
        topics = self.topics(split)
        if not repeat:
            contexts = check_contexts(contexts, len(topics), split, "topic")
        return [{"topic": topics[c % len(topics)], **self.persona_options(p.name)}
                for c in range(contexts) for p in self.personas]

    # ---- prompts and actions ------------------------------------------------------------

    @staticmethod
    def policy_messages(observation: Messages) -> Messages:
        """The policy's prompt: the dialogue with teacher turns as assistant and student turns as user."""
        return [{"role": _ROLES[m["role"]], "content": m["content"]} for m in observation]

    def teacher_messages(self, observation: Messages, persona: Persona, feedback: str | None) -> Messages:
        """The privileged prompt: the policy's prompt plus one final block with the style (and the reaction).

        The block is a system message placed right before the teacher's turn: a small model
        follows a style cue there far more than one buried in the opening system message (on the
        embedded 135M model, 0.03 vs 0.50 questions per sampled turn for the two styles, against
        0.19 vs 0.28 with the cue in the opening message; 32 dialogues each). ``{topic}`` in a
        persona's description becomes the episode's topic.
        """
        reaction = self.reaction.format(feedback=feedback) if self.teacher_feedback and feedback is not None else ""
        description = persona.description.replace("{topic}", observation_topic(observation))
        style = STYLE_CUE.format(label=persona.label, description=description)
        body = style + reaction if self.feedback_position == "after_style" else reaction + style
        block = f"{HINDSIGHT_OPENING}{body})"
        return self.policy_messages(observation) + [{"role": "system", "content": block}]

    def actions(self, texts: Sequence[str]) -> list[str]:
        """Sampled teacher turns as env actions.

        Each is stripped, cut back to its last complete sentence when ``trim_cut_turns`` is on
        (a turn that ran into ``max_new_tokens`` would otherwise reach the student mid-sentence,
        and the student treats that as bad teaching), and an empty one is replaced by
        ``EMPTY_TURN``. The trainer still learns from every sampled token; only what the student
        hears is trimmed, as a serving system that stops at a sentence boundary would.
        """
        trim = last_full_sentence if self.trim_cut_turns else str.strip
        return [trim(text) or EMPTY_TURN for text in texts]

    @staticmethod
    def comparison(observation: Messages, context: dict[str, Any], first: str, second: str,
                   first_feedback: str = "", second_feedback: str = "") -> PairwiseComparison:
        """The topic, the dialogue so far, both candidate turns and the student's answer to each."""
        return PairwiseComparison(str(context.get("topic", "")), [dict(m) for m in observation], first, second,
                                  first_feedback, second_feedback)

    def step_metrics(self, texts: Sequence[str], infos: Sequence[dict] = ()) -> dict[str, list[float]]:
        """Per-turn figures the trainer logs for each persona.

        ``questions_per_turn`` counts question marks; ``ask_share`` is 1 for a turn whose main move,
        as delivered, is asking (``envs.turns.classifier``, the rule the student and the style
        judge apply: a question the turn answers itself, or one buried in a long explanation, does
        not count).
        """
        delivered = self.actions(texts)
        return {"questions_per_turn": [float(count_questions(t)) for t in texts],
                "ask_share": [float(not a.is_bare and a.kind == "ask") for a in map(analyze_teacher_turn, delivered)]}

    @staticmethod
    def turn_checks(observations: Sequence[Messages], texts: Sequence[str],
                    labels: Sequence[dict] = ()) -> dict[str, list[float]]:
        """Per delivered turn, the independent checks (``envs.checks``), which neither the reward nor the student runs.

        ``meta_talk`` (talk about asking or the lesson instead of teaching), ``asks_about_lesson`` (a
        real question with lesson words) and ``lesson_content`` (lesson words beyond the topic's), each
        read against the topic of its observation.
        """
        checks = [check_turn(text, observation_topic(o)) for o, text in zip(observations, texts)]
        return {"meta_talk": [float(c.meta_talk) for c in checks],
                "asks_about_lesson": [float(c.asks_about_lesson) for c in checks],
                "lesson_content": [float(c.lesson_content) for c in checks]}

    def chat_plugins(self) -> list[Any]:
        """The student and the two judges."""
        return [self.student, self.satisfaction_judge, self.style_judge]

    # ---- the report ---------------------------------------------------------------------

    def evaluate(self, rows: dict[str, list[EpisodeRecord]], *, heads: Sequence[str], base: str | None = None,
                 bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0) -> EvalReport:
        """Questions per turn, the style matrix and satisfaction by student type for every row."""
        if self.style_judge is None:
            raise ValueError("The tutoring report needs a style judge (judge.style in the config).")
        topics = [r.start["topic"] for records in rows.values() for r in records]
        draw = ClusterDraw.draw(topics, samples=bootstrap, rng=np.random.default_rng(seed))  # one draw: rows paired
        results = {name: self._row(records, draw, confidence) for name, records in rows.items()}
        units: dict[str, dict[str, Any]] = {}
        for name, r in results.items():
            for figure, sums in r.pop("units").items():
                units.setdefault(figure, {})[name] = sums
        for head, persona in zip(heads, self.persona_names):  # each head on the students it is named for
            if head in results:
                units.setdefault("satisfaction/matched", {})[head] = units[f"satisfaction/{persona}"][head]
        metrics = {"rows": results, "heads": list(heads), "styles": self.persona_names,
                   "student_types": self.persona_names, "confidence": confidence,
                   "dialogues_per_row": {name: len(records) for name, records in rows.items()},
                   "unit": "topic", "units": units}
        scalars = {}
        for name, r in results.items():
            scalars[f"questions_per_turn/{name}"] = r["questions_per_turn"]
            scalars.update({f"style/{name}/{s}_judge": v for s, v in r["style"].items()})
            scalars.update({f"satisfaction/{name}/{t}": v["value"] for t, v in r["satisfaction"].items()})
            scalars.update({f"quality/{name}/{k}": v for k, v in r["quality"].items()
                            if k in QUALITY_COLUMNS and isinstance(v, (int, float))})
            scalars.update({f"checks/{name}/{k}": r["checks"][k] for k in CHECK_COLUMNS})
        return EvalReport(metrics, self._markdown(metrics), scalars, plot=lambda path: self._plot(metrics, path))

    def _row(self, records: list[EpisodeRecord], draw: ClusterDraw, confidence: float) -> dict[str, Any]:
        dialogues = [JudgeDialogue(r.start["topic"], r.final, marked_from=1) for r in records]
        style = {}
        for name in self.persona_names:
            labels = [lab for j in self.style_judge.judge_batch(dialogues, name) for lab in j.labels]
            counted = [lab for lab in labels if lab != "neutral"]
            style[name] = sum(lab == "good" for lab in counted) / len(counted) if counted else float("nan")
        satisfaction, replicates, units = {}, [], {}
        for t in self.persona_names:
            mine = [r for r in records if r.label["persona"] == t]
            sat = [[info["satisfaction"] for info in r.infos] for r in mine]
            good, turns, topics = [sum(lab == "good" for lab in s) for s in sat], [len(s) for s in sat], \
                [r.start["topic"] for r in mine]
            est, reps = clustered_ratio(good, turns, topics, draw, confidence=confidence)
            satisfaction[t] = est.as_dict()
            replicates.append(reps)
            units[f"satisfaction/{t}"] = unit_sums(topics, good, turns)
        # The mean over student types, per topic (every type plays each topic for the same turns).
        units["satisfaction/mean"] = unit_sums(
            [r.start["topic"] for r in records],
            [sum(info["satisfaction"] == "good" for info in r.infos) for r in records], [len(r.infos) for r in records])
        values = [satisfaction[t]["value"] for t in self.persona_names]
        mean_reps = np.nanmean(np.stack(replicates), axis=0) if replicates else np.array([np.nan])
        alpha = (1 - confidence) / 2
        finite = mean_reps[np.isfinite(mean_reps)]
        satisfaction["mean"] = {
            "value": float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
            "low": float(np.quantile(finite, alpha)) if finite.size else float("nan"),
            "high": float(np.quantile(finite, 1 - alpha)) if finite.size else float("nan"), "n": len(records)}
        # Figures the reward never computes (envs.checks): per turn, then per topic for the seed pooling.
        played = [(r.start["topic"], a) for r in records for a in r.actions]
        checks = check_turns([a for _, a in played], [t for t, _ in played])
        per_turn = [check_turn(a, t) for t, a in played]
        units["checks/meta_talk_share"] = unit_sums([t for t, _ in played], [c.meta_talk for c in per_turn])
        units["checks/lesson_question_share"] = unit_sums([t for t, _ in played],
                                                          [c.asks_about_lesson for c in per_turn])
        counts = [count_questions(a) for r in records for a in r.actions]
        limits = {r.token_limit for r in records}
        complete = all(len(r.tokens) == len(r.observations) == len(r.actions) for r in records)
        quality = quality_figures(
            [a for r in records for a in r.actions], [r.start["topic"] for r in records for _ in r.actions],
            token_counts=[t for r in records for t in r.tokens] if complete else None,
            max_new_tokens=limits.pop() if len(limits) == 1 else None,
            contexts=[obs for r in records for obs in r.observations] if complete else None)
        return {"questions_per_turn": float(np.mean(counts)) if counts else float("nan"), "style": style,
                "satisfaction": satisfaction, "quality": quality.as_dict(), "checks": checks, "units": units}

    def _markdown(self, metrics: dict[str, Any]) -> str:
        rows, types = metrics["rows"], metrics["student_types"]
        best = max((r["satisfaction"]["mean"]["value"] for r in rows.values()
                    if r["satisfaction"]["mean"]["value"] == r["satisfaction"]["mean"]["value"]), default=None)
        lines = [f"Satisfaction (good-turn rate of the student's replies, neutral turns included) with bootstrap "
                 f"{metrics['confidence']:.0%} intervals over topics (all dialogues of a topic drawn together):", ""]
        lines += markdown_table(
            ["Policy"] + [f"{t.capitalize()} stu." for t in types] + ["Mean"],
            [[name] + [cell(r["satisfaction"][t]) for t in types]
             + [cell(r["satisfaction"]["mean"], bold=r["satisfaction"]["mean"]["value"] == best)]
             for name, r in rows.items()])
        lines += ["", "Quality of the generated turns (degenerate: repetition, off-topic, filler or cut off "
                  "mid-sentence; cut at limit: reached max_new_tokens):", ""]
        lines += markdown_table(
            ["Policy", "degenerate", "distinct-1", "distinct-2", "words / turn", "cut at limit", "topic overlap"],
            [[name] + [fmt(r["quality"].get(k), 3 if k != "mean_words" else 1) for k in QUALITY_COLUMNS]
             for name, r in rows.items()])
        lines += ["", "Independent checks (envs.checks: rules that neither the reward, the student nor the judges "
                  "use): turns that put a real question to the student, that ask about the lesson (a real question, "
                  "not meta-talk, with lesson words), that talk about asking, questions, the student or the lesson "
                  "instead of its content (meta-talk), and lesson words per turn beyond the topic's own:", ""]
        lines += markdown_table(
            ["Policy", "real question", "asks about the lesson", "meta-talk", "lesson words / turn"],
            [[name] + [fmt(r["checks"].get(k), 3 if k != "lesson_content" else 1) for k in CHECK_COLUMNS]
             for name, r in rows.items()])
        lines += ["", "Style judge (good rate with neutral turns excluded) and questions per generated turn:", ""]
        lines += markdown_table(
            ["Policy"] + [f"{s} judge" for s in metrics["styles"]] + ["questions / turn"],
            [[name] + [fmt(r["style"][s]) for s in metrics["styles"]] + [fmt(r["questions_per_turn"])]
             for name, r in rows.items()])
        return "\n".join(lines) + "\n"

    def _plot(self, metrics: dict[str, Any], path: Path) -> None:
        plt = pyplot()
        rows, types, styles = metrics["rows"], metrics["student_types"], metrics["styles"]
        fig, axes = plt.subplots(1, 2, figsize=(7 + 1.2 * len(rows), 3.2 + 0.3 * len(rows)))
        heatmap(axes[0], [[r["style"][s] for s in styles] for r in rows.values()], [f"{s}\njudge" for s in styles],
                list(rows), "style judge good rate")
        grouped_bars(axes[1], {name: r["satisfaction"] for name, r in rows.items()}, types + ["mean"],
                     [f"{t} student" for t in types] + ["mean"], "satisfaction", "good-turn rate")
        axes[1].set_ylim(0, 1)
        save_figure(fig, path)
