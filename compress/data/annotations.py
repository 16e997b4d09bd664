"""Read and write annotation files: SALMONN's {"annotation": [...]} and the hackathon test format, as Samples.

Accepted layouts (JSON):

* SALMONN: ``{"annotation": [{"path", "task", "text", ...}, ...]}`` (other top-level keys ignored);
* hackathon test sets: a list of entries, or an object mapping ids to entries, each with
  ``path``, ``task``, ``text`` and optionally ``testset_id``.

``task`` is ``asr`` or a captioning name (``audiocaption``, ``audiocaption_v2``, ``caption``,
``aac``). Relative paths are taken from the annotation file's folder (or ``root``). A caption
entry may carry ``references`` (a list of strings); otherwise its ``text`` is the one reference.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, UserError
from ..fileio import write_text
from ..models.config import resolve_task

KNOWN_FIELDS = ("path", "task", "text", "references", "testset_id", "id")


@dataclass(frozen=True)
class Sample:
    id: str
    path: str  # absolute
    task: str  # "asr" | "caption"
    text: str
    references: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def read_annotations(path, *, root=None, check_files: bool = True) -> list[Sample]:
    """Samples from an annotation file; ConfigError names the entry and field of any problem.

    With ``check_files`` every audio file must exist (a UserError lists the first missing ones).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"annotation file '{path}' not found" if not path.exists()
                        else f"annotation file '{path}' is not a file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    base = Path(root) if root is not None else path.parent
    entries = _entries(data, path)
    samples, seen = [], set()
    for label, entry, given_id in entries:
        s = _sample(entry, label, given_id, base, path)
        if s.id in seen:
            if given_id is not None or "testset_id" in entry or "id" in entry:
                raise ConfigError(f"{path}: {label}: duplicate id {s.id!r}")
            s = Sample(f"{s.id}:{s.task}", s.path, s.task, s.text, s.references, s.extra)
            if s.id in seen:
                raise ConfigError(f"{path}: {label}: duplicate entry for path {entry['path']!r} and task {s.task!r}")
        seen.add(s.id)
        samples.append(s)
    if check_files:
        missing = [s.path for s in samples if not os.path.isfile(s.path)]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise UserError(f"{path}: {len(missing)} audio file(s) not found: {', '.join(missing[:5])}{more}")
    return samples


def _entries(data, path):
    """[(label for errors, entry, id from the mapping or None)]"""
    if isinstance(data, dict) and "annotation" in data:
        items = data["annotation"]
        if not isinstance(items, list):
            raise ConfigError(f"{path}: field 'annotation' must be a list of entries, got {type(items).__name__}")
        return [(f"entry {i}", e, None) for i, e in enumerate(items)]
    if isinstance(data, list):
        return [(f"entry {i}", e, None) for i, e in enumerate(data)]
    if isinstance(data, dict):
        if not data:
            raise ConfigError(f"{path}: empty object; expected {{\"annotation\": [...]}}, a list of entries, "
                              f"or an object mapping ids to entries")
        if "path" in data and not isinstance(data["path"], dict):
            raise ConfigError(f"{path}: a single entry at the top level; wrap it in a list "
                              f"or in {{\"annotation\": [...]}}")
        return [(f"entry {k!r}", e, str(k)) for k, e in data.items()]
    raise ConfigError(f"{path}: top level is a {type(data).__name__}; expected {{\"annotation\": [...]}}, "
                      f"a list of entries, or an object mapping ids to entries")


def _text(entry, key, label, path, *, required=True):
    value = entry.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{path}: {label}: missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {label}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _sample(entry, label, given_id, base: Path, path) -> Sample:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: {label} is a {type(entry).__name__}; expected an object with "
                          f"'path', 'task' and 'text'")
    rel = _text(entry, "path", label, path)
    if not rel.strip():
        raise ConfigError(f"{path}: {label}: field 'path' is empty")
    task_name = _text(entry, "task", label, path)
    try:
        task = resolve_task(re.sub(r"_v\d+$", "", task_name.strip().lower()))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {label}: field 'task': {exc}") from None
    refs = entry.get("references")
    if refs is not None:
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise ConfigError(f"{path}: {label}: field 'references' must be a non-empty list of non-empty strings")
    text = _text(entry, "text", label, path, required=refs is None)
    if text is None:
        text = refs[0]
    if not text.strip():
        raise ConfigError(f"{path}: {label}: field 'text' is empty")
    if refs is None:
        refs = [text]
    sid = entry.get("testset_id", entry.get("id", given_id))
    if sid is None:
        sid = rel
    elif isinstance(sid, bool) or not isinstance(sid, (str, int)):
        raise ConfigError(f"{path}: {label}: field 'testset_id'/'id' must be a string or integer")
    full = os.path.abspath(os.path.join(base, os.path.expanduser(rel)))
    extra = {k: v for k, v in entry.items() if k not in KNOWN_FIELDS}
    if task_name != task:
        extra.setdefault("task_name", task_name)
    return Sample(str(sid), full, task, text, list(refs), extra)


def write_annotations(path, entries, meta: dict | None = None) -> None:
    """Write ``{"annotation": entries}`` (SALMONN's format), one entry per line, plus optional ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(e, ensure_ascii=False, sort_keys=False) for e in entries]
    head = "{\n" + (f' "meta": {json.dumps(meta, ensure_ascii=False)},\n' if meta else "")
    body = ' "annotation": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n" if lines else ' "annotation": []\n}\n'
    write_text(path, head + body)
