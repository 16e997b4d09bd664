"""The hackathon's submission CSV (`testset_id,text`) and its validator, for comparison with published team numbers."""

from __future__ import annotations

import csv

from ..errors import UserError
from ..fileio import atomic_path

HEADER = ["testset_id", "text"]


def write_submission(records: list, path: str) -> int:
    """One row per sample in record order; a failed sample is written with empty text (as a miss)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for r in records:
            w.writerow([r.get("extra", {}).get("testset_id", r["id"]), (r["hypothesis"] or "").replace("\n", " ")])
    return len(records)


def validate_submission(path: str, expected_ids: list) -> list:
    """Problems found (empty list = valid): header, duplicate, missing and unknown ids, multi-line text."""
    problems = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read submission {path!r}: {e}") from None
    if not rows or rows[0] != HEADER:
        problems.append(f"header must be exactly {','.join(HEADER)!r}, got {','.join(rows[0]) if rows else 'nothing'!r}")
        return problems
    seen = set()
    for i, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            problems.append(f"line {i}: expected 2 columns, got {len(row)}")
            continue
        if row[0] in seen:
            problems.append(f"line {i}: duplicate testset_id {row[0]!r}")
        seen.add(row[0])
        if "\n" in row[1] or "\r" in row[1]:
            problems.append(f"line {i}: text contains a line break")
    exp = {str(x) for x in expected_ids}
    missing, unknown = sorted(exp - seen), sorted(seen - exp)
    if missing:
        problems.append(f"{len(missing)} testset_id(s) missing, e.g. {missing[:5]}")
    if unknown:
        problems.append(f"{len(unknown)} unknown testset_id(s), e.g. {unknown[:5]}")
    return problems
