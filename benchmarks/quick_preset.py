"""Wall time of the quick presets on every env: does a smoke run finish in about 3 minutes everywhere?

Runs each quick preset as a user would, end to end in a fresh process (model load, training, the
end-of-run evaluation), one after the other, and reports the wall time, the steps run and the peak
memory of each. ``algorithm=opsd_quick`` is meant to mean the same on every env
(``configs/preset_sizes/opsd_quick.yaml`` applies after the env's own sizes), so its time should not
depend much on the env. Run it with nothing else on the machine.

    python benchmarks/quick_preset.py                 # embedded SmolLM2-135M, every env
    python benchmarks/quick_preset.py --agent tiny    # the tiny random model (seconds; checks the script)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (label, entry point, overrides): each trainer's quick preset on each env it trains on
RUNS = [
    ("opsd_quick on tutoring", "algorithms.opsd", ["env=tutoring", "algorithm=opsd_quick"]),
    ("opsd_quick on persona", "algorithms.opsd", ["env=persona", "algorithm=opsd_quick"]),
    ("rlvr_quick on persona_math", "algorithms.rlvr", ["env=persona_math", "algorithm=rlvr_quick"]),
    ("permix_quick on persona_math", "algorithms.rlvr", ["env=persona_math", "algorithm=permix_quick"]),
]
TARGET_S = 180.0


def run_one(module: str, overrides: list[str], folder: Path) -> dict:
    """Runs one entry point to the end; returns its wall time, last step and its own peak RSS."""
    log = folder.with_suffix(".log")
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *overrides, f"hydra.run.dir={folder}"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own resource use (peak RSS in KiB on Linux)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{module} {' '.join(overrides)} failed:\n{log.read_text()[-3000:]}")
    summary = json.loads((folder / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "steps": summary["step"], "peak_rss_mib": round(usage.ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default=None, help="agent preset (default: the embedded model); tiny for a check")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    extra = [f"agent={args.agent}"] if args.agent else []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, module, overrides in RUNS:
            row = run_one(module, [*overrides, *extra], Path(tmp) / label.replace(" ", "_"))
            results.append({"run": label, **row, "within_target": row["wall_s"] <= TARGET_S})
            print(f"{label}: {row['wall_s']} s, {row['steps']} steps", flush=True)
    print("\n| run | wall time (s) | steps | within 3 minutes | peak RSS (MiB) |\n| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['run']} | {r['wall_s']} | {r['steps']} | {'yes' if r['within_target'] else 'no'} | "
              f"{r['peak_rss_mib']} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
