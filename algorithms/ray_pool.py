"""Ray actors that survive their own deaths: the ``ray`` settings and every pool that runs work on Ray workers.

:class:`RayActorPool` starts or joins a cluster (``ray.address``), starts ``ray.num_workers`` actors
of one class, and runs calls on them. A call whose actor died (a killed process, a lost node) is
sent again, unchanged, to the actor once Ray has restarted it; an actor that dies
``ray.max_failures`` times in a row stops the work with an error naming it. Every call is a pure
function of its arguments (the same episodes, seeds and weights), so a re-run gives exactly what
the lost run would have.

Two pools build on it:

- :class:`algorithms.rollout.RayRolloutPool`: the trainers' rollout workers (one turn per request,
  published weight versions);
- :class:`JobPool`: whole units of held-out episodes for the router and the benchmark, each
  worker holding the frozen policy and the task it built from the entry point's config
  (:class:`JobWorker`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from algorithms.journal import Journal
from configs import store_settings
from configs.validation import check_types, require, structured


@dataclass
class RayConfig:
    """Where episodes run: the ``ray`` config group (``ray=default``; these defaults are its only source).

    The trainers, the router and the benchmark read it; ``num_shards`` and ``max_staleness`` only
    matter to the trainers.

    Attributes:
        enabled: Run episodes in Ray actors (false: in this process).
        address: null starts a local Ray cluster sized to the machine; ``auto`` or a URL joins one.
        num_workers: Ray actors.
        num_cpus_per_worker: CPUs each actor reserves (also its torch thread count).
        num_gpus_per_worker: GPUs each actor reserves (> 0 puts its policy copy on CUDA).
        num_shards: Requests per step (null: one per worker; one in-process). Sampling seeds depend
            on the shard, so equal shards give equal episodes whatever runs them.
        max_staleness: 0: workers wait for the newest weights (on-policy); 1: they collect the next
            step while the learner updates, with weights one update old.
        max_failures: Consecutive deaths of one worker before the run stops with an error (Ray
            restarts a dead actor up to this many times).
        startup_timeout_s: How long to wait for the actors to start.
        log_to_driver: Show the workers' output in this process.
        runtime_env: Ray runtime environment for the workers (``env_vars``, ``working_dir``, ``pip``...),
            e.g. ``{working_dir: ., env_vars: {HF_HOME: /data/hf}}`` for a cluster.
    """

    enabled: bool = False
    address: str | None = None
    num_workers: int = 2
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    num_shards: int | None = None
    max_staleness: int = 0
    max_failures: int = 3
    startup_timeout_s: float = 300.0
    log_to_driver: bool = True
    runtime_env: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_types(self, "ray")
        require(self.max_staleness in (0, 1), "ray.max_staleness", self.max_staleness,
                "must be 0 or 1 (each step continues the episodes of the one before, so at most one step can be "
                "collected ahead)")
        require(self.num_workers >= 1, "ray.num_workers", self.num_workers, "must be an integer >= 1")
        require(self.num_shards is None or self.num_shards >= 1, "ray.num_shards", self.num_shards,
                "must be null or an integer >= 1")
        require(self.max_failures >= 0, "ray.max_failures", self.max_failures, "must be an integer >= 0")
        require(self.num_cpus_per_worker >= 0, "ray.num_cpus_per_worker", self.num_cpus_per_worker, "must be >= 0")
        require(self.num_gpus_per_worker >= 0, "ray.num_gpus_per_worker", self.num_gpus_per_worker, "must be >= 0")
        require(self.startup_timeout_s > 0, "ray.startup_timeout_s", self.startup_timeout_s, "must be > 0")


def ray_config(cfg: DictConfig) -> RayConfig:
    """The ``ray`` node as a checked :class:`RayConfig` (a config saved without one gets the defaults)."""
    return structured(RayConfig, cfg.get("ray"), "ray")


store_settings("ray", "default", RayConfig)


class RolloutWorkerError(RuntimeError):
    """A Ray worker kept dying, or raised an error that running it again would not fix."""


@dataclass
class Call:
    """One method call on one actor, kept until its result is in so it can be sent again.

    Attributes:
        worker: Index of the actor.
        method: The actor method's name.
        args: Its positional arguments.
        what: What the call does, for error messages ("collecting step 3, shard 1").
        key: The caller's name for the call (returned with its result).
        ref: The pending result.
    """

    worker: int
    method: str
    args: tuple
    what: str
    key: Any = None
    ref: Any = None


class RayActorPool:
    """``config.num_workers`` Ray actors of one class, with calls re-sent to restarted actors.

    Args:
        config: The ``ray`` settings.
        actor: The actor class (it needs a ``ready()`` method).
        args: Arguments of each actor's constructor (``name=`` and ``torch_threads=`` are added).
        kind: What the workers are, in names and messages (``rollout`` gives ``rollout-0``...).

    Raises:
        RolloutWorkerError: if the cluster cannot be reached or the actors cannot start.
    """

    def __init__(self, config: RayConfig, actor: type, args: tuple, kind: str = "rollout"):
        import ray

        self.ray = ray
        self.config = config
        self.kind = kind
        self.num_workers = config.num_workers
        self.max_failures = config.max_failures
        runtime_env = dict(config.runtime_env)
        env_vars = dict(runtime_env.get("env_vars") or {})
        if os.environ.get("PLURALGYM_CACHE"):  # workers must find the same converted-model cache
            env_vars.setdefault("PLURALGYM_CACHE", os.environ["PLURALGYM_CACHE"])
        if env_vars:
            runtime_env["env_vars"] = env_vars
        self.started_cluster = False
        if not ray.is_initialized():
            try:
                ray.init(address=config.address, runtime_env=runtime_env or None, include_dashboard=False,
                         log_to_driver=config.log_to_driver)
            except (ConnectionError, RuntimeError, ValueError) as err:
                where = "a local Ray cluster" if config.address is None else f"the Ray cluster at {config.address!r}"
                raise RolloutWorkerError(f"Could not start or join {where}: {err}. Start one with `ray start "
                                         "--head`, or set ray.address=null to start a local one.") from err
            self.started_cluster = True
        self.workers: list[Any] = []
        self.failures = [0] * self.num_workers
        try:
            self._start(actor, args)
        except BaseException:
            self.close()
            raise

    def name(self, index: int) -> str:
        """The name of actor ``index`` (``rollout-0``)."""
        return f"{self.kind}-{index}"

    def _start(self, actor: type, args: tuple) -> None:
        ray, rc = self.ray, self.config
        cpus, gpus = float(rc.num_cpus_per_worker), float(rc.num_gpus_per_worker)
        have = ray.cluster_resources()
        need = {"CPU": cpus * self.num_workers, "GPU": gpus * self.num_workers}
        short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0)}
        if short and self.started_cluster:
            lacking = ", ".join(f"{k}: {v:g} needed, {h:g} in the cluster" for k, (v, h) in short.items())
            raise RolloutWorkerError(f"{self.num_workers} {self.kind} workers do not fit this machine ({lacking}). "
                                     "Lower ray.num_workers, ray.num_cpus_per_worker or ray.num_gpus_per_worker.")
        remote = ray.remote(actor).options(num_cpus=cpus, num_gpus=gpus, max_restarts=self.max_failures,
                                           max_task_retries=0)
        self.workers = [remote.remote(*args, name=self.name(j), torch_threads=max(1, int(cpus)))
                        for j in range(self.num_workers)]
        try:
            ray.get([w.ready.remote() for w in self.workers], timeout=rc.startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise RolloutWorkerError(
                f"The {self.kind} workers did not start within {rc.startup_timeout_s} s; the cluster may lack the "
                f"resources they ask for ({need}, available {have}). Raise ray.startup_timeout_s or ask for less."
            ) from None
        except ray.exceptions.RayError as err:
            raise RolloutWorkerError(f"A {self.kind} worker failed while starting: {err}") from err

    def send(self, call: Call) -> Call:
        """Starts ``call`` on its actor (again, after a death)."""
        call.ref = getattr(self.workers[call.worker], call.method).remote(*call.args)
        return call

    def gather(self, calls: Sequence[Call]) -> Iterator[tuple[Call, Any, int]]:
        """Yields ``(call, result, retries so far)`` as the sent calls finish, re-sending any a dead actor lost.

        Raises:
            RolloutWorkerError: when one actor died ``ray.max_failures`` times in a row, or raised
                an error of its own (a bug or a bad config, which a re-run would repeat).
        """
        ray = self.ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError,
                ray.exceptions.NodeDiedError)
        pending = {id(c): c for c in calls}
        retries = 0
        while pending:
            ready, _ = ray.wait([c.ref for c in pending.values()], num_returns=1)
            call = next(c for c in pending.values() if c.ref == ready[0])
            name = self.name(call.worker)
            try:
                result = ray.get(call.ref)
            except lost as err:
                self.failures[call.worker] += 1
                if self.failures[call.worker] > self.max_failures:
                    raise RolloutWorkerError(
                        f"{self.kind.capitalize()} worker {name} died {self.failures[call.worker]} times in a row "
                        f"(last while {call.what}): {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}. Its logs are under the Ray session folder "
                        "(/tmp/ray/session_latest/logs by default)."
                    ) from err
                retries += 1
                print(f"[ray] {name} died while {call.what}; sending it again once Ray has restarted it", flush=True)
                self._await_restart(call.worker)
                self.send(call)  # the same call: the same episodes, seeds and weights
                continue
            except ray.exceptions.RayTaskError as err:
                raise RolloutWorkerError(f"{self.kind.capitalize()} worker {name} failed while {call.what}: "
                                         f"{err}") from err
            self.failures[call.worker] = 0
            del pending[id(call)]
            yield call, result, retries

    def _await_restart(self, index: int) -> None:
        """Waits until Ray has restarted actor ``index`` (calls made while it restarts fail at once)."""
        ray, name = self.ray, self.name(index)
        deadline = time.monotonic() + self.config.startup_timeout_s
        while True:
            try:
                ray.get(self.workers[index].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except ray.exceptions.ActorUnavailableError:  # still restarting
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            except ray.exceptions.GetTimeoutError:
                break
            except ray.exceptions.RayActorError as err:
                raise RolloutWorkerError(f"{self.kind.capitalize()} worker {name} died and Ray could not restart "
                                         f"it: {err}") from err
        raise RolloutWorkerError(f"{self.kind.capitalize()} worker {name} did not come back within "
                                 f"ray.startup_timeout_s={self.config.startup_timeout_s} s after dying.")

    def close(self) -> None:
        """Stops the actors, and the local cluster if this pool started it."""
        ray = self.ray
        for worker in self.workers:
            try:
                ray.kill(worker)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers = []
        if self.started_cluster and ray.is_initialized():
            ray.shutdown()
            self.started_cluster = False


# ----------------------------------------------------------------------------------------------
# Units of held-out episodes (router prefixes, benchmark rows)
# ----------------------------------------------------------------------------------------------


class JobWorker:
    """A worker that builds its state once from an entry point's config and runs units of work on it.

    Args:
        build: A module-level function ``(cfg) -> state`` (the frozen policy, the task...), sent by
            reference from the caller's own code, never read from a file.
        cfg: The entry point's composed config as plain data (already vetted by the caller).
        name: Shown in errors.
        torch_threads: Torch threads of this process.
    """

    def __init__(self, build: Callable[[dict[str, Any]], Any], cfg: dict[str, Any], *, name: str = "local",
                 torch_threads: int | None = None):
        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        self.name = name
        self.state = build(cfg)

    def ready(self) -> dict[str, Any]:
        """Answers once the actor is up: its name and process id."""
        return {"name": self.name, "pid": os.getpid()}

    def run(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        """``fn(state, **kwargs)``: one unit of work."""
        return fn(self.state, **kwargs)


@dataclass
class Job:
    """One unit of work: ``fn(state, **kwargs)``, kept in the journal under ``key``."""

    key: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any]


class JobPool(RayActorPool):
    """Units of work on Ray actors that each hold the state ``build(cfg)`` (``ray.enabled=true``)."""

    def __init__(self, config: RayConfig, build: Callable[[dict[str, Any]], Any], cfg: dict[str, Any]):
        super().__init__(config, JobWorker, (build, cfg), kind="episode")

    def run(self, jobs: Sequence[Job]) -> Iterator[tuple[Job, Any]]:
        """Yields ``(job, result)`` as the jobs finish; job ``i`` goes to worker ``i mod num_workers``."""
        calls = [self.send(Call(i % self.num_workers, "run", (job.fn, job.kwargs), f"running {job.key}", key=job))
                 for i, job in enumerate(jobs)]
        for call, result, _ in self.gather(calls):
            yield call.key, result


def job_pool(cfg: Any, build: Callable[[dict[str, Any]], Any]) -> JobPool | None:
    """A :class:`JobPool` of workers that each hold ``build(cfg)`` when ``cfg.ray.enabled``, else None.

    The workers get ``cfg`` as plain data with ``device`` set to where they run (``cuda`` when
    ``ray.num_gpus_per_worker`` > 0, else ``cpu``) and the run folders ``policy=``, ``router=``
    and ``prefixes=`` made absolute.
    """
    rc = ray_config(cfg)
    if not rc.enabled:
        return None
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["device"] = "cuda" if rc.num_gpus_per_worker > 0 else "cpu"
    for key in ("policy", "router", "prefixes"):  # run folders named relative to here: workers may start elsewhere
        if isinstance(plain.get(key), str) and plain[key]:
            plain[key] = str(Path(plain[key]).resolve())
    return JobPool(rc, build, plain)


def run_jobs(jobs: Sequence[Job], journal: Journal, *, state: Any, cfg: Any = None,
             build: Callable[[dict[str, Any]], Any] | None = None) -> list[Any]:
    """Every job's result, in order, each kept in ``journal`` as it finishes.

    Jobs the journal already holds are not run again. The others run here, one after another, on
    ``state``; or, when ``cfg.ray.enabled``, all at once on a :class:`JobPool` of workers that each
    hold ``build(cfg)``, kept in the order they finish and the pool closed afterwards.
    """
    todo = [j for j in jobs if j.key not in journal]
    pool = job_pool(cfg, build) if todo and cfg is not None and build is not None else None
    if pool is not None:
        try:
            for job, result in pool.run(todo):
                journal.record(job.key, result)
        finally:
            pool.close()
    return [journal.unit(job.key, lambda job=job: job.fn(state, **job.kwargs)) for job in jobs]
