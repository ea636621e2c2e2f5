"""Device check: does the framework run, and run fast, on this accelerator? One JSON report.

Usage:
    bash benchmarks/device_check.sh                                  # CUDA when present, embedded SmolLM2-135M
    bash benchmarks/device_check.sh --device cpu --model tiny-random # the CPU smoke form the tests run

Four parts, each timed on ``--device``:

1. ``quick``: the main job's quick preset (``python -m algorithms.opsd env=tutoring algorithm=opsd_quick``)
   end to end in a child process: wall time, training time and peak memory from its ``summary.json``.
2. ``precision``: a 5-step OPSD run in float32 and in bfloat16 (evaluation off), training seconds
   per step of each and their ratio.
3. ``generation``: one head's sampling throughput at batch 1, 8 and 32 (``--new-tokens`` tokens each,
   EOS suppressed so every row is the same length).
4. ``learner_step``: one OPSD learner step (``algorithms.opsd.distill_step``: teacher forward, top-k
   reverse KL through each row's own head, backward, AdamW) against a plain Hugging Face
   forward + cross-entropy + backward + AdamW over the same tokens and the same trainable weights.

Children get the remaining time budget (``--budget-s``, 480 s by default) and the report records
any part that did not finish, so a slow device gives a partial report rather than nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: benchmarks/ is not a package


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _run_opsd(out: Path, overrides: list[str], timeout: float) -> dict:
    """One ``algorithms.opsd`` run in a child process; its ``summary.json`` plus the wall time."""
    cmd = [sys.executable, "-m", "algorithms.opsd", *overrides, f"hydra.run.dir={out}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1))
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": round(wall, 1), "train_s": summary["wall_s_total"],
            "peak_memory_mb": summary["peak_memory_mb"], "steps": summary["step"]}


def quick(args, work: Path, timeout: float) -> dict:
    """Part 1: the main job's quick preset."""
    return _run_opsd(work / "quick", ["env=tutoring", "algorithm=opsd_quick", f"agent.model={args.model}",
                                      f"device={args.device}"], timeout)


def precision(args, work: Path, timeout: float) -> dict:
    """Part 2: 5 OPSD steps in float32 and in bfloat16."""
    rows = {}
    for dtype in ("float32", "bfloat16"):
        run = _run_opsd(work / f"steps_{dtype}", [
            "env=tutoring", "algorithm=opsd_quick", "algorithm.steps=5", "algorithm.eval.enabled=false",
            f"agent.model={args.model}", f"agent.dtype={dtype}", f"device={args.device}"], timeout / 2)
        rows[dtype] = {**run, "s_per_step": round(run["train_s"] / 5, 3)}
    rows["bf16_vs_fp32_step_time"] = round(rows["bfloat16"]["s_per_step"] / rows["float32"]["s_per_step"], 3)
    return rows


@torch.no_grad()
def generation(policy, tokenizer, device: torch.device, new_tokens: int, batches: list[int]) -> dict:
    """Part 3: one head's tokens/s by batch size (best of two after a warm-up)."""
    from agents import generate

    prompt = [{"role": "user", "content": "Teach me how a lever works, step by step."}]
    rows = {}
    generate(policy, tokenizer, [prompt], head=0, max_new_tokens=4, temperature=1.0, seed=0)  # warm-up
    for batch in batches:
        best = 0.0
        for repeat in range(2):
            _sync(device)
            start = time.perf_counter()
            out = generate(policy, tokenizer, [prompt] * batch, head=0, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, temperature=1.0, seed=repeat)
            _sync(device)
            best = max(best, out.num_tokens / (time.perf_counter() - start))
        rows[f"batch_{batch}"] = round(best, 1)
    return {"tokens_per_s": rows, "new_tokens": new_tokens}


def learner_step(policy, teacher, tokenizer, device: torch.device, rows: int, tokens: int, repeats: int) -> dict:
    """Part 4: our OPSD learner step against a plain HF forward+backward on the same batch."""
    from algorithms.components import decoder_blocks, make_optimizer
    from algorithms.opsd import distill_step
    from benchmarks.opsd_step import make_batch

    batch = make_batch(tokenizer, policy.num_heads, rows, tokens, device)
    for p in policy.backbone_parameters():
        p.requires_grad_(False)
    blocks, finals = decoder_blocks(policy.model)
    for module in [*blocks[-2:], *finals]:  # trainable=last_layers with 2 layers
        module.requires_grad_(True)
    optimizer = make_optimizer(policy.param_groups(1e-5, head_lr_mult=1.0))

    def ours():
        distill_step(policy, teacher, optimizer, batch, topk=256, micro_batch=rows, max_grad_norm=1.0)

    ids = torch.cat([batch.prompt_ids, batch.completion_ids], 1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], 1)
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :batch.prompt_ids.shape[1]] = -100  # loss on the completion only, as OPSD's

    def plain():
        with policy.use(head=0):
            loss = policy.model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn):
        times = []
        for _ in range(repeats + 1):  # the first call warms up allocations and is not counted
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    ours_s, plain_s = timed(ours), timed(plain)
    return {"rows": rows, "completion_tokens": tokens, "opsd_step_s": round(ours_s, 4),
            "plain_hf_step_s": round(plain_s, 4), "ratio": round(ours_s / plain_s, 3),
            "note": "OPSD also runs the frozen teacher's forward pass, which the plain step does not"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu, ...")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="any agent.model value")
    parser.add_argument("--out", default="runs/device_check.json")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting parts after this")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rows", type=int, default=8, help="sampled turns in the learner-step batch")
    parser.add_argument("--tokens", type=int, default=48, help="completion length in the learner-step batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from agents import MultiHeadPolicy, load_backbone
    from agents.models import resolve_device

    start = time.perf_counter()
    device = resolve_device(args.device)
    args.device = str(device)
    report: dict = {"device": str(device), "model": args.model, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "parts": {}, "failed": {}}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    def part(name, fn, *fn_args):
        if left() <= 0:
            report["failed"][name] = "not started: the time budget was spent"
            return
        t0 = time.perf_counter()
        try:
            report["parts"][name] = {**fn(*fn_args), "part_s": round(time.perf_counter() - t0, 1)}
        except Exception as error:  # a partial report beats none: record it and go on
            report["failed"][name] = f"{type(error).__name__}: {error}"[:2000]
        print(f"{name}: {json.dumps(report['parts'].get(name) or report['failed'][name])}", flush=True)

    with tempfile.TemporaryDirectory(prefix="device_check_") as tmp:
        work = Path(tmp)
        part("quick", quick, args, work, left())
        part("precision", precision, args, work, left())
        backbone = load_backbone(args.model, device=device)
        policy = MultiHeadPolicy(backbone.model, num_heads=2).to(device)
        part("generation", generation, policy, backbone.tokenizer, device, args.new_tokens, args.batches)
        teacher = load_backbone(args.model, device=device).model.requires_grad_(False)
        part("learner_step", learner_step, policy, teacher, backbone.tokenizer, device, args.rows, args.tokens,
             args.repeats)
    report["total_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"device check: {len(report['parts'])} parts passed, {len(report['failed'])} failed, "
          f"{report['total_s']} s -> {out}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(1 if main()["failed"] else 0)
