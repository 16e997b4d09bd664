"""The dataset generator: sentences, procedural sounds, TTS voices, split builder, annotation reader, shipped sets."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from compress.audio import load_audio
from demo_factory.data import build, sentences, sounds, tts
from compress.data.annotations import read_annotations, write_annotations
from demo_factory.data.audiofile import set_ogg_serial, write_audio
from compress.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
FAST_VOICES = [v for v in ("espeak-us-m3", "espeak-gb-f2", "flite-slt", tts.HELDOUT_VOICE)
               if not tts.missing_voices([v])]
needs_tts = pytest.mark.skipif(not {"espeak-us-m3", tts.HELDOUT_VOICE} <= set(FAST_VOICES),
                               reason="espeak-ng and flite are not installed (scripts/install_tts.sh)")


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# Sentences
# ------------------------------------------------------------------------------------------------


def test_sentence_pool_is_real_varied_and_split_disjoint():
    by = {s: {sentences.normalise(x) for x in sentences.sentences_for(s)} for s in sentences.SPLITS}
    assert len(by["train"]) >= 1000 and len(by["dev"]) >= 100 and len(by["test"]) >= 100
    assert not by["train"] & by["dev"] and not by["train"] & by["test"] and not by["dev"] & by["test"]
    vocab = {w for split in by.values() for s in split for w in s.split()}
    assert 1500 < len(vocab) <= sentences.VOCABULARY
    train_words = {w for s in by["train"] for w in s.split()}  # closed vocabulary
    assert all(set(s.split()) <= train_words for split in ("dev", "test") for s in by[split])
    for s in sentences.load_pool():
        n = len(sentences.normalise(s).split())
        assert 5 <= n <= 20, s


def test_closed_vocabulary_moves_unseen_words_to_train():
    cands = [f"the cat saw item {w}" for w in ("apple", "pear", "plum", "fig", "lime", "kiwi", "date", "nut",
                                                "bean", "corn", "rice", "oat", "rye", "pea", "yam", "leek")]
    by_hash = {sp: [c for c in cands if sentences.hash_split(c) == sp] for sp in sentences.SPLITS}
    assert by_hash["train"] and (by_hash["dev"] or by_hash["test"])
    held = (by_hash["dev"] + by_hash["test"])[0]  # a dev/test sentence whose last word no train sentence has
    word = held.split()[-1]
    covered = [t + " " + word for t in by_hash["train"] if sentences.hash_split(t + " " + word) == "train"][0]
    got = sentences.closed_vocabulary_splits([held] + by_hash["train"])
    assert got[held] == "train" and all(got[c] == "train" for c in by_hash["train"])
    got = sentences.closed_vocabulary_splits([held, covered] + by_hash["train"])  # now a train sentence has it
    assert got[held] == sentences.hash_split(held) != "train"


def test_chain_sentences_are_new_closed_vocabulary_and_deterministic():
    got = sentences.chain_sentences(300, seed=4)
    assert got == sentences.chain_sentences(300, seed=4) and got != sentences.chain_sentences(300, seed=5)
    assert len(set(got)) == 300
    pool = {sentences.normalise(s) for s in sentences.load_pool()}
    train_words = {w for s in sentences.sentences_for("train") for w in sentences.normalise(s).split()}
    for s in got:
        assert s not in pool and s == sentences.normalise(s)
        assert sentences.MIN_WORDS <= len(s.split()) <= sentences.MAX_WORDS and set(s.split()) <= train_words
    assert len({w for s in got for w in s.split()}) > 700  # varied (889 words in 300), not a few loops


def test_open_sentences_are_new_open_vocabulary_and_deterministic():
    got = sentences.open_sentences(400, seed=4)
    assert got == sentences.open_sentences(400, seed=4) and got != sentences.open_sentences(400, seed=5)
    keys = [sentences.normalise(s) for s in got]
    assert len(set(keys)) == 400
    pool = {sentences.normalise(s) for s in sentences.load_pool()}
    assert not set(keys) & pool  # never a pool sentence, so never a dev or test one
    train_words = {w for s in sentences.sentences_for("train") for w in sentences.normalise(s).split()}
    words = [w for k in keys for w in k.split()]
    assert sum(w not in train_words for w in words) > 0.15 * len(words)  # open vocabulary, not the closed one
    with pytest.raises(ConfigError, match="open-vocabulary sentences are shipped"):
        sentences.open_sentences(10 ** 6)


def test_normalise_plain_words():
    assert sentences.normalise("The dog's tail-end, wagging!") == "the dog's tail end wagging"
    assert sentences.normalise("'Quoted' words; yes.") == "quoted words yes"


def test_unknown_split_is_named():
    with pytest.raises(ConfigError, match="valid: 'dev', 'test', 'train'"):
        sentences.sentences_for("validation")


# ------------------------------------------------------------------------------------------------
# Procedural sounds (no TTS needed)
# ------------------------------------------------------------------------------------------------


def _fake_speech(gender="female"):
    t = np.arange(int(2.5 * 16000)) / 16000
    wav = (np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32) * 0.2
    return sounds.Speech(wav, gender, "fake", "hello there", robotic=True)


@pytest.mark.parametrize("kind", sounds.KINDS)
def test_every_kind_has_three_plus_varied_references(kind):
    for seed in range(4):
        clip = sounds.make_clip(kind, np.random.default_rng(seed), _fake_speech())
        assert len(set(clip.references)) >= 3 and len(clip.references) == sounds.N_REFS
        assert all(r[0].isupper() and "  " not in r for r in clip.references)
        assert clip.wav.dtype == np.float32 and 2.0 <= len(clip.wav) / 16000 <= 10.0
        assert np.isfinite(clip.wav).all() and np.abs(clip.wav).max() <= 1.0
        assert clip.kind == kind


def test_captions_follow_parameters():
    for seed in range(8):
        clip = sounds.make_sweep(np.random.default_rng(seed))
        word = {"up": ("ris", "up", "climb", "low to high", "low pitch to a high"),
                "down": ("fall", "down", "drop", "descend", "high to low", "high pitch to a low")}
        assert all(any(w in r.lower() for w in word[clip.params["direction"]]) for r in clip.references)
        silence = sounds.make_silence(np.random.default_rng(seed))
        if not silence.params["faint_hiss"]:
            assert not np.any(silence.wav)
        man = sounds.make_speech(np.random.default_rng(seed), _fake_speech("male"))
        assert not any("woman" in r.lower() or "female" in r.lower() for r in man.references)


def test_same_seed_same_sound_different_seed_different():
    a = sounds.make_clip("siren", np.random.default_rng(3))
    b = sounds.make_clip("siren", np.random.default_rng(3))
    c = sounds.make_clip("siren", np.random.default_rng(4))
    assert np.array_equal(a.wav, b.wav) and a.references == b.references
    assert not (len(a.wav) == len(c.wav) and np.array_equal(a.wav, c.wav))


# ------------------------------------------------------------------------------------------------
# Building splits
# ------------------------------------------------------------------------------------------------


def test_build_without_tts_is_deterministic_and_readable(tmp_path):
    runs = [build.build_split(tmp_path / f"r{i}", "dev", 7, 0, 12, voices=[], progress=False) for i in range(2)]
    assert runs[0].read_bytes() == runs[1].read_bytes()
    assert _digest(tmp_path / "r0") == _digest(tmp_path / "r1")
    other = build.build_split(tmp_path / "r2", "dev", 8, 0, 12, voices=[], progress=False)
    assert other.read_bytes() != runs[0].read_bytes()

    samples = read_annotations(runs[0])
    assert len(samples) == 12 and all(s.task == "caption" and len(s.references) >= 3 for s in samples)
    assert len({s.extra["kind"] for s in samples}) == len(sounds.MAKERS)  # cycles through the kinds
    for s in samples:
        assert Path(s.path).is_file() and Path(s.path).suffix == ".ogg"
        assert sf.info(s.path).samplerate == 16000 and sf.info(s.path).channels == 1
        wav = load_audio(s.path)
        assert wav.dtype == np.float32 and 2.0 <= len(wav) / 16000 <= 10.0
    raw = json.loads(runs[0].read_text())
    assert set(raw) == {"meta", "annotation"}
    assert all(not Path(e["path"]).is_absolute() for e in raw["annotation"])


def test_build_flac_and_prefix_property(tmp_path):
    small = build.build_split(tmp_path / "a", "test", 1, 0, 3, voices=[], fmt="flac", progress=False)
    big = build.build_split(tmp_path / "b", "test", 1, 0, 5, voices=[], fmt="flac", progress=False)
    a, b = json.loads(small.read_text())["annotation"], json.loads(big.read_text())["annotation"]
    assert a == b[:3]
    for e in a:
        assert (tmp_path / "a" / e["path"]).read_bytes() == (tmp_path / "b" / e["path"]).read_bytes()
        assert sf.info(str(tmp_path / "a" / e["path"])).format == "FLAC"


def test_rebuild_removes_stale_clips_only(tmp_path):
    build.build_split(tmp_path, "dev", 0, 0, 4, voices=[], progress=False)
    keep = tmp_path / "dev" / "notes.txt"
    keep.write_text("mine")
    build.build_split(tmp_path, "dev", 0, 0, 2, voices=[], progress=False)
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["cap_00000.ogg", "cap_00001.ogg", "notes.txt"]



def test_build_in_worker_processes_writes_the_same_split(tmp_path):
    one = build.build_split(tmp_path / "one", "dev", 5, 0, 5, voices=[], progress=False, workers=1)
    two = build.build_split(tmp_path / "two", "dev", 5, 0, 5, voices=[], progress=False, workers=2)
    assert one.read_bytes() == two.read_bytes()
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
    assert build._auto_workers(10) == 1 and 1 <= build._auto_workers(10_000) <= 4


@needs_tts
def test_build_in_worker_processes_with_speech(tmp_path):
    kw = dict(voices=FAST_VOICES, progress=False, n_chain=2)
    one = build.build_split(tmp_path / "one", "train", 2, 2, 2, workers=1, **kw)
    two = build.build_split(tmp_path / "two", "train", 2, 2, 2, workers=2, **kw)
    assert one.read_bytes() == two.read_bytes()
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")

@needs_tts
def test_build_with_tts_deterministic_and_heldout(tmp_path):
    voices = FAST_VOICES
    runs = [build.build_split(tmp_path / f"r{i}", "train", 3, 4, 3, voices=voices, progress=False) for i in range(2)]
    assert runs[0].read_bytes() == runs[1].read_bytes()
    assert _digest(tmp_path / "r0") == _digest(tmp_path / "r1")
    train = read_annotations(runs[0])
    train_text = {sentences.normalise(s) for s in sentences.sentences_for("train")}
    asr = [s for s in train if s.task == "asr"]
    assert len(asr) == 4
    for s in train:
        voice = s.extra["voice"] if s.task == "asr" else s.extra["params"].get("voice")
        assert voice != tts.HELDOUT_VOICE
    for s in asr:
        assert s.text in train_text and s.extra["split"] == "train" and not s.extra["heldout_voice"]
        wav = load_audio(s.path)
        assert len(wav) / 16000 == pytest.approx(s.extra["seconds"], abs=0.02)


@needs_tts
def test_build_chain_clips_train_only(tmp_path):
    ann = build.build_split(tmp_path, "train", 0, 1, 0, voices=FAST_VOICES, progress=False, n_chain=2)
    samples = read_annotations(ann)
    chain = [s for s in samples if s.extra.get("sentence_source") == "chain"]
    assert [s.text for s in chain] == sentences.chain_sentences(2, 0) and all(s.task == "asr" for s in chain)
    assert json.loads(ann.read_text())["meta"]["chain"] == 2
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["asr_00000.ogg", "chain_00000.ogg",
                                                                       "chain_00001.ogg"]
    with pytest.raises(ConfigError, match="--chain and --open add training clips"):
        build.build_split(tmp_path, "dev", 0, 1, 0, voices=FAST_VOICES, progress=False, n_chain=1)


@needs_tts
def test_build_open_clips_train_only(tmp_path):
    ann = build.build_split(tmp_path, "train", 0, 0, 0, voices=FAST_VOICES, progress=False, n_open=2)
    samples = read_annotations(ann)
    assert [s.extra["sentence"] for s in samples] == sentences.open_sentences(2, 0)
    assert all(s.task == "asr" and s.extra["sentence_source"] == "open" for s in samples)
    assert [s.text for s in samples] == [sentences.normalise(t) for t in sentences.open_sentences(2, 0)]
    assert json.loads(ann.read_text())["meta"]["open"] == 2
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["open_00000.ogg", "open_00001.ogg"]
    with pytest.raises(ConfigError, match="--chain and --open add training clips"):
        build.build_split(tmp_path, "test", 0, 1, 0, voices=FAST_VOICES, progress=False, n_open=1)


@needs_tts
def test_dev_uses_heldout_voice_and_dev_sentences(tmp_path):
    ann = build.build_split(tmp_path, "dev", 0, 12, 0, voices=FAST_VOICES, progress=False)
    samples = read_annotations(ann)
    dev_text = {sentences.normalise(s) for s in sentences.sentences_for("dev")}
    assert all(s.text in dev_text for s in samples)
    assert any(s.extra["voice"] == tts.HELDOUT_VOICE for s in samples)
    assert all(s.extra["heldout_voice"] == (s.extra["voice"] == tts.HELDOUT_VOICE) for s in samples)


def test_heldout_voice_never_chosen_for_train():
    voices = list(tts.VOICES)
    picks = {build._asr_voice(np.random.default_rng(i), "train", [v for v in voices if v != tts.HELDOUT_VOICE])
             for i in range(300)}
    assert tts.HELDOUT_VOICE not in picks and len(picks) == len(voices) - 1
    with pytest.raises(ConfigError, match="at least one TTS voice"):
        build.build_split("/nonexistent", "train", 0, 1, 0, voices=[tts.HELDOUT_VOICE], progress=False)


def test_missing_voices_say_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    missing = tts.missing_voices(["espeak-us-m3", "flite-slt", "festival-kal"])
    assert missing == {"espeak-us-m3": "apt-get install -y espeak-ng", "flite-slt": "apt-get install -y flite",
                       "festival-kal": "apt-get install -y festival festvox-kallpc16k"}
    with pytest.raises(tts.TTSError, match="apt-get install -y espeak-ng"):
        tts.require_voices(["espeak-us-m3"])
    with pytest.raises(tts.TTSError, match="not installed"):
        tts.synthesize("flite-slt", "hello")
    with pytest.raises(tts.TTSError, match="unknown voice 'nobody'"):
        tts.voice("nobody")


def test_select_voices_by_engine_and_name():
    assert build.select_voices("flite") == ["flite-kal16", "flite-awb", "flite-slt", "flite-rms"]
    assert build.select_voices("piper-joe,espeak-us-m3") == ["piper-joe", "espeak-us-m3"]
    assert build.select_voices("none") == [] and build.select_voices("all") == list(tts.VOICES)
    with pytest.raises(ConfigError, match="unknown voice or engine 'klingon'"):
        build.select_voices("klingon")


def test_cli(tmp_path, capsys):
    assert build.main(["--out", str(tmp_path), "--split", "test", "--seed", "2", "--asr", "0", "--caption", "2",
                       "--voices", "none", "--no-progress"]) == 0
    assert (tmp_path / "test.json").is_file() and len(list((tmp_path / "test").iterdir())) == 2
    assert build.main(["--out", str(tmp_path), "--split", "test", "--asr", "1", "--voices", "none"]) == 2
    assert "at least one TTS voice" in capsys.readouterr().err


def test_ogg_serial_rewrite_keeps_stream_valid(tmp_path):
    x = (np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32)
    write_audio(tmp_path / "a.ogg", x)
    data = (tmp_path / "a.ogg").read_bytes()
    (tmp_path / "b.ogg").write_bytes(set_ogg_serial(data, 12345))
    a, _ = sf.read(tmp_path / "a.ogg")
    b, _ = sf.read(tmp_path / "b.ogg")
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="not an Ogg page"):
        set_ogg_serial(b"junk" + data, 1)


# ------------------------------------------------------------------------------------------------
# Annotation reader
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path):
    for name in ("a.ogg", "b.ogg"):
        write_audio(tmp_path / "audio" / name, np.zeros(16000, np.float32))
    return tmp_path


def _write(path, data):
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_reader_salmonn_format(clips):
    write_annotations(clips / "ann.json", [
        {"path": "audio/a.ogg", "text": "hello world", "task": "asr", "voice": "x"},
        {"path": "audio/b.ogg", "text": "A beep", "task": "audiocaption", "references": ["A beep", "One beep", "Beep"]},
    ], meta={"seed": 0})
    a, b = read_annotations(clips / "ann.json")
    assert (a.id, a.task, a.text, a.references, a.extra) == ("audio/a.ogg", "asr", "hello world", ["hello world"],
                                                           {"voice": "x"})
    assert a.path == str((clips / "audio" / "a.ogg").resolve())
    assert b.task == "caption" and b.references == ["A beep", "One beep", "Beep"]


def test_reader_hackathon_list_and_dict(clips):
    entries = [{"testset_id": "t1", "path": "audio/a.ogg", "task": "asr", "text": "hi"},
               {"testset_id": 2, "path": str(clips / "audio" / "b.ogg"), "task": "audiocaption_v2", "text": "noise"}]
    listed = read_annotations(_write(clips / "l.json", entries))
    assert [s.id for s in listed] == ["t1", "2"] and [s.task for s in listed] == ["asr", "caption"]
    assert listed[1].extra == {"task_name": "audiocaption_v2"}
    mapped = read_annotations(_write(clips / "d.json", {"x": {"path": "audio/a.ogg", "task": "asr", "text": "hi"}}))
    assert mapped[0].id == "x"
    other_root = read_annotations(_write(clips / "audio" / "r.json", [{"path": "audio/a.ogg", "task": "asr",
                                                                       "text": "hi"}]), root=clips)
    assert other_root[0].path == str(clips / "audio" / "a.ogg")
    same_path = read_annotations(_write(clips / "s.json", [{"path": "audio/a.ogg", "task": "asr", "text": "hi"},
                                                           {"path": "audio/a.ogg", "task": "aac", "text": "talk"}]))
    assert [s.id for s in same_path] == ["audio/a.ogg", "audio/a.ogg:caption"]


@pytest.mark.parametrize("data, match", [
    ("{not json", r"invalid JSON at line 1 column 2"),
    ('"text"', r"top level is a str"),
    ({}, r"empty object"),
    ({"annotation": {"path": "a"}}, r"field 'annotation' must be a list"),
    ({"path": "audio/a.ogg", "task": "asr", "text": "x"}, r"single entry at the top level"),
    ([5], r"entry 0 is a int"),
    ([{"task": "asr", "text": "x"}], r"entry 0: missing field 'path'"),
    ([{"path": "", "task": "asr", "text": "x"}], r"entry 0: field 'path' is empty"),
    ([{"path": "audio/a.ogg", "text": "x"}], r"entry 0: missing field 'task'"),
    ([{"path": "audio/a.ogg", "task": "translate", "text": "x"}], r"entry 0: field 'task': unknown task 'translate'"),
    ([{"path": "audio/a.ogg", "task": "asr", "text": 3}], r"entry 0: field 'text' must be a string, got int"),
    ([{"path": "audio/a.ogg", "task": "asr"}], r"entry 0: missing field 'text'"),
    ([{"path": "audio/a.ogg", "task": "asr", "text": "  "}], r"entry 0: field 'text' is empty"),
    ([{"path": "audio/a.ogg", "task": "aac", "text": "x", "references": []}], r"entry 0: field 'references'"),
    ({"annotation": [{"path": "audio/a.ogg", "task": "asr", "text": "x"}, {"path": "audio/b.ogg"}]},
     r"entry 1: missing field 'task'"),
    ([{"testset_id": 1, "path": "audio/a.ogg", "task": "asr", "text": "x"},
      {"testset_id": 1, "path": "audio/b.ogg", "task": "asr", "text": "y"}], r"entry 1: duplicate id '1'"),
    ({"k": {"path": "audio/a.ogg", "task": "asr", "text": ["x"]}}, r"entry 'k': field 'text' must be a string"),
])
def test_reader_malformed(clips, data, match):
    with pytest.raises(ConfigError, match=match):
        read_annotations(_write(clips / "bad.json", data))


def test_reader_missing_file_and_audio(clips):
    with pytest.raises(UserError, match="not found"):
        read_annotations(clips / "nope.json")
    ann = _write(clips / "m.json", [{"path": "audio/zzz.ogg", "task": "asr", "text": "x"}])
    with pytest.raises(UserError, match=r"1 audio file\(s\) not found: .*zzz.ogg"):
        read_annotations(ann)
    assert read_annotations(ann, check_files=False)[0].path.endswith("zzz.ogg")


# ------------------------------------------------------------------------------------------------
# The shipped dev / test sets
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["dev", "test"])
def test_shipped_sets(split):
    ann = REPO / "benchmarks" / "data" / f"{split}.json"
    if not ann.is_file():
        pytest.skip(f"{ann} not generated")
    samples = read_annotations(ann)
    asr = [s for s in samples if s.task == "asr"]
    cap = [s for s in samples if s.task == "caption"]
    assert len(asr) == 100 and len(cap) == 100
    split_text = {sentences.normalise(s) for s in sentences.sentences_for(split)}
    assert all(s.text in split_text for s in asr)
    assert sum(s.extra["voice"] == tts.HELDOUT_VOICE for s in asr) >= 10
    assert all(len(set(s.references)) >= 3 for s in cap)
    assert {s.extra["kind"] for s in cap} == set(sounds.KINDS)
    for s in samples[::40]:
        assert len(load_audio(s.path)) / 16000 == pytest.approx(
            s.extra["seconds"] if s.task == "asr" else s.extra["params"]["seconds"], abs=0.02)
