"""SPICE and SPIDEr, computed only when the user provides Stanford CoreNLP 3.6.0; never downloaded.

pycocoevalcap's ``Spice()`` downloads CoreNLP (~400 MB) from nlp.stanford.edu the first time it
is built, which cannot work offline. We never build it: we only borrow the SPICE jar and its
bundled libraries from the installed pycocoevalcap package and run Java ourselves, with the
user's CoreNLP jars on the class path. Without the jars, pycocoevalcap or Java, the metric is
reported unavailable (``MetricUnavailable``), never replaced by another number.

SPICE is run without its ``-cache`` option: the cache uses a serialisation library (FST 2.47)
that fails on Java >= 16 ("module java.base does not opens java.lang"), and the scores do not
depend on it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from compress.metrics.cider import check_caption_inputs, cider_d, tokenize_caption_sets
from compress.metrics.registry import MetricUnavailable

CORENLP_ENV = "SALMONN_COMPRESS_CORENLP_DIR"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
SPICE_MAIN = "edu.anu.spice.SpiceScorer"


def _corenlp_jars(corenlp_dir) -> list[Path]:
    where = corenlp_dir or os.environ.get(CORENLP_ENV)
    if not where:
        raise MetricUnavailable(
            "spice",
            f"SPICE needs the Stanford CoreNLP 3.6.0 jars ({', '.join(CORENLP_JARS)}), which cannot "
            f"be downloaded here; pass corenlp_dir= or set {CORENLP_ENV} to the folder holding them",
        )
    folder = Path(where).expanduser()
    missing = [j for j in CORENLP_JARS if not (folder / j).is_file()]
    if missing:
        raise MetricUnavailable(
            "spice", f"{folder} does not contain {', '.join(missing)} (Stanford CoreNLP 3.6.0)"
        )
    return [folder / j for j in CORENLP_JARS]


def _spice_dir() -> Path:
    # find_spec locates the package without importing pycocoevalcap.spice (whose Spice() downloads)
    spec = importlib.util.find_spec("pycocoevalcap")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        if (Path(root) / "spice" / "spice-1.0.jar").is_file():
            return Path(root) / "spice"
    raise MetricUnavailable(
        "spice", "the SPICE jar comes from pycocoevalcap, which is not installed: pip install pycocoevalcap"
    )


def _run_spice(tests, refs, jars, spice_dir: Path, java: str, memory: str, timeout) -> list[float]:
    classpath = [spice_dir / "spice-1.0.jar", *sorted((spice_dir / "lib").glob("*.jar")), *jars]
    with tempfile.TemporaryDirectory(prefix="salmonn-spice-") as tmp:
        in_file, out_file = Path(tmp) / "input.json", Path(tmp) / "output.json"
        data = [{"image_id": i, "test": t, "refs": r} for i, (t, r) in enumerate(zip(tests, refs))]
        in_file.write_text(json.dumps(data))
        cmd = [java, f"-Xmx{memory}", "-cp", os.pathsep.join(map(str, classpath)), SPICE_MAIN,
               str(in_file), "-out", str(out_file), "-subset", "-silent"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise MetricUnavailable("spice", f"the SPICE Java process ran past {timeout} s") from None
        if proc.returncode != 0 or not out_file.is_file():
            tail = (proc.stderr or proc.stdout or "").strip()[-1500:]
            raise MetricUnavailable("spice", f"the SPICE Java process failed (exit {proc.returncode}): {tail}")
        results = json.loads(out_file.read_text())
    by_id = {item["image_id"]: item["scores"]["All"]["f"] for item in results}
    per_clip = []
    for i in range(len(tests)):
        try:
            per_clip.append(float(by_id[i]))
        except (KeyError, TypeError, ValueError):
            per_clip.append(math.nan)  # pycocoevalcap also turns a missing/invalid F into NaN
    return per_clip


def spice(
    candidates: list[str],
    references: list[list[str]],
    *,
    corenlp_dir: str | os.PathLike | None = None,
    tokenize: bool = True,
    java: str | None = None,
    memory: str = "8G",
    timeout: float | None = None,
) -> tuple[float, list[float]]:
    """SPICE F-score (pycocoevalcap's SPICE 1.0 jar) -> (mean, per-clip).

    Needs: the two CoreNLP 3.6.0 jars in ``corenlp_dir`` (or $SALMONN_COMPRESS_CORENLP_DIR),
    pycocoevalcap installed (for the SPICE jar), and Java 8+. Raises MetricUnavailable
    otherwise, before touching pycocoevalcap's download code or the network.
    """
    candidates, references = check_caption_inputs(candidates, references, "SPICE")
    jars = _corenlp_jars(corenlp_dir)
    spice_dir = _spice_dir()
    java = java or shutil.which("java")
    if not java:
        raise MetricUnavailable("spice", "SPICE needs a Java runtime (java not found on PATH)")
    if tokenize:  # pycocoevalcap's COCOEvalCap tokenizes before every scorer, SPICE included
        candidates, references = tokenize_caption_sets(candidates, references)
    per_clip = _run_spice(candidates, references, jars, spice_dir, java, memory, timeout)
    return sum(per_clip) / len(per_clip), per_clip


def spider(
    candidates: list[str],
    references: list[list[str]],
    *,
    corenlp_dir: str | os.PathLike | None = None,
    tokenize: bool = True,
    **spice_kwargs,
) -> tuple[float, list[float]]:
    """SPIDEr = (CIDEr-D + SPICE) / 2 per clip -> (mean, per-clip). MetricUnavailable without SPICE."""
    try:
        spice_score, spice_clips = spice(
            candidates, references, corenlp_dir=corenlp_dir, tokenize=tokenize, **spice_kwargs
        )
    except MetricUnavailable as err:
        raise MetricUnavailable("spider", f"SPIDEr needs SPICE: {err.reason}") from None
    _, cider_clips = cider_d(candidates, references, tokenize=tokenize)
    per_clip = [(c + s) / 2 for c, s in zip(cider_clips, spice_clips)]
    return sum(per_clip) / len(per_clip), per_clip


def caption_metrics(candidates, references, corenlp_dir=None, *, tokenize: bool = True) -> dict:
    """CIDEr-D always; SPICE and SPIDEr when available, else None with the reason in "unavailable"."""
    cider_score, cider_clips = cider_d(candidates, references, tokenize=tokenize)
    result = {
        "cider_d": cider_score,
        "spice": None,
        "spider": None,
        "unavailable": {},
        "per_clip": {"cider_d": cider_clips},
    }
    try:
        spice_score, spice_clips = spice(candidates, references, corenlp_dir=corenlp_dir, tokenize=tokenize)
    except MetricUnavailable as err:
        result["unavailable"] = {"spice": err.reason, "spider": f"SPIDEr needs SPICE: {err.reason}"}
        return result
    spider_clips = [(c + s) / 2 for c, s in zip(cider_clips, spice_clips)]
    result.update(spice=spice_score, spider=sum(spider_clips) / len(spider_clips))
    result["per_clip"].update(spice=spice_clips, spider=spider_clips)
    return result
