"""The torch-free runtime of an ONNX export (compress.export.lite): Whisper log-mel equal to transformers', greedy
ids equal to OrtSalmonn's for both LLM graph layouts with and without real-length encoding, the command (torch never
imported), and one-line errors for bad exports and audio files."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from builders import DEV, ROOT, SessionRecorder, load_tool
from compress.audio import load_audio, whisper_features
from compress.data.annotations import read_annotations
from compress.export import lite
from compress.generation import apply_repetition_penalty, suppress_eos
from compress.loaders import load_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("tokenizers")

# Runs the command as `python -m` would, then fails if torch or transformers got imported on the way.
WRAPPER = """
import runpy, sys
sys.argv = ["compress.export.lite", *sys.argv[1:]]
try:
    runpy.run_module("compress.export.lite", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
if heavy:
    sys.exit(f"the command imported {heavy}")
sys.exit(code)
"""
# real_length changes the audio front only and the graph layout the LLM only: these three run each front (full and
# real length) and each LLM layout (dynamo and genai); the fourth pairing would add no code path (an export: ~15 s).
GRAPHS = [("dynamo", False), ("dynamo", True), ("genai", True)]


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    """(llm graph, real_length) -> export directory, written on first use."""
    from compress.export import export_model
    from compress.export.options import ExportOptions

    made = {}

    def get(graph: str, real_length: bool) -> str:
        if (graph, real_length) not in made:
            if graph == "genai":
                pytest.importorskip("onnxruntime_genai")
            out = str(tmp_path_factory.mktemp("lite") / f"{graph}-{int(real_length)}")
            tiny.real_length = real_length
            try:
                export_model(tiny, out, ExportOptions(llm_graph=graph))
            finally:
                tiny.real_length = False
            made[graph, real_length] = out
        return made[graph, real_length]

    return get


@pytest.fixture(scope="module")
def tiny():
    """The tiny random SALMONN, exported above in each graph layout (one torch thread: the CPU is shared)."""
    torch.set_num_threads(1)
    return load_model("tiny")


def _clips() -> list:
    return read_annotations(DEV, check_files=False)[:2]


def _run(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)


def test_module_is_torch_free():
    code = "import compress.export.lite, sys; assert not {'torch', 'transformers'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT)).returncode == 0


def test_log_mel_equals_whisper_features(exports):
    filters = np.load(os.path.join(exports("dynamo", False), lite.MEL_FILTERS))
    assert filters.shape == (201, 80) and filters.dtype == np.float32
    rng = np.random.default_rng(0)
    for n in (1000, 16000, 16000 * 3 + 77, 16000 * 30):
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        got = lite.log_mel(wav, filters)
        assert got.shape == (80, 3000) and got.dtype == np.float32
        np.testing.assert_allclose(got, whisper_features([wav], 80)[0].numpy(), atol=1e-4, rtol=0)
        for frames in (100, n // lite.HOP + 1, 2999):  # the first frames only: the 30 s result cut
            np.testing.assert_array_equal(lite.log_mel(wav, filters, frames), got[:, :frames])


def test_mel_power_is_the_matrix_product(exports):
    """The banded mel projection (no BLAS threads) equals power @ filters, for every band of the real filters."""
    filters = np.load(os.path.join(exports("dynamo", False), lite.MEL_FILTERS))
    power = np.random.default_rng(1).random((37, filters.shape[0])) ** 4
    np.testing.assert_allclose(lite.mel_power(power, filters), power @ filters.astype(np.float64), rtol=1e-12, atol=0)


def test_next_token_chooses_as_the_greedy_loop():
    """Repetition penalty, EOS masked before min_length, argmax with ties to the lowest id."""
    rng = np.random.default_rng(1)
    for step, seq, penalty in ((0, [], 1.0), (0, [3, 5], 1.3), (2, [7, 7, 1], 0.8)):
        logits = rng.standard_normal(12).astype(np.float32)
        logits[[4, 9]] = logits.max() + 1  # a tie
        ref = apply_repetition_penalty(torch.from_numpy(logits)[None], [seq], penalty)
        ref = suppress_eos(ref, [4], step, 1).argmax(-1).item()
        assert lite.next_token(logits, seq, [4], step, 1, penalty) == ref


@pytest.mark.parametrize("graph,real_length", GRAPHS)
def test_greedy_ids_equal_ort_backend(exports, graph, real_length):
    path = exports(graph, real_length)
    engine, ref = lite.LiteEngine(path, threads=1), load_model(path)
    assert engine.real_length == real_length == ref.real_length
    rng = np.random.default_rng(2)
    waves = [load_audio(s.path) for s in _clips()] + [(0.1 * rng.standard_normal(16000 * 4 + 5)).astype(np.float32)]
    for wav, task in zip(waves, ("asr", "caption", "asr")):
        speech = ref.encode_audio(**ref.prepare_audio([wav])).numpy()
        np.testing.assert_allclose(engine.speech_tokens(wav), speech, atol=1e-4, rtol=1e-4)
        want = ref.generate([wav], task, num_beams=1, ignore_eos=True, max_new_tokens=8)[0]
        steps = []
        text, ids = engine.generate(wav, task, max_new_tokens=8, ignore_eos=True, on_token=steps.append)
        assert ids == want.token_ids and len(ids) == 8 and text == want.text and steps == list(range(8))
        want = ref.generate([wav], task, num_beams=1, max_new_tokens=12)[0]
        assert engine.generate(wav, task, max_new_tokens=12) == (want.text, want.token_ids)


@pytest.mark.parametrize("graph", ["dynamo", "genai"])
def test_prompt_prefixes_are_prefilled_once_with_the_same_numbers(exports, graph):
    path = exports(graph, graph == "genai")
    engine = lite.LiteEngine(path, threads=1)
    (prefix,) = lite.prompt_prefixes(engine.prompts, engine.bos)  # SALMONN's layout: every task starts alike
    assert len(prefix) >= 2 and [r.shape[0] for r, _ in engine.llm.prefixes] == [len(prefix)]
    rec = SessionRecorder(engine.llm.session)
    reuse = lite.LlmSession(rec, engine.conf["llm"])
    rng = np.random.default_rng(4)
    d = engine.embed.shape[1]
    other_start = (0.5 * rng.standard_normal((3, d))).astype(np.float32)
    reuse.keep_prefixes([other_start, engine.embed[prefix]])
    s = len(prefix) + 9
    prompt = (0.5 * rng.standard_normal((1, s, d))).astype(np.float32)
    prompt[0, :len(prefix)] = engine.embed[prefix]
    ones, pos = np.ones((1, s), np.int64), np.arange(s)[None]
    rec.lengths.clear()
    got, got_past = reuse.run(prompt, ones, pos)
    assert rec.lengths == [9]  # only the rows after the prefix were run
    want, want_past = lite.LlmSession(engine.llm.session, engine.conf["llm"]).run(prompt, ones, pos)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_past, want_past):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    second = prompt.copy()
    second[0, :3] = other_start  # the other kept start
    rec.lengths.clear()
    got, _ = reuse.run(second, ones, pos)
    assert rec.lengths == [s - 3]
    np.testing.assert_allclose(got, lite.LlmSession(engine.llm.session, engine.conf["llm"]).run(second, ones, pos)[0],
                               atol=1e-5, rtol=1e-5)
    other = prompt.copy()
    other[0, 0] += 1.0  # another start: the whole prompt runs
    rec.lengths.clear()
    reuse.run(other, ones, pos)
    reuse.run(np.concatenate([prompt, prompt]), np.ones((2, s), np.int64), np.repeat(pos, 2, 0))
    reuse.keep_prefixes([])
    reuse.run(prompt, ones, pos)
    assert rec.lengths == [s, s, s]


def test_decode_steps_extend_the_kv_in_place_with_the_same_numbers(exports, monkeypatch):
    """The genai graph's one-position steps append to preallocated KV buffers (IO binding): the same logits and
    caches as the copying path, across growths of the buffers, and from an older cache (copied in first)."""
    monkeypatch.setattr(lite.KvInPlace, "MIN_CAPACITY", 4)  # grows at 12 positions within this test
    engine = lite.LiteEngine(exports("genai", True), threads=1)
    spec = engine.conf["llm"]
    fast, slow = lite.LlmSession(engine.llm.session, spec), lite.LlmSession(engine.llm.session, spec)
    slow.in_place = None
    assert fast.in_place is not None
    rng = np.random.default_rng(5)
    d = engine.embed.shape[1]
    prompt = (0.5 * rng.standard_normal((1, 5, d))).astype(np.float32)
    args = (prompt, np.ones((1, 5), np.int64), np.arange(5)[None])
    (_, pf), (_, ps) = fast.run(*args), slow.run(*args)
    kept = {}
    for t in range(5, 15):
        x = (0.5 * rng.standard_normal((1, 1, d))).astype(np.float32)
        step = (x, np.ones((1, t + 1), np.int64), np.array([[t]]))
        (lf, pf), (ls, ps) = fast.run(*step, pf), slow.run(*step, ps)
        np.testing.assert_allclose(lf, ls, atol=1e-5, rtol=1e-5)
        assert all(a.shape == b.shape == (1, spec["kv_heads"], t + 1, spec["head_dim"]) for a, b in zip(pf, ps))
        np.testing.assert_allclose(pf[0], ps[0], atol=1e-5, rtol=1e-5)
        kept[t + 1] = (pf, ps)
    assert fast.in_place.length == 15 and fast.in_place.bufs[0].shape[2] == 26  # 12, then doubled
    (pf, ps), x = kept[8], (0.5 * rng.standard_normal((1, 1, d))).astype(np.float32)  # branch from an older cache
    step = (x, np.ones((1, 9), np.int64), np.array([[8]]))
    np.testing.assert_allclose(fast.run(*step, pf)[0], slow.run(*step, ps)[0], atol=1e-5, rtol=1e-5)
    assert fast.in_place.length == 9
    out = os.path.join(os.path.dirname(exports("genai", True)), "kv.json")  # the A/B tool on the same export
    assert load_tool("kv_in_place").main([exports("genai", True), "--out", out, "--data", DEV, "--tokens", "4",
                                          "--rounds", "2", "--threads", "1"]) == 0
    (row,) = json.load(open(out))["by_tokens"]
    assert row["tokens"] == 4 and len(row["rounds"]) == 2 and row["in_place_ms_median"] > 0


def test_instruction_first_export_keeps_one_start_per_task_and_decodes_as_torch(tiny, tmp_path):
    from compress.export import export_model
    from compress.export.options import ExportOptions
    from compress.models.salmonn import prompt_text

    tiny.cfg.instruction_first, tiny._prompt_cache = True, {}
    try:
        before, after = prompt_text(tiny.cfg, "Say it.")
        assert before.endswith("Say it. <Speech>") and after.startswith("</Speech>")
        out = str(tmp_path / "first")
        export_model(tiny, out, ExportOptions(llm_graph="dynamo"))
        engine = lite.LiteEngine(out, threads=1)
        starts = lite.prompt_prefixes(engine.prompts, engine.bos)
        assert len(starts) == 2 and [r.shape[0] for r, _ in engine.llm.prefixes] == [len(i) for i in starts]
        rec = SessionRecorder(engine.llm.session)
        engine.llm.session = rec
        wav = load_audio(_clips()[0].path)
        for task in ("asr", "caption"):
            want = tiny.generate([wav], task, num_beams=1, ignore_eos=True, max_new_tokens=6)[0]
            rec.lengths.clear()
            assert engine.generate(wav, task, max_new_tokens=6, ignore_eos=True)[1] == want.token_ids
            n_speech = engine.speech_tokens(wav).shape[1]
            assert rec.lengths[0] == n_speech + len(engine.prompts[task]["after"])  # the instruction was kept
    finally:
        tiny.cfg.instruction_first, tiny._prompt_cache = False, {}


def test_prompt_prefixes_are_each_tasks_start_once():
    prompts = {"asr": {"before": [5, 6, 7], "after": [1]}, "caption": {"before": [5, 6, 9], "after": [2]},
               "again": {"before": [5, 6, 7], "after": [3]}}
    assert lite.prompt_prefixes(prompts, 1) == [[1, 5, 6, 7], [1, 5, 6, 9]]
    assert lite.prompt_prefixes(prompts, None) == [[5, 6, 7], [5, 6, 9]]
    assert lite.prompt_prefixes({"asr": {"before": [], "after": [1]}}, None) == []


def test_export_writes_what_the_lite_runtime_reads(exports, tiny):
    from compress.models.salmonn import prompt_ids
    from compress.outputs import read_manifest

    path = exports("dynamo", False)
    conf = json.load(open(os.path.join(path, "config.json")))
    assert set(conf["prompts"]) == set(tiny.cfg.instructions) and conf["tokenizer_size"] == len(tiny.tokenizer)
    before, after = prompt_ids(tiny.tokenizer, tiny.cfg, tiny.cfg.instructions["caption"])
    assert conf["prompts"]["caption"] == {"before": before, "after": after}
    files = read_manifest(path)["files"]
    assert lite.MEL_FILTERS in files and os.path.join("tokenizer", "tokenizer.json") in files


def test_loader_equals_compress_audio(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(3)
    path = str(tmp_path / "stereo.wav")
    sf.write(path, (0.2 * rng.standard_normal((22050 * 2, 2))).astype(np.float32), 22050)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = load_audio(path)
    got = lite.load_wav(path)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    short = str(tmp_path / "short.wav")
    sf.write(short, np.zeros(800, dtype=np.float32), 16000)
    assert lite.load_wav(short).shape == (16000,)  # padded to 1 s, as load_audio does


def test_command_prints_the_same_text_without_torch(exports):
    path = exports("dynamo", True)
    ref = lite.LiteEngine(path, threads=1)
    clips = [s.path for s in _clips()]
    want = [ref.generate(load_audio(c), "asr", max_new_tokens=6, ignore_eos=True) for c in clips]
    r = _run(path, *clips, "--max-new-tokens", "6", "--ignore-eos", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [t for t, _ in want]
    r = _run(path, clips[0], "--task", "caption", "--max-new-tokens", "4", "--ignore-eos", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["token_ids"] == ref.generate(load_audio(clips[0]), "caption", max_new_tokens=4, ignore_eos=True)[1]
    assert out["tokens"] == 4 and out["ttft_ms"] > 0 and out["tpot_ms"] > 0 and out["audio"] == clips[0]
    assert 50 < out["peak_rss_mib"] < 2000  # its own peak RSS, torch never imported


def _one_line_error(r: subprocess.CompletedProcess, *words) -> None:
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and lines[0].startswith("error: "), r.stderr
    assert all(w in lines[0] for w in words), lines[0]


def test_bad_exports_and_audio_are_one_line_errors(exports, tmp_path):
    path = exports("dynamo", False)
    clip = _clips()[0].path
    _one_line_error(_run(str(tmp_path / "nowhere"), clip), "not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(_run(str(tmp_path / "empty"), clip), "manifest.json")
    _one_line_error(_run(path, str(tmp_path / "missing.wav")), "missing.wav", "file not found")
    old = str(tmp_path / "old")  # an export written before mel_filters.npy and the prompt ids
    shutil.copytree(path, old)
    os.remove(os.path.join(old, lite.MEL_FILTERS))
    with open(os.path.join(old, "manifest.json")) as f:
        manifest = json.load(f)
    del manifest["files"][lite.MEL_FILTERS]
    with open(os.path.join(old, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    _one_line_error(_run(old, clip), "re-export", lite.MEL_FILTERS)
    r = _run(path, clip, "--max-new-tokens", "0")
    assert r.returncode == 2 and "positive integer" in r.stderr and "Traceback" not in r.stderr
