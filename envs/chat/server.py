"""A local OpenAI-compatible server (Hugging Face's ``transformers serve``) for the LLM plug-ins.

Start one on the embedded model and leave it running::

    python -m envs.chat.server                    # http://127.0.0.1:8011/v1, continuous batching on

then point any plug-in at it with the ``server`` chat preset (``chat@student.client=server``): its
``model=auto`` asks the server which model it serves. :class:`LocalServer` does the same from Python
(the real-server tests and ``benchmarks/chat_server.py``): it starts the server on a free loopback
port, waits for ``/health``, and stops or kills it by its own process id.

``transformers serve`` needs the ``serving`` extra (``pip install -e ".[serving]"``, part of ``dev``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from envs.chat.base import ChatClientError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8011
LOCAL_SERVER_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/v1"  # the ``server`` chat preset's base_url
KV_BLOCK = 32  # tokens per paged KV-cache block
SERVE = [sys.executable, "-m", "transformers.cli.transformers", "serve"]


def serving_folder(model: str | os.PathLike | None = None) -> Path:
    """The folder to serve: the embedded model's (weights and tokenizer together) or a checkpoint folder.

    Args:
        model: ``None`` or ``smollm2-135m-instruct`` for the embedded model, else a folder written by
            ``save_pretrained`` that holds both the model and its tokenizer (a policy exported with
            ``MultiHeadPolicy.export`` is one).

    Raises:
        ChatClientError: If the folder lacks a config or a tokenizer.
    """
    from agents.models import DEFAULT_MODEL, embedded_checkpoint  # lazy: imports torch

    if model is None or str(model) == DEFAULT_MODEL:
        return embedded_checkpoint()
    folder = Path(model).expanduser().resolve()
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    missing = [name for name, ok in (("config.json", (folder / "config.json").is_file()),
                                     ("tokenizer.json or tokenizer_config.json", has_tokenizer)) if not ok]
    if missing:
        raise ChatClientError(f"{folder} cannot be served: it has no {' and no '.join(missing)}. Pass a folder "
                              "written by save_pretrained with the model and its tokenizer, or omit --model for "
                              f"the embedded {DEFAULT_MODEL}.")
    return folder


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class LocalServer:
    """``transformers serve`` in a child process, started, health-checked and stopped by its own pid.

    Args:
        folder: The model folder (see :func:`serving_folder`); the server's model id is its path.
        host: Listen address (loopback by default: nothing outside the machine can reach it).
        port: Listen port; 0 picks a free one at the first :meth:`start` and keeps it for restarts.
        continuous_batching: Batch concurrent requests in one forward pass (about 3x the throughput
            of one request at a time here, see ``benchmarks/chat_server.py``).
        kv_cache_tokens: Tokens of paged KV cache for continuous batching (blocks of 32). A bounded
            cache matters on a CPU: left to size itself from free memory, the server spent 77 s
            preparing it on its first request here, against 3.5 s with 16k tokens.
        threads: Torch threads of the server process (``OMP_NUM_THREADS``); None leaves the default.
        log_path: File for the server's output; None discards it.
        startup_timeout: Seconds :meth:`start` waits for ``/health`` before giving up.
    """

    folder: Path
    host: str = DEFAULT_HOST
    port: int = 0
    continuous_batching: bool = True
    kv_cache_tokens: int = 16384
    threads: int | None = None
    log_path: Path | None = None
    startup_timeout: float = 180.0
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible API root, ending in ``/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model id the server answers to (its folder's path)."""
        return str(self.folder)

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self.process.pid if self.running else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        """The ``transformers serve`` command line."""
        batching = ["--no-continuous-batching"]
        if self.continuous_batching:
            blocks = max(1, -(-self.kv_cache_tokens // KV_BLOCK))
            batching = ["--continuous-batching", "--cb-block-size", str(KV_BLOCK), "--cb-num-blocks", str(blocks)]
        return [*SERVE, str(self.folder), "--host", self.host, "--port", str(self.port), *batching,
                "--log-level", "warning"]

    def start(self) -> LocalServer:
        """Starts the server (again, on the same port) and returns once ``/health`` answers.

        Raises:
            ChatClientError: If the server exits during start-up or is not healthy in time; the
                message ends with the last lines of its log.
        """
        if self.running:
            return self
        self.port = self.port or free_port(self.host)
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(self.threads)} if self.threads else {}))
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)  # Ctrl-C in a terminal reaches us, not it
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        url = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if not self.running:
                raise ChatClientError(f"transformers serve exited with code {self.process.returncode} while "
                                      f"starting on {self.base_url}.{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.kill()
        raise ChatClientError(f"transformers serve did not answer {url} within {self.startup_timeout:g} s; "
                              f"stopped it.{self._log_tail()}")

    def _log_tail(self, lines: int = 15) -> str:
        if not self.log_path or not Path(self.log_path).is_file():
            return ""
        tail = Path(self.log_path).read_text(errors="replace").splitlines()[-lines:]
        return "\nLast lines of its log:\n" + "\n".join(tail)

    def stop(self, grace: float = 10.0) -> None:
        """Asks the server to shut down (SIGTERM to its pid), then kills it after ``grace`` seconds."""
        if not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """Kills the server at once (SIGKILL to its pid), as a crash would."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m envs.chat.server``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a save_pretrained folder (default: the embedded model)")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--no-continuous-batching", dest="continuous_batching", action="store_false",
                        help="serve one request at a time")
    parser.add_argument("--kv-cache-tokens", type=int, default=LocalServer.kv_cache_tokens,
                        help="paged KV cache of continuous batching, in tokens")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``python -m envs.chat.server``: serves a model on a loopback port until Ctrl-C."""
    args = build_parser().parse_args(argv)
    server = LocalServer(serving_folder(args.model), host=args.host, port=args.port,
                         continuous_batching=args.continuous_batching, kv_cache_tokens=args.kv_cache_tokens)
    where = "" if server.base_url == LOCAL_SERVER_URL else f" <plugin>.client.base_url={server.base_url}"
    print(f"[pluralgym] serving {server.model} at {server.base_url} (stop with Ctrl-C)\n"
          f"[pluralgym] point a plug-in at it with: chat@<plugin>.client=server{where}", flush=True)
    os.execv(SERVE[0], server.command())  # the server takes this process's pid and terminal


if __name__ == "__main__":
    main()
