"""benchmarks/device_check.sh in its CPU form: every part runs and lands in the JSON report."""

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_device_check_passes_on_cpu_with_the_tiny_model(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--device", "cpu", "--model",
                           "tiny-random", "--out", str(out), "--new-tokens", "8", "--batches", "1", "8", "32",
                           "--repeats", "1"], capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["failed"] == {}
    parts = report["parts"]
    assert set(parts) == {"quick", "precision", "generation", "learner_step"}
    assert parts["quick"]["steps"] == 4 and parts["quick"]["peak_memory_mb"] > 0
    assert parts["precision"]["bf16_vs_fp32_step_time"] > 0
    assert set(parts["generation"]["tokens_per_s"]) == {"batch_1", "batch_8", "batch_32"}
    assert all(v > 0 for v in parts["generation"]["tokens_per_s"].values())
    assert parts["learner_step"]["opsd_step_s"] > 0 and parts["learner_step"]["plain_hf_step_s"] > 0
