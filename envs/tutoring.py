"""Multi-turn tutoring against a simulated student with a hidden learning-style preference."""

from __future__ import annotations

import copy
import re
import string
from typing import Any, Sequence, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.batching import EnvBatch, check_text_action, generator_from, known_options, rendered
from envs.data import load_tutoring_topics
from envs.judges.base import LABEL_SCORE, JudgeDialogue, SatisfactionJudge, TurnJudgement
from envs.students.base import (
    REACTIONS,
    STUDENT_TYPES,
    StudentContext,
    StudentSimulator,
    check_labels,
)

MAX_ACTION_CHARS = 2000
MAX_REPLY_CHARS = 2000
MAX_TOPIC_CHARS = 300
MAX_TURNS = 6



class DialogueState(TypedDict):
    """Everything that determines how a tutoring dialogue goes on (see ``TutoringEnv.get_state``).

    Plain JSON-compatible data, so a dialogue can be checkpointed (as JSON, never a pickle) or
    continued in another process (a rollout worker) with exactly the draws it would have made here.

    Keys:
        messages: The dialogue so far, as in the observation.
        topic: The episode's topic.
        student_type: The hidden preference.
        reaction: The hidden reaction style.
        turn: Teacher turns taken so far.
        rng_state: ``np_random.bit_generator.state`` (the student's and the draws' randomness).
        done: Whether the episode has ended (``TutoringBatch`` only).
    """

    messages: list[dict[str, str]]
    topic: str
    student_type: str
    reaction: str
    turn: int
    rng_state: dict[str, Any]
    done: bool


# ---------------------------------------------------------------------------------------------
# spaces


class ChatText(spaces.Text):
    """A ``Text`` space for free-form chat text.

    ``contains`` accepts any ``str`` whose length is within bounds (every unicode character is
    allowed); ``sample`` draws from a readable ASCII alphabet and never returns blank text.
    """

    def __init__(self, max_length: int, *, min_length: int = 1, seed: int | np.random.Generator | None = None) -> None:
        charset = string.ascii_letters + string.digits + " .,?!'"
        super().__init__(max_length, min_length=min_length, charset=charset, seed=seed)

    def contains(self, x: Any) -> bool:
        """Any string within the length bounds."""
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random readable string that is never blank."""
        text = super().sample(mask=mask, probability=probability)
        if self.min_length > 0 and not text.strip():
            text = "?" + text[1:]
        return text

    def __repr__(self) -> str:
        return f"ChatText({self.min_length}, {self.max_length})"


class ChatMessages(spaces.Sequence):
    """A variable-length sequence of chat messages ``{"role": str, "content": str}``.

    Gymnasium's ``Sequence`` only accepts tuples; chat messages are conventionally lists, so
    this space accepts both.
    """

    def __init__(self, max_content_chars: int, seed: int | np.random.Generator | None = None) -> None:
        message = spaces.Dict(
            {
                "role": spaces.Text(16, min_length=1, charset=string.ascii_lowercase),
                "content": ChatText(max_content_chars),
            }
        )
        super().__init__(message, seed=seed)

    def contains(self, x: Any) -> bool:
        """A list or tuple of messages, each a valid role and content."""
        return isinstance(x, (list, tuple)) and all(self.feature_space.contains(item) for item in x)


# ---------------------------------------------------------------------------------------------
# seed teacher turns (used when no dataset context is given). Half explain first, half ask first.

SEED_TURNS_EXPLAIN = (
    "Today we're covering {topic}. I'll start by laying out the big picture: what it is, where it "
    "comes from, and why people still talk about it. After that we'll go through the key details one "
    "at a time.",
    "Let's get into {topic}. It's one of those ideas that keeps showing up once you know it, so I'll "
    "walk you through the essentials first and then build on them step by step.",
    "Our topic for this session is {topic}. I'm going to begin with a clear overview of the main "
    "ideas, and then we'll look at a couple of concrete examples that make them stick.",
    "Welcome! We're studying {topic} today. There are a few core points worth knowing, and I'll "
    "explain each of them in order, starting with the most important one.",
    "Alright, {topic}. Here's the plan: I'll explain the central concept, show how the pieces connect, "
    "and point out the mistakes people usually make about it. Sound good?",
    "Today's lesson is about {topic}. Lots of people find it confusing at first, so I'll break it "
    "down into small steps and explain each one as we go.",
    "We're going to look at {topic} together. First I'll give you the background you need, then the "
    "main idea itself, and finally why it still matters today.",
    "This session is all about {topic}. I'll do most of the talking at the start so you have a solid "
    "foundation, beginning with the basic definition and the most important facts.",
)

SEED_TURNS_ASK = (
    "Today we're talking about {topic}. Before I say anything, what do you already know about it?",
    "Let's start with {topic}. When you hear that name, what's the first thing that comes to mind?",
    "Our topic is {topic}. Have you come across it before, maybe in class or in a film? Tell me what "
    "you remember.",
    "We're going to explore {topic}. To begin, take a guess: why do you think people still study it "
    "today?",
    "Hi! Today's topic is {topic}. What do you think it's about, just from the name?",
    "Let's dig into {topic}. I'd like to hear your ideas first: what questions do you have about it?",
    "Today we'll work through {topic} together. Tell me one thing you think you know about it, even "
    "if you're not sure.",
    "Welcome! We're looking at {topic} today. If you had to explain it to a friend in one sentence, "
    "what would you say?",
)

SEED_TURNS = SEED_TURNS_EXPLAIN + SEED_TURNS_ASK

# Openings of the ``test`` split only: no training, tuning or evaluation episode ever starts with
# one, so a policy cannot have fitted its replies to their wording. Half explain, half ask.
SEED_TURNS_HELDOUT = (
    "{topic} is on the board for today. I'll give you the short version first, then fill in the "
    "details that make it work.",
    "Here is where we're heading: {topic}. I'll start from the definition and then show you one "
    "example that puts it to use.",
    "Time for {topic}. There are two or three facts that everything else rests on, and I'll go "
    "through those first.",
    "Right, {topic}. I'll describe how it came about and what it changed, and we'll stop at each "
    "step that matters.",
    "Our subject is {topic}. Suppose you had to teach it to me: where would you begin?",
    "{topic} today. Picture someone who has never heard of it. What would puzzle them most?",
    "Before we open {topic}, make a prediction: what is the single most important thing about it?",
    "Let's try {topic}. Think of an everyday situation where it might show up. What comes to mind?",
)

SYSTEM_TEMPLATE = (
    "Tutoring session. Topic: {topic}. You are the teacher; after each of your turns the student "
    "answers."
)
_SYSTEM_PATTERN = re.compile(re.escape(SYSTEM_TEMPLATE).replace(re.escape("{topic}"), "(?P<topic>.*)"), re.DOTALL)


def observation_topic(observation: Sequence[dict[str, str]]) -> str:
    """The topic named by an observation's opening system message (``""`` when there is none)."""
    for message in observation:
        if message.get("role") == "system":
            match = _SYSTEM_PATTERN.fullmatch(message.get("content", ""))
            if match:
                return match["topic"]
    return ""


_OPTION_KEYS = ("topic", "student_type", "reaction", "seed_turn")


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


class TutoringEnv(gym.Env):
    """Tutor a simulated student whose preferred learning style is hidden.

    ## Description

    The agent is a teacher. Each episode is a tutoring session about one topic (the 78 topics of
    the Education Dialogue generator by default). A student simulator is given a hidden
    preference, ``"direct"`` (likes being told and shown) or ``"interactive"`` (likes being asked
    and drawn out), and a reaction style, ``"frustrated"``, ``"rude"`` or ``"anxious"``, that
    colours how it shows a mismatch. The session opens with a seed teacher turn about the topic
    (some explain first, some ask first, or the opening turn of a dataset dialogue) and the
    student's reaction to it. The student engages when a turn fits its preference and turns flat
    when it does not, without ever naming the preference.

    ## Observation

    The dialogue so far as chat messages (``ChatMessages`` space): a ``"system"`` message naming
    the topic, then alternating ``{"role": "teacher", ...}`` and ``{"role": "student", ...}``
    messages; it always ends with a student turn. Neither the student type nor the reaction ever
    appears in it.

    ## Action

    The next teacher turn, a non-empty string (``ChatText`` space). A non-string or blank action
    raises ``ValueError``; text longer than ``max_action_chars`` is cut to that length and
    flagged with ``info["truncated_action"] = True``.

    ## Feedback/Reward

    ``info["feedback"]`` is the student's reply to the turn (the privileged signal for
    self-distillation; it is also appended to the next observation). The reward is the
    satisfaction judge's verdict on that reply: +1 good, 0 neutral, -1 bad (the judge reads only
    the reply, not the hidden preference). ``info["label"]`` holds the hidden ground truth
    ``{"persona": ..., "student_type": ..., "reaction": ...}`` (``persona`` is the student type,
    the name of the matched head); ``info["satisfaction"]`` the judge's label.

    ## Episode end

    ``terminated`` is always False: a session has no natural end. Registered as
    ``pluralgym/Tutoring-v0`` with ``max_episode_steps=6`` teacher turns, after which the
    ``TimeLimit`` wrapper sets ``truncated``.

    ## Arguments

    - ``student``: a ``StudentSimulator``; default ``ScriptedStudent()``.
    - ``satisfaction_judge``: a ``SatisfactionJudge``; default ``HeuristicSatisfactionJudge()``.
    - ``topics``: topic names to draw from (default: the shipped list).
    - ``contexts``: ``[{"topic": ..., "seed_turn": ...}]`` (e.g. from
      ``envs.data.load_education_dialogue``); when given, episodes draw a context instead of a
      topic and a seed template.
    - ``seed_turns``: opening templates with a ``{topic}`` slot to draw from (default
      ``SEED_TURNS``; the tutoring task's ``test`` split uses ``SEED_TURNS_HELDOUT``).
    - ``student_type`` / ``reaction``: fix the hidden preference / reaction (default: drawn).
    - ``max_action_chars``: longest teacher turn kept (default 2000).
    - ``max_reply_chars``: longest student reply kept (default 2000).
    - ``render_mode``: ``"ansi"`` (returns the transcript) or ``"human"`` (prints it).

    ``reset(options=...)`` accepts ``"topic"``, ``"student_type"``, ``"reaction"`` and
    ``"seed_turn"`` to override the draws for one episode. All randomness (draws and the
    scripted student's wording) comes from ``self.np_random``, so a seed fixes the dialogue.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(
        self,
        student: StudentSimulator | None = None,
        satisfaction_judge: SatisfactionJudge | None = None,
        topics: Sequence[str] | None = None,
        contexts: Sequence[dict[str, str]] | None = None,
        student_type: str | None = None,
        reaction: str | None = None,
        max_action_chars: int = MAX_ACTION_CHARS,
        max_reply_chars: int = MAX_REPLY_CHARS,
        render_mode: str | None = None,
        seed_turns: Sequence[str] | None = None,
    ) -> None:
        if student is None:
            from envs.students.scripted import ScriptedStudent

            student = ScriptedStudent()
        if satisfaction_judge is None:
            from envs.judges.heuristic import HeuristicSatisfactionJudge

            satisfaction_judge = HeuristicSatisfactionJudge()
        if student_type is not None:
            _check_choice("student_type", student_type, STUDENT_TYPES)
        if reaction is not None:
            _check_choice("reaction", reaction, REACTIONS)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        if int(max_action_chars) < 1 or int(max_reply_chars) < 1:
            raise ValueError("max_action_chars and max_reply_chars must be positive")

        self.student = student
        self.satisfaction_judge = satisfaction_judge
        self.contexts = [dict(c) for c in contexts] if contexts else None
        self.topics = list(topics) if topics else load_tutoring_topics()
        self.seed_turns = tuple(seed_turns) if seed_turns else SEED_TURNS
        if not all(isinstance(t, str) and "{topic}" in t for t in self.seed_turns):
            raise ValueError("every seed_turns template must be a string with a {topic} slot")
        self.fixed_student_type = student_type
        self.fixed_reaction = reaction
        self.max_action_chars = int(max_action_chars)
        self.max_reply_chars = int(max_reply_chars)
        self.render_mode = render_mode

        content_chars = max(self.max_action_chars, self.max_reply_chars, MAX_TOPIC_CHARS + 200)
        if self.contexts:  # dataset seed turns can be long; keep them inside the space
            content_chars = max(content_chars, *(len(c["seed_turn"]) for c in self.contexts))
        self.observation_space = ChatMessages(content_chars)
        self.action_space = ChatText(self.max_action_chars)

        self._messages: list[dict[str, str]] = []
        self._topic = ""
        self._student_type = ""
        self._reaction = ""
        self._turn = 0
        self._pending_reply: str | None = None

    # -- gymnasium API --------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Starts a session: the seed teacher turn and the student's first reaction."""
        ctx = self._start_episode(seed=seed, options=options)
        return self._finish_reset(self.student.reply_batch([ctx])[0])

    def step(self, action: str):
        """Takes the teacher's turn; returns the dialogue, the satisfaction reward, the student's reply in ``info``."""
        ctx, truncated_action = self._begin_step(action)
        self._record_reply(self.student.reply_batch([ctx])[0])
        judgement = self.satisfaction_judge.judge_batch([self._judge_input()])[0]
        return self._finish_step(judgement, truncated_action)

    def render(self) -> str | None:
        """The transcript (``ansi``), or prints it (``human``)."""
        return rendered(self.transcript(), self.render_mode)

    # -- helpers, also used by TutoringBatch ------------------------------------------------------

    @property
    def label(self) -> dict[str, str]:
        """Hidden ground truth of the current episode; ``persona`` is the student type (the matched head's name)."""
        return {"persona": self._student_type, "student_type": self._student_type, "reaction": self._reaction}

    @property
    def topic(self) -> str:
        """The episode's topic."""
        return self._topic

    @property
    def turn(self) -> int:
        """Teacher turns taken by the agent in this episode (the seed turn not counted)."""
        return self._turn

    def transcript(self) -> str:
        """The dialogue so far as ``Role: text`` lines."""
        return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in self._messages)

    def get_state(self) -> DialogueState:
        """A snapshot of the current episode, including the random generator's state."""
        if not self._messages:
            raise RuntimeError("TutoringEnv.get_state: no episode yet; call reset() first")
        return DialogueState(messages=self._observation(), topic=self._topic, student_type=self._student_type,
                             reaction=self._reaction, turn=self._turn,
                             rng_state=copy.deepcopy(self.np_random.bit_generator.state), done=False)

    def set_state(self, state: DialogueState) -> None:
        """Continues the episode captured by :meth:`get_state` (same future draws and replies)."""
        check_labels(state["student_type"], state["reaction"])
        self.np_random = generator_from(state["rng_state"])
        self._messages = [dict(m) for m in state["messages"]]
        self._topic, self._student_type, self._reaction = state["topic"], state["student_type"], state["reaction"]
        self._turn = int(state["turn"])

    def check_action(self, action: Any) -> tuple[str, bool]:
        """Validates a teacher turn; returns (text to use, whether it was cut to ``max_action_chars``)."""
        return check_text_action(action, env="TutoringEnv", noun="teacher turn", max_chars=self.max_action_chars)

    def _start_episode(self, *, seed: int | None, options: dict[str, Any] | None) -> StudentContext:
        super().reset(seed=seed)
        options = known_options(options, _OPTION_KEYS)
        rng = self.np_random
        # Every draw happens every time, in a fixed order, so an override leaves the rest unchanged.
        if self.contexts:
            context = self.contexts[int(rng.integers(len(self.contexts)))]
            topic, seed_turn = context["topic"], context["seed_turn"]
        else:
            topic = self.topics[int(rng.integers(len(self.topics)))]
            seed_turn = None
        student_type = STUDENT_TYPES[int(rng.integers(len(STUDENT_TYPES)))]
        reaction = REACTIONS[int(rng.integers(len(REACTIONS)))]
        template = self.seed_turns[int(rng.integers(len(self.seed_turns)))]

        topic = str(options.get("topic", topic)).strip()[:MAX_TOPIC_CHARS]
        if not topic:
            raise ValueError("option 'topic' must be a non-empty string")
        student_type = options.get("student_type", self.fixed_student_type or student_type)
        reaction = options.get("reaction", self.fixed_reaction or reaction)
        check_labels(student_type, reaction)
        if "seed_turn" in options:
            seed_turn, _ = self.check_action(options["seed_turn"])
        elif seed_turn is None or "topic" in options:
            seed_turn = template.format(topic=topic)

        self._topic, self._student_type, self._reaction = topic, student_type, reaction
        self._turn = 0
        self._messages = [
            {"role": "system", "content": SYSTEM_TEMPLATE.format(topic=topic)},
            {"role": "teacher", "content": seed_turn},
        ]
        return self._student_context()

    def _student_context(self) -> StudentContext:
        return StudentContext(
            topic=self._topic,
            student_type=self._student_type,
            reaction=self._reaction,
            messages=[dict(m) for m in self._messages if m["role"] != "system"],
            rng=self.np_random,
        )

    def _clean_reply(self, reply: Any) -> str:
        text = str(reply if reply is not None else "").strip()
        return text[: self.max_reply_chars] if text else "..."

    def _finish_reset(self, reply: str) -> tuple[list[dict[str, str]], dict[str, Any]]:
        first = self._clean_reply(reply)
        self._messages.append({"role": "student", "content": first})
        info = {
            "label": self.label,
            "topic": self._topic,
            "seed_turn": self._messages[1]["content"],
            "feedback": first,
        }
        if self.render_mode == "human":
            self.render()
        return self._observation(), info

    def _begin_step(self, action: Any) -> tuple[StudentContext, bool]:
        if not self._messages:
            raise RuntimeError("TutoringEnv: call reset() before step()")
        text, cut = self.check_action(action)
        self._messages.append({"role": "teacher", "content": text})
        self._turn += 1
        return self._student_context(), cut

    def _record_reply(self, reply: Any) -> None:
        self._messages.append({"role": "student", "content": self._clean_reply(reply)})

    def _judge_input(self) -> JudgeDialogue:
        return JudgeDialogue.last_turn(self._topic, [dict(m) for m in self._messages])

    def _finish_step(self, judgement: TurnJudgement, truncated_action: bool):
        label = judgement.labels[-1] if judgement.labels else "neutral"
        reward = LABEL_SCORE.get(label, 0.0)
        info = {
            "feedback": self._messages[-1]["content"],
            "label": self.label,
            "satisfaction": label,
            "judge_rationale": judgement.rationale,
            "turn": self._turn,
            "truncated_action": truncated_action,
        }
        if self.render_mode == "human":
            self.render()
        return self._observation(), reward, False, False, info

    def _observation(self) -> list[dict[str, str]]:
        return [dict(m) for m in self._messages]


class TutoringBatch(EnvBatch):
    """N tutoring dialogues stepped together, one batched student call and one judge call per step.

    Produces exactly the dialogues that N separate ``TutoringEnv`` instances would with the same
    seeds and actions (each dialogue keeps its own ``np_random``); the difference is that a
    model-backed student answers all N in one ``reply_batch`` call and the judge scores them in
    one ``judge_batch`` call.

    Args:
        num_envs: number of dialogues.
        student, satisfaction_judge: shared by all dialogues (defaults as in ``TutoringEnv``).
        max_turns: teacher turns per episode; ``truncated`` becomes True at this turn (the
            registered ``max_episode_steps``). No auto-reset: call ``reset`` to start again.
        **env_kwargs: passed to every ``TutoringEnv`` (topics, contexts, student_type, ...).

    ``reset(seed=s)`` seeds dialogue i with ``s + i`` (a list gives one seed each);
    ``options_list`` gives per-dialogue reset options.
    """

    def __init__(
        self,
        num_envs: int,
        *,
        student: StudentSimulator | None = None,
        satisfaction_judge: SatisfactionJudge | None = None,
        max_turns: int = MAX_TURNS,
        **env_kwargs: Any,
    ) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        self.envs = [TutoringEnv(student=student, satisfaction_judge=satisfaction_judge, **env_kwargs)]
        self.student = self.envs[0].student
        self.satisfaction_judge = self.envs[0].satisfaction_judge
        for _ in range(int(num_envs) - 1):
            self.envs.append(TutoringEnv(student=self.student, satisfaction_judge=self.satisfaction_judge,
                                         **env_kwargs))
        self.max_turns = int(max_turns)
        self.observation_space = self.envs[0].observation_space
        self.action_space = self.envs[0].action_space
        self._done = [True] * len(self.envs)

    episode_noun, action_noun = "dialogue", "teacher turns"

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options_list: Sequence[dict[str, Any] | None] | None = None,
    ) -> tuple[list[list[dict[str, str]]], list[dict[str, Any]]]:
        """Starts every dialogue (dialogue i seeded with ``seed + i``, or per-dialogue seeds and options)."""
        n = self.num_envs
        seeds, options_list = self._reset_arguments(seed, options_list)
        contexts = [env._start_episode(seed=s, options=o) for env, s, o in zip(self.envs, seeds, options_list)]
        replies = self.student.reply_batch(contexts)
        results = [env._finish_reset(r) for env, r in zip(self.envs, replies)]
        self._done = [False] * n
        return [obs for obs, _ in results], [info for _, info in results]

    def get_states(self) -> list[DialogueState]:
        """Snapshots of every dialogue (see ``TutoringEnv.get_state``)."""
        states = [env.get_state() for env in self.envs]
        for state, done in zip(states, self._done):
            state["done"] = done
        return states

    def set_states(self, states: Sequence[DialogueState]) -> list[list[dict[str, str]]]:
        """Continues the dialogues captured by :meth:`get_states`, one per env; returns their observations."""
        self._check_states(states, "dialogue states")
        for env, state in zip(self.envs, states):
            env.set_state(state)
        self._done = [bool(state["done"]) for state in states]
        return [env._observation() for env in self.envs]

    def step(self, actions: Sequence[str]):
        """Takes one teacher turn in every dialogue, with one student call and one judge call."""
        self._check_actions(actions)
        begun = [env._begin_step(a) for env, a in zip(self.envs, actions)]
        replies = self.student.reply_batch([ctx for ctx, _ in begun])
        for env, reply in zip(self.envs, replies):
            env._record_reply(reply)
        judgements = self.satisfaction_judge.judge_batch([env._judge_input() for env in self.envs])
        obs, rewards, terminated, truncated, infos = [], [], [], [], []
        for i, (env, judgement, (_, cut)) in enumerate(zip(self.envs, judgements, begun)):
            o, r, term, _, info = env._finish_step(judgement, cut)
            trunc = env.turn >= self.max_turns
            self._done[i] = term or trunc
            obs.append(o)
            rewards.append(r)
            terminated.append(term)
            truncated.append(trunc)
            infos.append(info)
        return obs, np.asarray(rewards, dtype=np.float64), np.asarray(terminated), np.asarray(truncated), infos
