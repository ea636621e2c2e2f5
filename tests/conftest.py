"""Shared fixtures: tiny random backbones (built locally in ~0.2 s with the real tokenizer) and tiny run configs."""

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import algorithms.benchmark  # noqa: F401  (each entry point registers its own settings when imported)
import algorithms.micro  # noqa: F401
import algorithms.opsd  # noqa: F401
import algorithms.rlvr  # noqa: F401
import algorithms.router  # noqa: F401
import configs
from agents import MultiHeadPolicy, load_backbone

configs.register()  # the agent and plug-in configs every compose() in the tests needs

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs on two pytest-xdist workers (pyproject's addopts): one OpenMP thread each, so the
    # two processes (and the command-line runs they start) never spin against each other on 2 cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# Every Ray cluster of the tests is local and short-lived: token authentication off for all of them, so a
# process that joined one cluster (Ray keeps its auth mode per process) can still start the next.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

CONFIGS = Path(configs.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent

# A two-step MAH-OPSD run on the tiny random model: seconds, same code paths as the real thing.
TINY_OPSD = (
    "agent=tiny",
    "algorithm=opsd_quick",
    "algorithm.steps=2",
    "algorithm.lr=1e-4",  # fixed here, so tuning the default does not move the pinned losses
    "algorithm.episodes_per_persona=2",
    "algorithm.micro_batch=1",
    "algorithm.max_new_tokens=6",
    "algorithm.eval.contexts=1",
    "algorithm.eval.turns=1",
    "algorithm.eval.max_new_tokens=4",
    "device=cpu",
)


def compose_config(name: str, *overrides: str):
    """Composes ``configs/<name>.yaml`` with overrides, as the command line would."""
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def group_options(group: str) -> list[str]:
    """Every option of a config group: YAML presets and registered structured configs."""
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def trained_parameters(run_dir) -> dict[str, torch.Tensor]:
    """The trainable tensors of a run folder's checkpoint (kill-and-resume tests compare them)."""
    from algorithms.checkpoint import load_checkpoint
    from algorithms.trainer import CHECKPOINT

    return load_checkpoint(Path(run_dir) / CHECKPOINT)["trainable"]


def make_tiny_run(folder: Path, env: str = "tutoring") -> Path:
    """A finished-run folder for router and benchmark tests: a fresh tiny policy (one head per persona) and its config."""
    from omegaconf import OmegaConf

    from algorithms.components import agent_config, build_policy, build_task

    cfg = compose_config("opsd", "agent=tiny", "device=cpu", f"env={env}")
    heads = [p.name for p in build_task(cfg).personas]
    policy, tokenizer, _ = build_policy(agent_config(cfg), heads, "mah", torch.device("cpu"), seed=cfg.seed)
    policy.save_pretrained(folder / "policy", tokenizer=tokenizer)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return folder


def make_candidates_run(folder: Path) -> Path:
    """A tiny policy run (``run/``) and a router-run folder (``router/``) whose data.jsonl holds scored candidates."""
    import json

    make_tiny_run(folder / "run")
    (folder / "router").mkdir()
    rows = []
    for i in range(12):
        persona = ["direct", "interactive"][i % 2]
        observation = [{"role": "system", "content": "Topic: volcanoes"},
                       {"role": "teacher", "content": "Let's talk about volcanoes."},
                       {"role": "student", "content": f"ok {i}"}]
        good = 0 if persona == "direct" else 1
        scores = [1.0 if d == good else -1.0 for d in range(2)]
        rows.append({"split": "train" if i < 8 else "val", "observation": observation, "persona": persona,
                     "candidates": ["Magma rises through the crust.", "What do you think magma is?", "Lava flows."],
                     "head_scores": scores, "blend_score": 0.0})
    (folder / "router" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def server():
    """A scripted OpenAI-compatible server on a free loopback port (``tests/chat_server.py``), shut after the test.

    ``tests/test_real_server.py`` overrides it with a live ``transformers serve``.
    """
    from tests.chat_server import ScriptedServer

    srv = ScriptedServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def opsd_config():
    """``make(*overrides)``: a tiny OPSD config (TINY_OPSD plus the overrides)."""
    return lambda *overrides: compose_config("opsd", *TINY_OPSD, *overrides)


@pytest.fixture
def tiny():
    """A fresh tiny random Llama backbone (model, tokenizer)."""
    return load_backbone("tiny-random", seed=0)


@pytest.fixture
def tiny_policy(tiny):
    """A 3-head policy over a fresh tiny backbone, and its tokenizer."""
    policy = MultiHeadPolicy(tiny.model, num_heads=3, head_names=["a", "b", "c"], seed=0)
    return policy, tiny.tokenizer


@pytest.fixture
def batch(tiny):
    """A left-padded batch of two prompts of different lengths."""
    enc = tiny.tokenizer(["The mitochondria is the powerhouse", "Hi"], return_tensors="pt", padding=True)
    assert enc["attention_mask"][1, 0] == 0  # really padded on the left
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
