"""benchmarks/tools/asr_vs_whisper.py: an earlier result's transcripts matched to these clips, and the paired WER
difference against it (pure functions; the decoding itself runs in the benchmark)."""

from types import SimpleNamespace

import pytest

from builders import load_tool


def _tool():
    return load_tool("asr_vs_whisper")


def _clip(name, voice, heldout):
    return SimpleNamespace(path=f"/data/test/{name}", extra={"voice": voice, "heldout_voice": heldout})


def test_against_an_earlier_result_pairs_the_same_clips():
    t = _tool()
    clips = [_clip("a.ogg", "v1", False), _clip("b.ogg", "v1", False), _clip("c.ogg", "v2", True)]
    refs = ["red fox runs", "blue bird sings", "green frog jumps"]
    earlier = {"groups": {"all": {"salmonn_wer": 0.3333}},
               "samples": [{"path": "/elsewhere/test/c.ogg", "reference": refs[2], "salmonn": "green frog"},
                           {"path": "/elsewhere/test/a.ogg", "reference": refs[0], "salmonn": "red box runs"},
                           {"path": "/elsewhere/test/b.ogg", "reference": refs[1], "salmonn": "blue bird"}]}
    before = t.earlier_transcripts(clips, refs, earlier)
    assert before == ["red box runs", "blue bird", "green frog"]  # matched by file name, not by order
    now = list(refs)  # this model makes no error
    rows = t.compare(refs, now, now, clips)
    versus = t.against_earlier(rows, refs, now, before, clips, earlier["groups"])
    assert set(versus) == {"all", "seen voices", "held-out voice"}
    assert versus["all"]["delta"] == pytest.approx(-3 / 9, abs=1e-4) and versus["all"]["earlier_wer"] == 0.3333
    assert versus["held-out voice"]["delta"] == pytest.approx(-1 / 3, abs=1e-4)
    assert versus["all"]["high"] <= 0


def test_against_an_earlier_result_of_other_clips_is_refused():
    t = _tool()
    clips = [_clip("a.ogg", "v1", False)]
    earlier = {"groups": {}, "samples": [{"path": "x/a.ogg", "reference": "another sentence", "salmonn": "x"}]}
    with pytest.raises(ValueError, match="lacks 1 of these clips .first: a.ogg"):
        t.earlier_transcripts(clips, ["red fox"], earlier)


def test_a_beam_width_below_one_is_refused_before_any_model_loads(capsys):
    assert _tool().main(["--beams", "0", "--data", "nowhere.json"]) == 2
    assert "--beams must be >= 1, got 0" in capsys.readouterr().err
