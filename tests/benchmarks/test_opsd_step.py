"""benchmarks/opsd_step.py: the TRL peer step does a real update on the batch our step uses."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from opsd_step import make_batch, trl_peer_step  # noqa: E402

from agents import MultiHeadPolicy, load_backbone  # noqa: E402
from algorithms.components import make_optimizer  # noqa: E402


def test_trls_sdpo_step_updates_the_head_from_the_same_batch():
    backbone = load_backbone("tiny-random")
    teacher = load_backbone("tiny-random").model.requires_grad_(False)
    policy = MultiHeadPolicy(backbone.model, num_heads=1)
    for p in policy.backbone_parameters():
        p.requires_grad_(False)
    optimizer = make_optimizer(policy.param_groups(1e-3))
    batch = make_batch(backbone.tokenizer, 1, rows=4, tokens=8, device="cpu")
    step = trl_peer_step(policy, teacher, backbone.tokenizer, optimizer, batch, topk=16, micro_batch=2,
                         max_grad_norm=1.0)
    before = policy.heads.weights[0].detach().clone()
    step()
    moved = (policy.heads.weights[0].detach() - before).abs()
    assert moved.max() > 0, "TRL's step left the head unchanged"
    assert torch.isfinite(moved).all()


def test_rounds_run_every_k_again_and_pair_the_ratios(tmp_path):
    import json
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "opsd_step.json"
    subprocess.run([sys.executable, "benchmarks/opsd_step.py", "--model", "tiny-random", "--rows", "4", "--tokens", "8",
                    "--repeats", "1", "--rounds", "2", "--heads-list", "1", "2", "--out", str(out)],
                   cwd=root, check=True, capture_output=True, timeout=600)
    report = json.loads(out.read_text())
    assert [len(row["rounds_step_s"]) for row in report["steps"]] == [2, 2]
    assert report["relative"]["K=1"] == 1.0 and report["relative"]["K=2"] > 0
