"""Checkpoint cost of the default OPSD run: size, write and load time, and what a whole run writes.

Builds the default trainer on the embedded model, takes one step (so the optimiser has its
moments), then writes the same state twice: as the pickled ``torch.save`` file earlier versions
wrote after every step, and as the safetensors + JSON checkpoint written now every
``algorithm.save_every`` steps.

    python benchmarks/checkpoint.py            # embedded SmolLM2-135M, default algorithm settings
    python benchmarks/checkpoint.py --tiny     # the tiny random model (seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

import algorithms.opsd as opsd
import configs
from algorithms.checkpoint import load_checkpoint, save_checkpoint


def timed(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="use the tiny random model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    overrides = ["agent=tiny"] if args.tiny else []
    configs.register()
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("opsd", overrides=[*overrides, "algorithm.eval.enabled=false", "device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = opsd.OPSDTrainer(cfg, tmp)
        trainer.train_step()
        trainer.close()
        state = trainer.state_dict()
        legacy, current = Path(tmp) / "checkpoint.pt", Path(tmp) / "checkpoint.safetensors"
        legacy_s = timed(lambda: torch.save(state, legacy), args.repeats)
        current_s = timed(lambda: save_checkpoint(current, state), args.repeats)
        load_s = timed(lambda: load_checkpoint(current), args.repeats)
        mib = {name: path.stat().st_size / 2**20 for name, path in (("legacy", legacy), ("current", current))}
        policy_mib = sum(p.stat().st_size for p in trainer.save_policy().rglob("*") if p.is_file()) / 2**20
    steps, every = trainer.settings.steps, trainer.settings.save_every
    report = {
        "model": cfg.agent.model, "trainable": trainer.settings.trainable, "steps": steps, "save_every": every,
        "legacy_pickle_mib": round(mib["legacy"], 1), "legacy_write_s": round(legacy_s, 2),
        "safetensors_mib": round(mib["current"], 1), "safetensors_write_s": round(current_s, 2),
        "safetensors_load_s": round(load_s, 2), "policy_folder_mib": round(policy_mib, 1),
        "run_writes_legacy_gib": round(steps * mib["legacy"] / 1024, 1),
        "run_writes_now_gib": round(math.ceil(steps / every) * mib["current"] / 1024, 1),
        "run_write_time_legacy_s": round(steps * legacy_s, 1),
        "run_write_time_now_s": round(math.ceil(steps / every) * current_s, 1),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
