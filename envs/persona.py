"""Single-turn persona alignment: one response to a user request, critiqued for one facet of a persona."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import gymnasium as gym
import numpy as np

from envs.batching import EnvBatch, check_text_action, generator_from, known_options, rendered
from envs.data.persona import (
    FACET_LABELS,
    FACETS,
    PersonaRecord,
    Request,
    compose_records,
    load_requests,
    split_requests,
)
from envs.judges.persona import (
    Critique,
    HeuristicPersonaCritic,
    HeuristicPersonaEvalJudge,
    HeuristicRubricExtractor,
    PersonaCritic,
    PersonaEvalJudge,
    ResponseQuery,
    Rubric,
    RubricExtractor,
    RubricQuery,
    SpanJudgement,
    check_facet,
)
from envs.tutoring import ChatMessages, ChatText

MAX_ACTION_CHARS = 8000

# --- prompts ------------------------------------------------------------------------------------

STUDENT_INTRO = "You are one person whose identity has several sides; each is described below."
STUDENT_OUTRO = "Reply to the user's message as this person would, from their own point of view."
TEACHER_INTRO = "You are a person with the persona described below."
TEACHER_REVIEW = ("(Private notes for your answer, never shown to the user. Your earlier answer to this question "
                  "was reviewed for how well it fits your persona, and the review said:")
TEACHER_OUTRO = ("Use the review as guidance, without mentioning it, and answer the question again from your "
                 "persona's point of view.)")
_LABEL_TO_FACET = {label: facet for facet, label in FACET_LABELS.items()}
_OPTION_KEYS = ("request", "record", "facet", "rubric")


def _prompt_of(request: Request | str) -> str:
    return request.prompt if isinstance(request, Request) else str(request)


def student_messages(record: PersonaRecord, request: Request | str) -> list[dict[str, str]]:
    """The policy's prompt: the five-facet persona scaffold, then the user's request.

    It is the same for every head, for the base model and at inference: it names no focal facet and
    holds no rubric or critique.
    """
    sections = "\n\n".join(f"## {FACET_LABELS[f]}\n{record.facets[f]}" for f in FACETS)
    system = f"{STUDENT_INTRO}\n\n{sections}\n\n{STUDENT_OUTRO}"
    return [{"role": "system", "content": system}, {"role": "user", "content": _prompt_of(request)}]


def parse_scaffold(observation: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The facet texts of an observation's system message (the inverse of :func:`student_messages`).

    Raises:
        ValueError: If the first message is not a five-facet persona scaffold.
    """
    if not observation or observation[0].get("role") != "system":
        raise ValueError("expected an observation whose first message is the persona system message")
    text = observation[0]["content"]
    if not (text.startswith(STUDENT_INTRO + "\n\n") and text.endswith("\n\n" + STUDENT_OUTRO)):
        raise ValueError("the system message is not a persona scaffold from student_messages()")
    body = text[len(STUDENT_INTRO) + 2: len(text) - len(STUDENT_OUTRO) - 2]
    facets = {}
    for block in body.split("\n\n## "):
        header, _, content = block.removeprefix("## ").partition("\n")
        facet = _LABEL_TO_FACET.get(header.strip())
        if facet is None or facet in facets:
            raise ValueError(f"unexpected section {header!r} in the persona scaffold")
        facets[facet] = content
    if list(facets) != list(FACETS):
        raise ValueError(f"the persona scaffold has sections {list(facets)}, expected {list(FACETS)}")
    return facets


def teacher_messages(observation: Sequence[Mapping[str, str]], facet: str,
                     critique: str | None) -> list[dict[str, str]]:
    """The privileged prompt for focal ``facet``: the observation with different system text.

    Two blocks differ from the policy's prompt, as in the paper: the opening system message holds a
    single ``## <Facet>`` section (its text parsed out of the observation) instead of all five,
    and the critique is added. The critique goes into a final system message after the user's
    request, right before the answer, rather than into the opening message: the embedded 135M
    model follows it only there (its own answers under this prompt score Q(focal) = 0.22 with the
    heuristic judge, against -0.13 under the policy's prompt and -0.13 with the critique in the
    opening message; 40 held-out requests, one sample each). The user's request is kept as is and
    the rubric never appears here. ``critique=None`` leaves the critique out (the teacher without
    feedback: the single facet only).
    """
    facet = check_facet(facet)
    persona = parse_scaffold(observation)[facet]
    opening = [{"role": "system", "content": f"{TEACHER_INTRO}\n\n## {FACET_LABELS[facet]}\n{persona}"},
               *(dict(m) for m in observation[1:])]
    if critique is None:
        return opening
    review = f"{TEACHER_REVIEW} {' '.join(str(critique).split())} {TEACHER_OUTRO}"
    return [*opening, {"role": "system", "content": review}]


# --- defaults -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _default_records() -> tuple[PersonaRecord, ...]:
    return tuple(compose_records(part="train"))


@functools.lru_cache(maxsize=1)
def _default_requests() -> tuple[Request, ...]:
    return tuple(split_requests(load_requests())["train"])


def _as_record(item: PersonaRecord | Mapping) -> PersonaRecord:
    return item if isinstance(item, PersonaRecord) else PersonaRecord.from_dict(dict(item))


def _as_request(item: Request | Mapping) -> Request:
    return item if isinstance(item, Request) else Request.from_dict(dict(item))


class EpisodeState(TypedDict):
    """Everything that decides how a persona-critic episode goes on (plain JSON-compatible data).

    Keys:
        record: The persona record (``PersonaRecord.to_dict``; its id is ``record["id"]``).
        request: The request (``Request.to_dict``; its uid is ``request["uid"]``).
        facet: The focal facet.
        rubric: Whether the critic gets the rubric.
        criteria: The focal facet's cached criteria (empty without rubric), so no new extraction is needed.
        done: Whether the response has been given.
        rng_state: ``np_random.bit_generator.state``.
    """

    record: dict
    request: dict
    facet: str
    rubric: bool
    criteria: list[str]
    done: bool
    rng_state: dict


class PersonaCriticEnv(gym.Env):
    """Answer a user request in the voice of a many-sided persona; a critic reviews one hidden facet.

    ## Description
    A persona record describes one person through five facets (professional, sports, arts, travel,
    culinary). Each episode pairs a user request with a record and a hidden *focal facet*. The agent
    answers once; a critic then writes a short critique of how the answer carries the focal facet's
    voice, guided by a cached per-facet rubric when ``rubric=True``. This is the single-turn
    setting of multi-head on-policy self-distillation: each head learns one facet from critiques.

    ## Observation
    Chat messages (:class:`envs.tutoring.ChatMessages`): a system message with the whole persona
    (:func:`student_messages`: five ``## <Facet>`` sections) and the user's request. It is the same
    for every focal facet and rubric setting and does not change when the agent answers.

    ## Action
    The response, a non-empty string (:class:`envs.tutoring.ChatText`). Text longer than
    ``max_action_chars`` is cut (``info["truncated_action"]``); non-strings and blank strings raise
    ``ValueError``; lone surrogates become "?".

    ## Feedback/Reward
    ``info["feedback"]`` is the critique (never part of an observation); :func:`teacher_messages`
    builds the privileged prompt from it. ``info["label"]`` is ``{"persona": focal facet, "record":
    record id, "request": request uid}``. The reward is Q(response, focal facet) in (-1, 1) from the
    ``reward_judge`` (``info["q"]``, ``info["good_tokens"]``, ``info["bad_tokens"]``).

    ## Episode end
    ``terminated`` is True after the one response; the registered id also sets
    ``max_episode_steps=1``.

    ## Arguments
    - ``records``: persona records (default: the composed ``train`` records of ``envs.data.persona``).
    - ``requests``: user requests (default: the ``train`` split of the shipped prompts, code dropped).
    - ``critic``: a :class:`envs.judges.persona.PersonaCritic` (default heuristic).
    - ``rubric_extractor``: a :class:`envs.judges.persona.RubricExtractor` (default heuristic).
    - ``reward_judge``: a :class:`envs.judges.persona.PersonaEvalJudge` (default heuristic).
    - ``rubric``: whether the critic sees the rubric (default True; ``reset`` option ``rubric``).
    - ``max_action_chars``: longest response kept.
    - ``render_mode``: ``"ansi"`` or ``"human"``.

    ``reset`` options: ``request`` (uid or index), ``record`` (id or index), ``facet`` (name) and
    ``rubric`` (bool). Request, record and facet are drawn from ``np_random`` every time, in that
    order, so fixing one leaves the others as they would have been.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 1}

    def __init__(
        self,
        records: Sequence[PersonaRecord | Mapping] | None = None,
        requests: Sequence[Request | Mapping] | None = None,
        critic: PersonaCritic | None = None,
        rubric_extractor: RubricExtractor | None = None,
        reward_judge: PersonaEvalJudge | None = None,
        rubric: bool = True,
        max_action_chars: int = MAX_ACTION_CHARS,
        render_mode: str | None = None,
    ) -> None:
        self.records = [_as_record(r) for r in (records if records is not None else _default_records())]
        self.requests = [_as_request(r) for r in (requests if requests is not None else _default_requests())]
        if not self.records or not self.requests:
            raise ValueError("PersonaCriticEnv needs at least one persona record and one request")
        self._record_index = {r.id: i for i, r in enumerate(self.records)}
        self._request_index = {r.uid: i for i, r in enumerate(self.requests)}
        if len(self._record_index) != len(self.records) or len(self._request_index) != len(self.requests):
            raise ValueError("record ids and request uids must be unique")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.critic = critic if critic is not None else HeuristicPersonaCritic()
        self.rubric_extractor = rubric_extractor if rubric_extractor is not None else HeuristicRubricExtractor()
        self.reward_judge = reward_judge if reward_judge is not None else HeuristicPersonaEvalJudge()
        self.use_rubric = bool(rubric)
        self.max_action_chars = int(max_action_chars)
        self.render_mode = render_mode

        longest_system = max(len(student_messages(r, "")[0]["content"]) for r in self.records)
        longest_prompt = max(len(r.prompt) for r in self.requests)
        self.observation_space = ChatMessages(max(longest_system, longest_prompt, 4000))
        self.action_space = ChatText(self.max_action_chars)

        self._record: PersonaRecord | None = None
        self._request: Request | None = None
        self._facet = ""
        self._rubric = self.use_rubric
        self._criteria: list[str] = []
        self._done = False
        self._response = ""
        self._critique = ""

    # -- gymnasium API --------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draws a request, a record and a focal facet; returns the persona prompt."""
        query = self._start_episode(seed=seed, options=options)
        self._set_rubric(self.rubric_extractor.extract_batch([query])[0] if query is not None else None)
        return self._finish_reset()

    def step(self, action: str):
        """Takes the response; returns the unchanged prompt, Q for the focal facet and the critique in ``info``."""
        query, cut = self._begin_step(action)
        critique = self.critic.critique_batch([query])[0]
        judgement = self.reward_judge.judge_batch([self._judge_query(query)])[0]
        return self._finish_step(critique, judgement, cut)

    def render(self) -> str | None:
        """The request, the response and its critique (``ansi``), or prints them (``human``)."""
        if self._request is None:
            return None
        text = f"Request: {self._request.prompt}"
        if self._done:
            text += f"\nResponse: {self._response}\nCritique ({self._facet}): {self._critique}"
        return rendered(text, self.render_mode)

    # -- state ------------------------------------------------------------------------------------

    @property
    def label(self) -> dict[str, str]:
        """Hidden ground truth: ``persona`` is the focal facet (the matched head's name)."""
        if self._record is None or self._request is None:
            raise RuntimeError("PersonaCriticEnv: no episode yet; call reset() first")
        return {"persona": self._facet, "record": self._record.id, "request": self._request.uid}

    @property
    def criteria(self) -> list[str]:
        """The focal facet's rubric criteria for this episode (empty without rubric)."""
        return list(self._criteria)

    def get_state(self) -> EpisodeState:
        """A JSON-compatible snapshot of the episode, the random generator's state included."""
        if self._record is None or self._request is None:
            raise RuntimeError("PersonaCriticEnv.get_state: no episode yet; call reset() first")
        return EpisodeState(record=self._record.to_dict(), request=self._request.to_dict(), facet=self._facet,
                            rubric=self._rubric, criteria=list(self._criteria), done=self._done,
                            rng_state=copy.deepcopy(self.np_random.bit_generator.state))

    def set_state(self, state: Mapping[str, Any]) -> list[dict[str, str]]:
        """Continues the episode captured by :meth:`get_state`; returns its observation."""
        self.np_random = generator_from(state["rng_state"])
        self._record = PersonaRecord.from_dict(state["record"])
        self._request = Request.from_dict(state["request"])
        self._facet = check_facet(state["facet"])
        self._rubric = bool(state["rubric"])
        self._criteria = [str(c) for c in state.get("criteria", [])]
        self._done = bool(state.get("done", False))
        self._response = self._critique = ""
        return self._observation()

    def check_action(self, action: Any) -> tuple[str, bool]:
        """Validates a response; returns (text to use, whether it was cut to ``max_action_chars``)."""
        return check_text_action(action, env="PersonaCriticEnv", noun="response", max_chars=self.max_action_chars)

    # -- helpers, also used by PersonaCriticBatch -------------------------------------------------

    def _pick(self, name: str, value: Any, index: dict[str, int], items: list) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if not 0 <= int(value) < len(items):
                raise ValueError(f"option {name!r}: index {value} is out of range for {len(items)} {name}s")
            return int(value)
        if isinstance(value, str) and value in index:
            return index[value]
        raise ValueError(f"option {name!r} must be an index or one of the env's {name} ids, got {value!r}")

    def _start_episode(self, *, seed: int | None, options: dict[str, Any] | None) -> RubricQuery | None:
        super().reset(seed=seed)
        options = known_options(options, _OPTION_KEYS)
        rng = self.np_random
        # every draw happens every time, in a fixed order, so an override leaves the others unchanged
        request_i = int(rng.integers(len(self.requests)))
        record_i = int(rng.integers(len(self.records)))
        facet = FACETS[int(rng.integers(len(FACETS)))]
        if "request" in options:
            request_i = self._pick("request", options["request"], self._request_index, self.requests)
        if "record" in options:
            record_i = self._pick("record", options["record"], self._record_index, self.records)
        if "facet" in options:
            facet = check_facet(options["facet"])
        rubric = options.get("rubric", self.use_rubric)
        if not isinstance(rubric, (bool, np.bool_)):
            raise ValueError(f"option 'rubric' must be a bool, got {rubric!r}")
        self._record, self._request = self.records[record_i], self.requests[request_i]
        self._facet, self._rubric = facet, bool(rubric)
        self._criteria, self._done, self._response, self._critique = [], False, "", ""
        return RubricQuery(self._record, self._request.prompt) if self._rubric else None

    def _set_rubric(self, rubric: Rubric | None) -> None:
        self._criteria = [str(c) for c in rubric.criteria.get(self._facet, [])] if rubric is not None else []

    def _finish_reset(self) -> tuple[list[dict[str, str]], dict[str, Any]]:
        info = {"label": self.label, "rubric": self._rubric, "criteria": list(self._criteria)}
        if self.render_mode == "human":
            self.render()
        return self._observation(), info

    def _begin_step(self, action: Any) -> tuple[ResponseQuery, bool]:
        if self._record is None or self._request is None:
            raise RuntimeError("PersonaCriticEnv: call reset() before step()")
        if self._done:
            raise RuntimeError("PersonaCriticEnv: the episode has ended (one response per episode); call reset()")
        text, cut = self.check_action(action)
        self._response = text
        criteria = tuple(self._criteria) if self._rubric else None
        return ResponseQuery(self._record, self._facet, self._request.prompt, text, criteria), cut

    @staticmethod
    def _judge_query(query: ResponseQuery) -> ResponseQuery:
        return ResponseQuery(query.record, query.facet, query.prompt, query.response)

    def _finish_step(self, critique: Critique, judgement: SpanJudgement, cut: bool):
        self._done = True
        self._critique = str(critique.text)
        info = {
            "feedback": self._critique,
            "label": self.label,
            "critique_fallback": bool(critique.fallback),
            "rubric": self._rubric,
            "criteria": list(self._criteria),
            "q": float(judgement.q),
            "good_tokens": int(judgement.good_tokens),
            "bad_tokens": int(judgement.bad_tokens),
            "judge_fallback": bool(judgement.fallback),
            "truncated_action": cut,
        }
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(judgement.q), True, False, info

    def _observation(self) -> list[dict[str, str]]:
        return student_messages(self._record, self._request)


class PersonaCriticBatch(EnvBatch):
    """N persona-critic episodes stepped together: one rubric call per reset, one critic and one judge call per step.

    Gives exactly the episodes that N separate :class:`PersonaCriticEnv` would with the same seeds,
    options and actions; chat-model plug-ins get the whole batch in one call each.

    Args:
        num_envs: Number of episodes.
        critic, rubric_extractor, reward_judge: Shared by all episodes (defaults as in the env).
        **env_kwargs: Passed to every env (``records``, ``requests``, ``rubric``, ``max_action_chars``).

    ``reset(seed=s)`` seeds episode i with ``s + i`` (a list gives one seed each); ``options_list``
    gives per-episode reset options.
    """

    def __init__(self, num_envs: int, *, critic: PersonaCritic | None = None,
                 rubric_extractor: RubricExtractor | None = None, reward_judge: PersonaEvalJudge | None = None,
                 **env_kwargs: Any) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        first = PersonaCriticEnv(critic=critic, rubric_extractor=rubric_extractor, reward_judge=reward_judge,
                                 **env_kwargs)
        self.critic, self.rubric_extractor, self.reward_judge = first.critic, first.rubric_extractor, first.reward_judge
        env_kwargs.update(records=first.records, requests=first.requests)
        self.envs = [first] + [PersonaCriticEnv(critic=self.critic, rubric_extractor=self.rubric_extractor,
                                                reward_judge=self.reward_judge, **env_kwargs)
                               for _ in range(int(num_envs) - 1)]
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self._done = [True] * len(self.envs)

    action_noun = "responses"

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options_list: Sequence[dict[str, Any] | None] | None = None):
        """Starts every episode; returns the observations and infos."""
        n = self.num_envs
        seeds, options_list = self._reset_arguments(seed, options_list)
        queries = [env._start_episode(seed=s, options=o) for env, s, o in zip(self.envs, seeds, options_list)]
        todo = [i for i, q in enumerate(queries) if q is not None]
        rubrics = self.rubric_extractor.extract_batch([queries[i] for i in todo]) if todo else []
        for i, rubric in zip(todo, rubrics):
            self.envs[i]._set_rubric(rubric)
        results = [env._finish_reset() for env in self.envs]
        self._done = [False] * n
        return [obs for obs, _ in results], [info for _, info in results]

    def step(self, actions: Sequence[str]):
        """One response per episode: one critic call and one judge call for the batch."""
        self._check_actions(actions)
        begun = [env._begin_step(a) for env, a in zip(self.envs, actions)]
        critiques = self.critic.critique_batch([q for q, _ in begun])
        judgements = self.reward_judge.judge_batch([PersonaCriticEnv._judge_query(q) for q, _ in begun])
        results = [env._finish_step(c, j, cut) for env, c, j, (_, cut) in zip(self.envs, critiques, judgements, begun)]
        self._done = [True] * self.num_envs
        obs, rewards, terminated, truncated, infos = zip(*results)
        return (list(obs), np.asarray(rewards, dtype=np.float64), np.asarray(terminated, dtype=bool),
                np.asarray(truncated, dtype=bool), list(infos))
