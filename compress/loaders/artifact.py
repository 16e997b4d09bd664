"""This project's artifact format: a directory of config + safetensors + tokenizer + manifest, written atomically.

Layout:  DIR/config.json  DIR/model.safetensors  DIR/tokenizer/  DIR/manifest.json (written last).
The folder mechanics (atomic write, manifest, file hashes) are compress/outputs.py's; this module saves and
loads the model in them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from typing import Optional

import torch

from ..errors import CheckpointError, ConfigError, UserError
from ..outputs import FORMAT, atomic_directory, read_manifest, split_shared, verify_files, write_manifest
from .materialize import storable  # noqa: F401  (re-exported: the storage rule)

WEIGHTS = "model.safetensors"


STORAGE = ("dense", "sparse")
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cast_for_storage(state: dict, dtype: Optional[str], keep: tuple = ()) -> dict:
    """`state` with its storable tensors cast to `dtype` (None: unchanged); names under a `keep` prefix (modules a
    step replaced, e.g. quantized Linears with their own scale dtypes) are left as they are."""
    if dtype is None:
        return state
    if dtype not in WEIGHT_DTYPES:
        raise UserError(f"unknown weights dtype {dtype!r}; valid: {', '.join(WEIGHT_DTYPES)}")
    want = WEIGHT_DTYPES[dtype]
    prefixes = tuple(k + "." for k in keep)
    return {k: (v.to(want) if storable(k, v) and not k.startswith(prefixes) else v) for k, v in state.items()}


def stored_dtype(state: dict) -> Optional[str]:
    """The dtype holding most elements among the storable tensors of a state dict (None if there are none)."""
    count: dict = {}
    for k, v in state.items():
        if storable(k, v):
            count[v.dtype] = count.get(v.dtype, 0) + v.numel()
    return dominant_dtype(count)


def dominant_dtype(count: dict) -> Optional[str]:
    """{torch dtype: elements} -> the name of the dtype with most elements (None when empty or not a float dtype)."""
    names = {d: n for n, d in WEIGHT_DTYPES.items()}
    return names.get(max(count, key=count.get)) if count else None


def save_artifact(model, out_dir: str, *, manifest_extra: Optional[dict] = None, overwrite: bool = False,
                  storage: str = "dense", weights_dtype: Optional[str] = None, external: Optional[dict] = None) -> str:
    """Write `model` (a Salmonn) as an artifact directory; returns its absolute path.

    storage="sparse" stores each weight matrix as bitmask + non-zeros when that is smaller (pruned weights).
    weights_dtype: store floating weights of 2+ dims in this dtype (float32 / float16 / bfloat16; None: as in
    memory); modules a step replaced (quantized Linears) keep their own dtypes. Loading casts back to the dtype
    the model is built in.
    external: {part: source entry} of frozen parts whose weights are the installed source's (see
    loaders/external.py): they are named in config.json and the manifest instead of stored.
    """
    from safetensors.torch import save_file

    from .sparse_storage import encode

    if storage not in STORAGE:
        raise UserError(f"unknown storage {storage!r}; valid: {', '.join(STORAGE)}")

    def write(tmp: str) -> None:
        state = model.state_dict()
        if external:
            from .external import covered_keys

            skip = covered_keys(model, external)
            state = {k: v for k, v in state.items() if k not in skip}
        unique, aliases = split_shared(state)
        unique = cast_for_storage(unique, weights_dtype, keep=tuple(getattr(model, "module_overrides", {})))
        dense_bytes = tensor_bytes(unique)
        sparse = {}
        if storage == "sparse":
            unique, sparse = encode(unique)
        save_file(unique, os.path.join(tmp, WEIGHTS), metadata={"format": FORMAT})
        cfg = model.cfg.to_dict()
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({"model": cfg, "aliases": aliases, "sparse": sparse,
                       "modules": getattr(model, "module_overrides", {}), "external": external or {}},
                      f, indent=1, default=str)
        model.tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        write_manifest(tmp, {
            "storage": {"mode": storage, "weights_dtype": stored_dtype(unique), "sparse_tensors": len(sparse),
                        "dense_tensor_bytes": dense_bytes,
                        "stored_tensor_bytes": tensor_bytes(unique)},
            **({"frozen_parts": external} if external else {}),
            **(manifest_extra or {}),
        })

    return atomic_directory(out_dir, write, overwrite=overwrite)


def set_generate(path: str, updates: dict, note: str = "") -> dict:
    """Change an artifact's decoding defaults (config.json's `model.generate`) in place, atomically.

    The weights are untouched; the manifest keeps every other field, gets the new file table and appends
    {at, before, after, note} to `decoding_changes`. Unknown keys or invalid values raise ConfigError and
    leave the artifact as it was. Returns the new generate settings."""
    from dataclasses import asdict

    from ..models.config import GenerateSettings

    manifest = read_manifest(path)
    if manifest.get("kind", "pytorch") != "pytorch":
        raise CheckpointError(f"{path!r} is a {manifest['kind']} export; its decoding is fixed at export time")
    verify_files(path, manifest)
    with open(os.path.join(path, "config.json")) as f:
        conf = json.load(f)
    before = asdict(GenerateSettings.from_dict(conf["model"].get("generate")))
    typed = {}
    for k, v in updates.items():
        kind = type(before[k]) if k in before else None
        if kind is bool or kind is None:
            typed[k] = v
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise ConfigError(f"generate option {k!r} takes {'a whole number' if kind is int else 'a number'}, got {v!r}")
        else:
            typed[k] = kind(v)
    after = asdict(GenerateSettings.from_dict({**before, **typed}))
    conf["model"]["generate"] = after
    record = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "before": {k: before[k] for k in typed}, "after": {k: after[k] for k in typed}, "note": note}
    header = ("format", "format_version", "created", "packages", "files")

    def write(tmp):
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(conf, f, indent=1)
        fields = {k: v for k, v in manifest.items() if k not in header}
        fields["decoding_changes"] = list(manifest.get("decoding_changes", [])) + [record]
        fields.setdefault("first_created", manifest.get("created"))
        write_manifest(tmp, fields, packages=manifest.get("packages"))

    atomic_directory(path, write, overwrite=True)
    return after


def load_artifact(path: str, *, verify: bool = True, dtype=None):
    """Artifact directory -> Salmonn with `load_report` and `manifest` attached (see loaders/materialize.py)."""
    from transformers import AutoTokenizer

    from ..models.build import build_modules
    from ..models.config import SalmonnConfig
    from .materialize import load_weights, materialize

    manifest = read_manifest(path)
    if manifest.get("kind", "pytorch") != "pytorch":
        raise CheckpointError(f"{path!r} is a {manifest['kind']} export, not a PyTorch artifact: "
                              "load it with load_model")
    verify_files(path, manifest, hashes=verify)
    with open(os.path.join(path, "config.json")) as f:
        conf = json.load(f)
    cfg = SalmonnConfig.from_dict(conf["model"])
    tok = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
    # Low-memory load: build on meta, real storage once (in `dtype` when given), weights a chunk at a time.
    model = build_modules(cfg, tok, seed=None, device="meta")
    overrides = conf.get("modules") or {}
    if overrides:  # modules a step replaced (e.g. quantized Linears): rebuild them empty before loading
        from .overrides import restore_modules

        restore_modules(model, overrides)
    materialize(model, dtype)
    external = conf.get("external") or {}
    covered: set = set()
    if external:  # frozen parts named by installed source (hash-checked), not stored
        from .external import load_external

        covered = load_external(model, external)
    got = load_weights(model, os.path.join(path, WEIGHTS), sparse=conf.get("sparse") or {},
                       aliases=conf.get("aliases") or {})
    got["missing"] = [k for k in got["missing"] if k not in covered]
    if got["missing"] or got["unexpected"]:
        raise CheckpointError(
            f"artifact {path!r} does not match its config: missing {got['missing'][:5]} "
            f"({len(got['missing'])}), unexpected {got['unexpected'][:5]} ({len(got['unexpected'])})"
        )
    model.stored_dtype = dominant_dtype(got["storage_counts"])  # what `run --save-dtype auto` writes back
    if dtype is not None:
        model.to(dtype)
    from ..runtime import apply_runtime  # runtime-only changes (sdpa, real_length, compile, liger)

    apply_runtime(model)
    model.manifest = manifest
    model.load_report = {part: {"source": os.path.join(path, WEIGHTS)} for part in model.parts()}
    for part, entry in external.items():
        model.load_report[part] = {"source": f"{entry.get('package')} {entry.get('version')} {entry.get('file')} "
                                             f"(sha256 {str(entry.get('sha256'))[:12]}...)"}
    return model.eval()


def model_notes(model) -> list:
    """Notes a reader of any result on this model must see (e.g. that its LLM is 4-bit-derived): those of its
    frozen parts' sources, and those inherited from the model a recipe started from."""
    m = getattr(model, "manifest", None) or {}
    notes = [e["note"] for e in (m.get("frozen_parts") or {}).values() if isinstance(e, dict) and e.get("note")]
    notes += [n for n in m.get("source_notes", []) if n not in notes]
    return notes


def tensor_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
