"""Learner step of OPSD: time and peak memory for K = 1, 2 and 5 heads, and our loss vs TRL's.

Usage:
    python benchmarks/opsd_step.py                      # embedded SmolLM2-135M on this machine
    python benchmarks/opsd_step.py --model tiny-random  # smoke run

Part 1: every K runs in its own process (so peak memory is its own) on the same batch of sampled
turns: B tutoring prompts with fixed completions, rows assigned to heads round-robin. With
``--rounds R`` the processes run R times in rounds of alternating order (K=1, 2, 5, then 5, 2, 1,
...); a step time is the median over rounds, and each ratio to K=1 the median over rounds of the
ratio within a round, so a drift of the machine's speed stays out of the ratios. A step is
the full update of ``algorithms.opsd.distill_step``: frozen-teacher forward, student forward and
backward through each row's own head only, clipping and AdamW. Each child makes ``malloc`` keep
freed memory, as the trainer does (``algorithms.host_memory``; ``--system-malloc`` leaves it as it
is), and reports the minor page faults of a step: memory the step wrote that was not mapped yet.

With ``--peer`` (K=1 only), the same child also times TRL's own self-distillation step on the
identical batch: ``trl.experimental.sdpo.SDPOTrainer.compute_loss`` (its student and teacher
forwards and its top-k reverse KL, ``distillation_mode="topk_logits"``, ``distillation_alpha=1``)
with the same model, teacher, top-k, micro-batches, precision, clipping and AdamW; the ratio ours /
theirs is the peer ratio.

Part 2: on identical logits, our top-k reverse KL (``algorithms.losses.topk_reverse_kl``) against
TRL's ``generalized_jsd_loss`` with ``beta=1`` (reverse KL) applied to the same top-k support;
values must agree to 1e-5.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from timing import count_of_at_least_one, interleaved, paired_ratio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

FILLER = ("Photosynthesis turns light into chemical energy: chlorophyll absorbs light, water is split, and the "
          "plant stores the energy as sugar. What do you think happens to the oxygen that is released?")


def make_batch(tokenizer, num_heads: int, rows: int, tokens: int, device):
    """A fixed batch: tutoring prompts, privileged prompts and a ``tokens``-long completion per row."""
    from agents.generation import encode_prompts
    from algorithms.opsd import DistillBatch
    from envs.judges import HeuristicSatisfactionJudge
    from envs.students import ScriptedStudent
    from envs.tasks import Persona, TutoringTask

    persona = Persona("interactive", "INTERACTIVE", "Ask the student a question and let them answer it.")
    task = TutoringTask([persona], ScriptedStudent(), HeuristicSatisfactionJudge())
    obs, _ = task.make_batch(rows).reset(seed=0)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, [task.policy_messages(o) for o in obs], device)
    teacher_ids, teacher_mask = encode_prompts(
        tokenizer, [task.teacher_messages(o, persona, "Hmm, okay.") for o in obs], device)
    completion = tokenizer(FILLER * 4, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :tokens]
    completion = completion.repeat(rows, 1).to(device)
    groups = [(h, list(range(h, rows, num_heads)), 1.0 / num_heads) for h in range(num_heads)]
    return DistillBatch(prompt_ids, prompt_mask, teacher_ids, teacher_mask, completion,
                        torch.ones_like(completion), groups=groups)


def trl_peer_step(policy, teacher, tokenizer, optimizer, batch, *, topk: int, micro_batch: int, max_grad_norm: float):
    """A callable that runs one update of TRL's SDPO trainer loss on ``batch`` (single head, row order kept)."""
    import tempfile

    from datasets import Dataset
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    from algorithms.trainer import accumulated_step

    args = SDPOConfig(output_dir=tempfile.mkdtemp(prefix="sdpo_peer_"), distillation_mode="topk_logits",
                      distillation_topk=topk, distillation_alpha=1.0, distillation_weight=1.0,
                      distillation_add_tail=False, teacher_model_kind="live", per_device_train_batch_size=micro_batch,
                      num_generations=micro_batch, temperature=1.0, max_grad_norm=max_grad_norm, report_to=[],
                      use_cpu=policy.device.type == "cpu", logging_steps=10**9, save_strategy="no")
    trainer = SDPOTrainer(model=policy.model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                          args=args, train_dataset=Dataset.from_list([{"prompt": "unused"}] * micro_batch),
                          processing_class=tokenizer, optimizers=(optimizer, None))
    trainer.teacher_model = teacher  # the same frozen teacher our step uses
    trainer.current_gradient_accumulation_steps = 1  # set by its train loop, which this step stands in for
    rows = batch.prompt_ids.shape[0]
    teacher_ids = torch.cat([batch.teacher_ids, batch.completion_ids], 1)
    teacher_mask = torch.cat([batch.teacher_mask, batch.completion_mask], 1)

    def chunk_loss(part: torch.Tensor) -> torch.Tensor:  # TRL's loss on these rows, scaled for its share
        inputs = {"prompt_ids": batch.prompt_ids[part], "prompt_mask": batch.prompt_mask[part],
                  "completion_ids": batch.completion_ids[part], "completion_mask": batch.completion_mask[part],
                  "teacher_input_ids": teacher_ids[part], "teacher_attention_mask": teacher_mask[part]}
        with trainer.compute_loss_context_manager():
            return trainer.compute_loss(policy.model, inputs) * len(part) / rows

    def step() -> None:  # the same accumulation, clipping and optimiser step as ours
        policy.train()
        with policy.use(head=0):
            accumulated_step(optimizer, rows, micro_batch, chunk_loss, max_grad_norm)

    return step


def step_worker(args) -> dict:
    """Runs in a child process: times ``args.repeats`` learner steps for ``args.heads`` heads."""
    from agents import MultiHeadPolicy, load_backbone
    from agents.models import resolve_device
    from algorithms.components import make_optimizer
    from algorithms.host_memory import keep_freed_memory
    from algorithms.opsd import distill_step
    from algorithms.runs import peak_memory_mb

    device = resolve_device(args.device)
    if not args.system_malloc:
        keep_freed_memory(device)  # as the trainer does
    backbone = load_backbone(args.model, device=device)
    teacher = load_backbone(args.model, device=device).model.requires_grad_(False)
    policy = MultiHeadPolicy(backbone.model, num_heads=args.heads)
    decoder = policy.model.get_decoder()
    for p in policy.backbone_parameters():
        p.requires_grad_(False)
    for module in list(decoder.layers[-args.last_n_layers:]) + [decoder.norm]:
        module.requires_grad_(True)
    optimizer = make_optimizer(policy.param_groups(1e-5, head_lr_mult=2.0))
    batch = make_batch(backbone.tokenizer, args.heads, args.rows, args.tokens, device)
    def ours() -> None:
        distill_step(policy, teacher, optimizer, batch, topk=256, micro_batch=args.micro_batch, max_grad_norm=1.0)

    def timed(step) -> tuple[float, int]:
        """Median seconds and minor page faults (memory written that was not mapped yet) of a step."""
        times, faults = [], []
        for _ in range(args.repeats + 1):  # the first step warms up allocations and is not counted
            start, faulted = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted)
        return statistics.median(times[1:]), int(statistics.median(faults[1:]))

    step_s, page_faults = timed(ours)
    row = {"heads": args.heads, "step_s": round(step_s, 3), "page_faults": page_faults,
           "peak_memory_mb": round(peak_memory_mb(device), 1), "device": str(device)}
    if args.peer and args.heads == 1:
        theirs = trl_peer_step(policy, teacher, backbone.tokenizer, optimizer, batch, topk=256,
                               micro_batch=args.micro_batch, max_grad_norm=1.0)
        ours_again, trl_s = [], []
        for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both alike
            trl_s.append(timed(theirs)[0])
            ours_again.append(timed(ours)[0])
        row["trl_sdpo_step_s"] = round(statistics.median(trl_s), 3)
        row["peer_ratio"] = round(statistics.median(ours_again) / statistics.median(trl_s), 3)
    return row


def loss_comparison(vocab: int, rows: int, tokens: int, k: int, repeats: int = 5) -> dict:
    """Our top-k reverse KL vs TRL's generalized JSD at beta=1 on the same top-k support."""
    from trl.experimental.gkd import GKDTrainer

    from algorithms.losses import topk_reverse_kl

    gen = torch.Generator().manual_seed(0)
    student = torch.randn(rows, tokens, vocab, generator=gen) * 3
    teacher = student + torch.randn(rows, tokens, vocab, generator=gen)

    def ours():
        return topk_reverse_kl(student, teacher, k)  # (B, T)

    def trl():
        idx = student.topk(k, dim=-1).indices
        per_vocab = GKDTrainer.generalized_jsd_loss(student.gather(-1, idx), teacher.gather(-1, idx), beta=1.0,
                                                    reduction="none")
        return per_vocab.sum(-1)  # (B, T)

    timing = {}
    for name, fn in (("ours", ours), ("trl", trl)):
        fn()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        timing[name] = statistics.median(samples)
    diff = float((ours() - trl()).abs().max())
    return {"shape": [rows, tokens, vocab], "k": k, "ours_s": round(timing["ours"], 4),
            "trl_s": round(timing["trl"], 4),
            "max_abs_diff": diff, "agree_1e-5": diff <= 1e-5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rows", type=int, default=8, help="sampled turns in the batch")
    parser.add_argument("--tokens", type=int, default=48, help="completion length")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--last-n-layers", type=int, default=4)
    parser.add_argument("--repeats", type=count_of_at_least_one, default=2,
                        help="steps timed in each process, after one warm-up step")
    parser.add_argument("--heads-list", type=int, nargs="+", default=[1, 2, 5])
    parser.add_argument("--rounds", type=count_of_at_least_one, default=1,
                        help="runs of every K, in rounds of alternating order")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave malloc as it is (the trainer makes it keep freed memory on a CPU)")
    parser.add_argument("--peer", action="store_true", help="also time TRL's SDPO step at K=1 (the peer ratio)")
    parser.add_argument("--heads", type=int, default=None, help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    args = parser.parse_args()

    if args.heads is not None:
        print(json.dumps(step_worker(args)))
        return

    def run(k: int, r: int) -> dict:
        cmd = [sys.executable, __file__, "--heads", str(k)] + [
            a for a in sys.argv[1:] if not a.startswith("--out") and not a.endswith(".json")]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"round {r}, K={k}: step {row['step_s']:.2f} s, {row['page_faults']} page faults, "
              f"peak memory {row['peak_memory_mb']:.0f} MiB", flush=True)
        if "peer_ratio" in row:
            print(f"round {r}, K={k}: TRL SDPO step {row['trl_sdpo_step_s']:.2f} s; ours / TRL = {row['peer_ratio']}",
                  flush=True)
        return row

    measured = interleaved(args.heads_list, args.rounds, run)  # per K, one row per round
    rows = []
    for k, runs in zip(args.heads_list, measured):
        row = {"heads": k, "step_s": round(statistics.median(r["step_s"] for r in runs), 3),
               "peak_memory_mb": max(r["peak_memory_mb"] for r in runs), "device": runs[0]["device"],
               "rounds_step_s": [r["step_s"] for r in runs], "page_faults": [r["page_faults"] for r in runs]}
        if "peer_ratio" in runs[0]:
            row["trl_sdpo_step_s"] = round(statistics.median(r["trl_sdpo_step_s"] for r in runs), 3)
            row["peer_ratio"] = round(statistics.median(r["peer_ratio"] for r in runs), 3)
        rows.append(row)
    base = rows[0]["rounds_step_s"]
    ratios = {f"K={r['heads']}": round(paired_ratio(r["rounds_step_s"], base), 3) for r in rows}
    print("step time relative to K=1 (median over rounds):", ratios)
    comparison = loss_comparison(vocab=49152, rows=args.rows, tokens=args.tokens, k=256)
    print(f"top-k reverse KL on {comparison['shape']}: ours {comparison['ours_s'] * 1000:.1f} ms, "
          f"TRL {comparison['trl_s'] * 1000:.1f} ms, max |diff| {comparison['max_abs_diff']:.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "steps": rows, "relative": ratios, "loss_vs_trl": comparison}, f, indent=1)


if __name__ == "__main__":
    main()
