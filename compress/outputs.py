"""Output folders this tool writes (artifacts, exports, HF-format quantized folders): written atomically beside
their target and renamed into place, with a manifest (written last) that lists every file's sha256 and size.

A folder without its manifest is never treated as complete. Only folders this tool wrote (its manifest's
format, or its marker file) are ever replaced or deleted. Torch-free: the layers that write folders (loaders,
export, quant) all build on this one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from typing import Callable, Optional

from .errors import CheckpointError, UserError

FORMAT = "salmonn-compress-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def split_shared(state: dict) -> tuple:
    """safetensors refuses aliased tensors: keep one name per storage, map the other names to it."""
    unique, aliases, seen = {}, {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) if t.device.type != "meta" else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        unique[name] = t.detach().contiguous()
    return unique, aliases


def package_versions() -> dict:
    from importlib import metadata

    out = {}
    for pkg in ("salmonn-compress", "torch", "transformers", "peft", "safetensors", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


MARKER = "salmonn-compress-output.json"  # marks folders this tool wrote in another format (HF GPTQ export)


def is_own_output(path: str) -> bool:
    """True when `path` is a directory this tool wrote (an artifact or export with this format's manifest, or a
    folder with this tool's marker file)."""
    if not os.path.isdir(path):
        return False
    for name in (MANIFEST, MARKER):
        try:
            with open(os.path.join(path, name)) as f:
                if json.load(f).get("format") == FORMAT:
                    return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def check_output(out_dir: str, overwrite: bool) -> None:
    """Refuse an output path before any work: it exists and `overwrite` is off, or it is not this tool's."""
    out_dir = os.path.abspath(out_dir)
    if os.path.lexists(out_dir):
        if not overwrite:
            raise UserError(f"output {out_dir!r} already exists; choose another path or pass --overwrite")
        if not is_own_output(out_dir):
            raise UserError(f"output {out_dir!r} exists and is not an artifact written by salmonn-compress (no "
                            f"{MANIFEST} of format {FORMAT!r}); --overwrite replaces only this tool's artifacts: "
                            "choose another path or remove it yourself")


def clean_stale_siblings(out_dir: str) -> list:
    """Remove `.NAME.tmp-PID` / `.NAME.old-PID` folders that runs killed mid-write left beside `out_dir`
    (only those whose process is gone); returns what was removed."""
    parent, name = os.path.split(os.path.abspath(out_dir))
    removed = []
    if not os.path.isdir(parent):
        return removed
    for entry in os.listdir(parent):
        for kind in (".tmp-", ".old-"):
            head = f".{name}{kind}"
            if entry.startswith(head) and entry[len(head):].isdigit():
                pid = int(entry[len(head):])
                if pid != os.getpid() and not _alive(pid):
                    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
                    removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_directory(out_dir: str, write: Callable[[str], None], *, overwrite: bool = False) -> str:
    """Run write(tmp_dir), then move tmp_dir to out_dir; on any failure (or Ctrl-C) remove tmp_dir.

    An existing out_dir is replaced only with `overwrite` and only when this tool wrote it (its manifest says
    so): anything else at that path is never deleted."""
    out_dir = os.path.abspath(out_dir)
    parent, name = os.path.split(out_dir)
    check_output(out_dir, overwrite)
    os.makedirs(parent, exist_ok=True)
    clean_stale_siblings(out_dir)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        write(tmp)
        _fsync_tree(tmp)
        if os.path.exists(out_dir):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _fsync_tree(root: str) -> None:
    """fsync every file, and give each the permissions the user's umask grants (some writers, e.g. safetensors,
    create files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            os.chmod(p, 0o666 & ~mask)
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


def file_table(root: str) -> dict:
    """Relative path -> {sha256, bytes} of every file under `root` but the manifest."""
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in sorted(names):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            if rel != MANIFEST:
                files[rel] = {"sha256": sha256_file(p), "bytes": os.path.getsize(p)}
    return files


def dir_bytes(root: str) -> int:
    """Bytes of every file under `root`."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)


def write_manifest(root: str, fields: dict, *, packages: Optional[dict] = None, files: Optional[dict] = None) -> dict:
    """Write `root`'s manifest (last, once everything else is written): format header, creation time, package
    versions, the file table (computed here unless given), then `fields`. Returns it."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "packages": packages if packages is not None else package_versions(),
        "files": files if files is not None else file_table(root),
        **fields,
    }
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, default=str)
    return manifest


def read_manifest(path: str) -> dict:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise CheckpointError(
            f"{path!r} is not a salmonn-compress artifact: no {MANIFEST} (incomplete write or another format)"
        )
    try:
        with open(mpath) as f:
            m = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"artifact {path!r}: unreadable {MANIFEST}: {e}") from None
    if m.get("format") != FORMAT:
        raise CheckpointError(f"artifact {path!r}: manifest format is {m.get('format')!r}, expected {FORMAT!r}")
    if m.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"artifact {path!r} has format_version {m.get('format_version')}; this tool reads up to "
            f"{FORMAT_VERSION}: upgrade salmonn-compress"
        )
    return m


def verify_files(path: str, manifest: dict, *, hashes: bool = True) -> None:
    for rel, info in manifest.get("files", {}).items():
        p = os.path.join(path, rel)
        if not os.path.isfile(p):
            raise CheckpointError(f"artifact {path!r}: file {rel!r} listed in the manifest is missing")
        if os.path.getsize(p) != info["bytes"]:
            raise CheckpointError(f"artifact {path!r}: {rel!r} has {os.path.getsize(p)} bytes, manifest says {info['bytes']}")
        if hashes and sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"artifact {path!r}: {rel!r} does not match its sha256 in the manifest (corrupt?)")
