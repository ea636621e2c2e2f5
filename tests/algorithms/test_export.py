"""algorithms.export: a head or a fixed mixture as a plain Hugging Face folder, with the same logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from algorithms.export import export, main
from algorithms.router import load_run
from tests.conftest import make_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = make_tiny_run(tmp_path_factory.mktemp("export") / "run")
    policy, _, _ = load_run(folder)
    with torch.no_grad():  # make the heads differ, as training would
        for i, w in enumerate(policy.heads.weights):
            w.add_(torch.randn_like(w) * 0.05 * (i + 1), alpha=1.0)
    policy.save_pretrained(folder / "policy", tokenizer=AutoTokenizer.from_pretrained(folder / "policy"))
    return folder


def _logits(model, tokenizer, **selection):
    ids = tokenizer(["The sun is a star", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        if selection:
            with model.use(**selection):
                return model.model(**ids).logits
        return model(**ids).logits


@pytest.mark.parametrize("selection", [{"head": "interactive"}, {"weights": [0.3, 0.7]}], ids=["head", "mixture"])
def test_an_exported_head_or_mixture_loads_without_project_code_and_gives_the_same_logits(run, tmp_path, selection):
    out = tmp_path / "out"
    if "head" in selection:
        main([str(run), "--head", selection["head"], "--out", str(out)])
    else:
        main([str(run), "--weights", ",".join(map(str, selection["weights"])), "--out", str(out)])
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    policy, _, _ = load_run(run)
    chosen = {"head": policy.head_index(selection["head"])} if "head" in selection else \
        {"weights": torch.tensor(selection["weights"])}
    torch.testing.assert_close(_logits(plain, tokenizer), _logits(policy, tokenizer, **chosen), atol=1e-5, rtol=0)
    assert not (out / "heads.safetensors").exists() and not (out / "pluralgym_policy.json").exists()


def test_bad_export_requests_are_refused(run, tmp_path):
    with pytest.raises(ValueError, match="No head named 'visual'"):
        export(run, tmp_path / "a", head="visual")
    with pytest.raises(ValueError, match="needs 2 values"):
        export(run, tmp_path / "b", weights=[1.0])
    with pytest.raises(ValueError, match="not both"):
        export(run, tmp_path / "c", head="direct", weights=[0.5, 0.5])
