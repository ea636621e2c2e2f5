"""Drive full tutoring dialogues with a policy and measure how each head teaches.

:func:`rollout_dialogues` runs held-out contexts against both student types, one teacher turn at a
time, with any way of choosing the head (a fixed head, fixed weights, or a function of the
dialogue so far such as a router). :func:`evaluate_policy` does this for every head of a trained
policy and reports, per head: questions per turn, the style-judge head x style matrix (good rate
with neutral turns excluded) and satisfaction (good-turn rate) by head x student type, written as
``eval.json``, ``eval.md`` and ``eval.png`` into the run folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents import generate
from algorithms.runs import write_json
from algorithms.tasks import TutoringTask, count_questions
from envs.judges.base import JudgeDialogue
from envs.students.base import STUDENT_TYPES

Selection = dict[str, Any]
Selector = Callable[[list[list[dict]], int], Selection]


@dataclass
class DialogueRecord:
    """One evaluation dialogue.

    Attributes:
        driver: Which head, mixture or router produced the teacher turns.
        topic: The dialogue's topic.
        student_type: The hidden student type it faced.
        reaction: The hidden reaction style.
        messages: The whole dialogue (system message, seed turn and reaction, generated turns).
        first_generated: Index among teacher turns of the first generated one (the seed turn is 0).
        satisfaction: Satisfaction label of each generated turn.
        weights: Head weights used at each generated turn, when the driver mixes heads.
    """

    driver: str
    topic: str
    student_type: str
    reaction: str
    messages: list[dict[str, str]]
    first_generated: int
    satisfaction: list[str]
    weights: list[list[float]] = field(default_factory=list)

    @property
    def generated_turns(self) -> list[str]:
        """The teacher turns the driver wrote (the seed turn excluded)."""
        teacher = [m["content"] for m in self.messages if m["role"] == "teacher"]
        return teacher[self.first_generated:]


def eval_contexts(task: TutoringTask, contexts: int) -> list[dict[str, str]]:
    """Held-out reset options: ``contexts`` topics x both student types (paired across drivers)."""
    topics = task.heldout_topics
    return [{"topic": topics[c % len(topics)], "student_type": t} for c in range(contexts) for t in STUDENT_TYPES]


@torch.no_grad()
def rollout_dialogues(
    policy,
    tokenizer,
    task: TutoringTask,
    selector: Selector | Selection,
    *,
    driver: str,
    contexts: int,
    turns: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[DialogueRecord]:
    """Runs ``contexts`` held-out contexts x both student types for ``turns`` teacher turns.

    Args:
        policy: A MultiHeadPolicy (or plain causal LM with ``selector={}``).
        tokenizer: Its tokenizer.
        task: The tutoring task (held-out topics, student, judge).
        selector: Fixed ``generate`` keyword arguments (``{"head": 1}``, ``{"weights": [...]}``), or a
            function ``(observations, turn) -> kwargs`` called before every turn (e.g. a router). A
            selector with an ``observe(infos, rewards)`` method is also shown every step's outcome.
        driver: Name recorded in each :class:`DialogueRecord`.
        contexts: Number of held-out contexts.
        turns: Teacher turns to generate per dialogue.
        max_new_tokens: Length limit of a teacher turn.
        temperature: Sampling temperature.
        seed: Seeds both the dialogues' openings (identical across drivers) and the sampling.

    Returns:
        One record per dialogue.
    """
    options = eval_contexts(task, contexts)
    batch = task.make_batch(len(options), heldout=True)
    obs, infos = batch.reset(seed=seed, options_list=options)
    labels = [info["label"] for info in infos]
    satisfaction: list[list[str]] = [[] for _ in options]
    weights_used: list[list[list[float]]] = [[] for _ in options]
    for turn in range(turns):
        selection = selector(obs, turn) if callable(selector) else dict(selector)
        if torch.is_tensor(selection.get("weights")) and selection["weights"].dim() == 2:
            for i, row in enumerate(selection["weights"].tolist()):
                weights_used[i].append(row)
        out = generate(policy, tokenizer, [task.policy_messages(o) for o in obs], max_new_tokens=max_new_tokens,
                       temperature=temperature, seed=seed * 7919 + turn, **selection)
        texts = task.actions(out.texts)
        obs, rewards, _, _, step_infos = batch.step(texts)
        if hasattr(selector, "observe"):  # e.g. an online router that adapts to each reaction
            selector.observe(step_infos, rewards)
        for i, info in enumerate(step_infos):
            satisfaction[i].append(info["satisfaction"])
    return [
        DialogueRecord(driver=driver, topic=opt["topic"], student_type=label["student_type"],
                       reaction=label["reaction"], messages=o, first_generated=1, satisfaction=sat, weights=w)
        for opt, label, o, sat, w in zip(options, labels, obs, satisfaction, weights_used)
    ]


def good_rate(labels: Sequence[str], *, exclude_neutral: bool) -> float:
    """Share of ``"good"`` labels, over all labels or over good + bad ones."""
    counted = [lab for lab in labels if lab != "neutral"] if exclude_neutral else list(labels)
    return sum(lab == "good" for lab in counted) / len(counted) if counted else float("nan")


def style_rates(task: TutoringTask, records: Sequence[DialogueRecord]) -> dict[str, float]:
    """Style-judge good rate (neutrals excluded) of the records' generated turns, for each style."""
    dialogues = [JudgeDialogue(r.topic, r.messages, marked_from=r.first_generated) for r in records]
    rates = {}
    for persona in task.personas:
        labels = [lab for j in task.style_judge.judge_batch(dialogues, persona.name) for lab in j.labels]
        rates[persona.name] = good_rate(labels, exclude_neutral=True)
    return rates


def satisfaction_by_type(records: Sequence[DialogueRecord]) -> dict[str, float]:
    """Satisfaction good-turn rate per student type, and their mean."""
    rates = {t: good_rate([lab for r in records if r.student_type == t for lab in r.satisfaction],
                          exclude_neutral=False) for t in STUDENT_TYPES}
    rates["mean"] = float(np.nanmean(list(rates.values())))
    return rates


def questions_per_turn(records: Sequence[DialogueRecord]) -> float:
    """Mean questions per generated turn over the records."""
    counts = [count_questions(t) for r in records for t in r.generated_turns]
    return float(np.mean(counts)) if counts else float("nan")


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def markdown_report(heads: list[str], styles: list[str], results: dict[str, Any]) -> str:
    """Three small markdown tables: questions per turn, head x style, head x student type."""
    lines = ["| head | questions / turn |", "| --- | --- |"]
    lines += [f"| {h} | {_fmt(results['questions_per_turn'][h])} |" for h in heads]
    lines += ["", "Style judge (good rate, neutrals excluded):", "",
              "| head | " + " | ".join(f"{s} judge" for s in styles) + " |", "| --- |" + " --- |" * len(styles)]
    lines += [f"| {h} | " + " | ".join(_fmt(results["style_matrix"][h][s]) for s in styles) + " |" for h in heads]
    types = list(STUDENT_TYPES)
    lines += ["", "Satisfaction (good-turn rate):", "",
              "| head | " + " | ".join(f"{t} student" for t in types) + " | mean |",
              "| --- |" + " --- |" * (len(types) + 1)]
    lines += [f"| {h} | " + " | ".join(_fmt(results["satisfaction"][h][t]) for t in types + ["mean"]) + " |"
              for h in heads]
    return "\n".join(lines) + "\n"


def plot_report(heads: list[str], styles: list[str], results: dict[str, Any], path: Path) -> None:
    """Heat maps of the head x style and head x student-type matrices, plus questions per turn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(STUDENT_TYPES)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("style judge good rate", [[results["style_matrix"][h][s] for s in styles] for h in heads],
         [f"{s}\njudge" for s in styles]),
        ("satisfaction good-turn rate", [[results["satisfaction"][h][t] for t in types] for h in heads],
         [f"{t}\nstudent" for t in types]),
    ]
    for ax, (title, matrix, xlabels) in zip(axes[:2], panels):
        data = np.array(matrix, dtype=float)
        im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(xlabels)), xlabels)
        ax.set_yticks(range(len(heads)), [f"{h} head" for h in heads])
        for (i, j), v in np.ndenumerate(data):
            ax.text(j, i, _fmt(v), ha="center", va="center", color="white" if v < 0.6 else "black")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    q = [results["questions_per_turn"][h] for h in heads]
    axes[2].bar([f"{h} head" for h in heads], q, color="tab:orange")
    axes[2].set_title("questions per turn")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_policy(
    policy,
    tokenizer,
    task: TutoringTask,
    eval_cfg,
    out_dir: str | Path,
    *,
    head_for_persona: Callable[[int], int],
    writer=None,
    step: int | None = None,
) -> dict[str, Any]:
    """Evaluates every head on held-out contexts x both student types and writes the report.

    Args:
        policy: The trained MultiHeadPolicy.
        tokenizer: Its tokenizer.
        task: The tutoring task (needs a style judge).
        eval_cfg: ``contexts``, ``turns``, ``max_new_tokens``, ``temperature``, ``seed``.
        out_dir: Where ``eval.json``, ``eval.md`` and ``eval.png`` go.
        head_for_persona: Maps a persona index to the head that serves it (identity for MAH).
        writer: Optional TensorBoard writer for ``eval/`` scalars.
        step: Step recorded with those scalars.

    Returns:
        ``{"summary": metrics, "markdown": table}``.
    """
    if task.style_judge is None:
        raise ValueError("Evaluation needs a style judge (judge.style in the config).")
    out_dir = Path(out_dir)
    policy.eval()
    heads = list(dict.fromkeys(policy.head_names[head_for_persona(p)] for p in range(len(task.personas))))
    styles = task.persona_names
    results: dict[str, Any] = {"questions_per_turn": {}, "style_matrix": {}, "satisfaction": {}}
    records: list[DialogueRecord] = []
    for head in heads:
        recs = rollout_dialogues(policy, tokenizer, task, {"head": head}, driver=head, contexts=eval_cfg.contexts,
                                 turns=eval_cfg.turns, max_new_tokens=eval_cfg.max_new_tokens,
                                 temperature=eval_cfg.temperature, seed=eval_cfg.seed)
        records += recs
        results["questions_per_turn"][head] = questions_per_turn(recs)
        results["style_matrix"][head] = style_rates(task, recs)
        results["satisfaction"][head] = satisfaction_by_type(recs)
    results["dialogues"] = len(records)
    markdown = markdown_report(heads, styles, results)
    (out_dir / "eval.md").write_text(markdown)
    write_json(out_dir / "eval.json", {**results, "records": [asdict(r) for r in records]})
    plot_report(heads, styles, results, out_dir / "eval.png")
    if writer is not None:
        for h in heads:
            writer.add_scalar(f"eval/questions_per_turn_{h}", results["questions_per_turn"][h], step)
            for s in styles:
                writer.add_scalar(f"eval/style_{h}_head_{s}_judge", results["style_matrix"][h][s], step)
            for t, v in results["satisfaction"][h].items():
                writer.add_scalar(f"eval/satisfaction_{h}_head_{t}", v, step)
    return {"summary": results, "markdown": markdown}
