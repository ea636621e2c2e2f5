"""Every command the README shows still parses: Hydra entry points compose and validate, the others' arguments parse.

The commands are read from the README's ``bash`` blocks, so a renamed key, preset or flag fails here
before a user copies it. Hydra commands are composed in this process (as ``--cfg job`` would, in a
fraction of the time); their top-level keys and settings nodes go through the entry point's own
checks. Placeholders such as ``runs/opsd/<run>`` become a dummy path (no run is loaded), and a
multirun sweep (``-m seed=0,1,2``) is checked at its first value.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from agents.models import AgentConfig
from algorithms import benchmark, compare, micro, router, sweep
from algorithms.benchmark import BenchmarkConfig
from algorithms.cli import RUN_KEYS
from algorithms.micro import MicroConfig
from algorithms.opsd import OPSDConfig
from algorithms.rlvr import RLVRConfig
from algorithms.router import RouterConfig, RouterDataConfig
from configs import check_top_level
from configs.validation import structured
from envs.chat import server
from tests.conftest import compose_config

README = Path(__file__).resolve().parents[1] / "README.md"

# entry point -> (config name, top-level keys, {settings node: its dataclass})
HYDRA = {
    "algorithms.opsd": ("opsd", RUN_KEYS, {"algorithm": OPSDConfig, "agent": AgentConfig}),
    "algorithms.rlvr": ("rlvr", RUN_KEYS, {"algorithm": RLVRConfig, "agent": AgentConfig}),
    "algorithms.router": ("router", router.TOP_LEVEL_KEYS, {"router": RouterConfig, "data": RouterDataConfig}),
    "algorithms.benchmark": ("benchmark", benchmark.TOP_LEVEL_KEYS, {"benchmark": BenchmarkConfig}),
    "algorithms.micro": ("micro", micro.TOP_LEVEL_KEYS, {"micro": MicroConfig}),
}
ARGPARSE = {"algorithms.compare": compare.build_parser, "algorithms.sweep": sweep.build_parser,
            "envs.chat.server": server.build_parser}


def readme_commands() -> list[str]:
    """The ``python -m ...`` lines of the README's bash blocks, continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"\s#.*$", "", line).strip().rstrip("&").strip()
        if line.startswith("python -m "):
            commands.append(line)
    return commands


def args_of(command: str) -> tuple[str, list[str]]:
    """The module and its arguments, placeholders filled and sweeps cut to their first value."""
    command = re.sub(r"<[^>]+>", "PLACEHOLDER", command)
    words = shlex.split(command)
    module, args = words[2], [w for w in words[3:] if w != "-m"]
    if "-m" in words[3:]:
        args = [a.split(",")[0] if "=" in a and not a.startswith("hydra") else a for a in args]
    return module, args


COMMANDS = readme_commands()


def test_the_readme_shows_commands_of_every_entry_point():
    modules = {args_of(c)[0] for c in COMMANDS}
    assert set(HYDRA) | set(ARGPARSE) <= modules, "an entry point lost its README example"
    assert modules <= set(HYDRA) | set(ARGPARSE), f"add the new entry point to this test: {modules}"


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_composes_and_validates(command, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-placeholder")
    module, args = args_of(command)
    if module in ARGPARSE:
        ARGPARSE[module]().parse_args(args)
        return
    name, keys, nodes = HYDRA[module]
    cfg = compose_config(name, *args)
    check_top_level(cfg, keys)
    for node, cls in nodes.items():
        if cfg.get(node) is not None:
            structured(cls, cfg[node], node)
