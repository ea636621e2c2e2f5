"""A run joins a Ray cluster that is already running (``ray.address=<host:port>``), as on a multi-node cluster.

The test starts its own head node on loopback (its own port and temp dir), trains a quick OPSD run
on it with two workers while one worker process is killed mid-collection, and stops the cluster by
its own processes (never a machine-wide ``ray stop``), whether the test passes or fails.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import algorithms.opsd as opsd
from tests.algorithms.test_rollout import config, crashing

pytestmark = pytest.mark.xdist_group("ray")  # one xdist worker runs every Ray test: clusters never meet

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node():
    """``ray start --head`` on loopback in its own session; yields its address; stops exactly that cluster."""
    pytest.importorskip("ray")
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="pgray", dir="/tmp")  # Ray's socket paths must stay short
    # `ray start` turns token authentication on by default; this cluster is local and short-lived
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="disabled")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the GCS answers on the port once the head is up
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    out = head.stdout.read().decode(errors="replace") if head.stdout else ""
                    pytest.fail(f"ray start --head did not come up: {out[-2000:]}")
                time.sleep(1)
        time.sleep(3)  # the raylet registers after the GCS
        yield address
    finally:
        pids = _cluster_pids(head.pid, temp)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
                head.poll()  # reap the head so it does not linger as a zombie
                time.sleep(0.5)
        head.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def _cluster_pids(head_pid: int, temp: str) -> list[int]:
    """This cluster's processes: the head's session (gcs, raylet, workers) and anything using its temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            sid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3])
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if sid == head_pid or temp in cmdline:
            pids.append(int(entry.name))
    return pids


def test_a_run_joins_a_running_cluster_and_survives_a_killed_worker(head_node, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # as the head node was started

    marker = tmp_path / "killed.marker"
    cfg = config("ray.enabled=true", f"ray.address={head_node}", "ray.num_workers=2", "ray.log_to_driver=false",
                 f"+ray.runtime_env.env_vars.PYTHONPATH={ROOT}", *crashing(marker))
    summary = opsd.train(cfg, tmp_path / "run")
    assert marker.exists()  # a worker process really died mid-collection
    rows = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert summary["finished"] and summary["rollout"]["workers"] == "ray x 2"
    assert sum(r["rollout/retries"] for r in rows) == 1  # the restart is counted
    assert not ray.is_initialized()  # this driver left the cluster; the cluster itself is the fixture's
