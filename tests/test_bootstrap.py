"""Paired bootstrap over clips (compress.metrics.bootstrap)."""

import pytest

from compress.metrics import cider_d
from compress.metrics.bootstrap import paired_bootstrap


def accuracy(cands, refs):
    return sum(c == r for c, r in zip(cands, refs)) / len(cands)


def test_identical_systems_differ_by_nothing():
    a = ["x", "y", "z", "x"]
    got = paired_bootstrap(accuracy, a, list(a), ["x", "y", "q", "q"], resamples=200)
    assert got["delta"] == got["low"] == got["high"] == 0.0 and got["share_below"] == 0.0


def test_a_worse_system_on_every_clip_is_always_lower():
    refs = [str(i) for i in range(30)]
    worse = [r if i % 3 else "wrong" for i, r in enumerate(refs)]
    got = paired_bootstrap(accuracy, refs, worse, refs, resamples=300, seed=1)
    assert got["delta"] == pytest.approx(-10 / 30)
    assert got["low"] <= got["delta"] <= got["high"] < 0 and got["share_below"] == 1.0
    assert paired_bootstrap(accuracy, refs, worse, refs, resamples=300, seed=1) == got  # seeded


def test_one_changed_clip_of_many_is_not_significant():
    refs = [[f"a sound number {i}", f"the sound {i}"] for i in range(40)]
    a = [f"a sound number {i}" for i in range(40)]
    b = list(a)
    b[0] = "silence"
    got = paired_bootstrap(lambda c, r: cider_d(c, r)[0], a, b, refs, resamples=200)
    assert got["delta"] < 0 and got["high"] >= 0  # the interval covers no change
    assert 0 < got["share_below"] < 1


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="equally many"):
        paired_bootstrap(accuracy, ["a"], ["a", "b"], ["a"])


def test_wer_bootstrap_matches_corpus_wer_and_sees_a_consistent_loss():
    from compress.metrics import wer
    from compress.metrics.bootstrap import wer_bootstrap

    refs = [f"the cat sat on mat number {i}" for i in range(30)]
    a = list(refs)
    b = [r.replace("cat", "dog") for r in refs]  # one substitution in every clip
    out = wer_bootstrap(refs, a, b, resamples=200)
    assert out["delta"] == pytest.approx(wer(refs, b) - wer(refs, a))
    assert out["delta"] == pytest.approx(30 / (30 * 7))
    assert out["low"] > 0 and out["share_below"] == 0.0
    same = wer_bootstrap(refs, b, b, resamples=50)
    assert same["delta"] == 0 and same["low"] == same["high"] == 0
