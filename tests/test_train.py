"""The demo training pipeline end to end on a handful of procedural clips (tiny sizes), and the shipped demo model."""

import json
import os

import numpy as np
import pytest
import torch

from compress.data.annotations import read_annotations, write_annotations
from compress.loaders.spec import DEMO_DIR
from demo_factory.train import settings as S
from demo_factory.train.pipeline import assemble, stage_llm, train

MAX_DEMO_BYTES = 60 * 1000 * 1000


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """8 procedural caption clips (no TTS) and 6 'ASR' entries on them with short made-up transcripts."""
    from demo_factory.data.build import build_split

    root = tmp_path_factory.mktemp("traindata")
    ann = build_split(root, "train", seed=0, n_asr=0, n_caption=8, voices=[], fmt="flac", progress=False)
    entries = json.loads(ann.read_text())["annotation"]
    words = ["a steady tone", "short beeps again", "a low rumble", "some soft noise", "a rising sweep",
             "quiet ticking sounds"]
    entries += [{"path": e["path"], "text": w, "task": "asr", "voice": "none"} for e, w in zip(entries, words)]
    out = root / "mixed.json"
    write_annotations(out, entries)
    return str(out)


def _tiny_model():
    ts = S.preset("test")
    tok, folder = stage_llm(ts, progress=False)
    model, external = assemble(ts, S.salmonn_config(ts), tok, folder)
    return ts, model, external


def test_cached_path_equals_encode_audio(tiny_data, tmp_path):
    """Training's forward (cached Whisper output + padded BEATs fbanks) equals the inference audio path."""
    from compress.audio import load_audio
    from demo_factory.train.featcache import build_cache
    from demo_factory.train.loop import cached_batch, speech_from_features

    ts, model, external = _tiny_model()
    assert external == {}  # test preset: random Whisper and LLM, stored in the artifact
    model.eval()
    samples = read_annotations(tiny_data)[:3]
    cache = build_cache(model.speech_encoder, samples, str(tmp_path / "cache"), batch=2, log=lambda *a: None)
    waves = [load_audio(s.path) for s in samples]
    with torch.no_grad():
        ref = torch.cat([model.encode_audio(**model.prepare_audio([w])) for w in waves])  # batches of one
        got = speech_from_features(model, *cached_batch(cache, [0, 1, 2], 1500))
    assert got.shape == ref.shape == (3, 1500 // model.cfg.window_stride, model.llm_base().config.hidden_size)
    # features are cached as float16: compare with a tolerance above that rounding
    assert torch.allclose(got, ref, atol=2e-2, rtol=1e-2), (got - ref).abs().max()
    # a second build finds every clip and encodes nothing
    msgs = []
    build_cache(model.speech_encoder, samples, str(tmp_path / "cache"), log=msgs.append)
    assert msgs and "3 of 3 clips already cached" in msgs[0]


def test_real_length_cache_equals_real_length_inference(tiny_data, tmp_path):
    """With real_length, each clip's cached encoder output and its windows are what the model's real-length
    inference of that clip gives; a batch of clips of different lengths keeps each clip's own windows."""
    from compress.audio import load_audio
    from compress.models.salmonn import answer_ids
    from demo_factory.train.featcache import build_cache
    from demo_factory.train.loop import cached_batch, clip_windows, keep_frames, llm_inputs, speech_from_features

    ts, model, _ = _tiny_model()
    model.eval()
    model.real_length = True
    samples = read_annotations(tiny_data)[:3]
    kernel, stride = model.cfg.window_kernel, model.cfg.window_stride
    cache = build_cache(model.speech_encoder, samples, str(tmp_path / "c"), real_length=(kernel, stride),
                        log=lambda *a: None)
    assert cache.real_length and "-real" in cache.folder
    frames = keep_frames(model, cache, [0, 1, 2], np.random.default_rng(0), 1.0)
    assert frames == max(cache.whisper_frames(i) for i in range(3)) < 1500
    with torch.no_grad():
        got = speech_from_features(model, *cached_batch(cache, [0, 1, 2], frames))
        for i, s in enumerate(samples):
            ref = model.encode_audio(**model.prepare_audio([load_audio(s.path)]))  # one clip, real length
            assert ref.shape[1] == clip_windows(model, cache, i)
            assert torch.allclose(got[i, : ref.shape[1]], ref[0], atol=2e-2, rtol=1e-2)
    tok = model.tokenizer
    targets = [answer_ids(tok, "a b") for _ in range(3)]
    own = [clip_windows(model, cache, i) for i in range(3)]
    _, mask, _ = llm_inputs(model, got, ["asr"] * 3, targets, own)
    full, _, _ = llm_inputs(model, got, ["asr"] * 3, targets)
    assert mask.sum(1).tolist() == [full.shape[1] - (got.shape[1] - w) for w in own]


def test_answer_logits_equal_the_full_forward_at_answer_positions(tiny_data):
    from compress.models.salmonn import answer_ids
    from demo_factory.train.loop import answer_logits, llm_inputs

    ts, model, _ = _tiny_model()
    model.eval()
    tok = model.tokenizer
    speech = torch.randn(2, 5, model.llm_base().config.hidden_size)
    targets = [answer_ids(tok, "a low rumble"), answer_ids(tok, "beeps")]
    embeds, mask, (r, c, labels) = llm_inputs(model, speech, ["asr", "caption"], targets)
    assert labels.tolist() == targets[0] + targets[1]
    with torch.no_grad():
        full = model.llama_model(inputs_embeds=embeds, attention_mask=mask).logits
        got = answer_logits(model, embeds, mask, r, c)
    assert torch.allclose(got, full[r, c], atol=1e-5)
    # position c predicts labels: the token at c + 1 is the label (teacher forcing)
    emb = model.llama_model.get_input_embeddings()
    first = int(c[1])
    assert torch.allclose(embeds[0, first + 1], emb(torch.tensor(targets[0][1])))


def test_ctc_head_pulls_free_tokens_onto_the_target_embeddings():
    """CTC through the embedding-distance head: free speech tokens learn to sit on the embeddings of the target
    pieces (greedy read-out = the targets), and the loss falls; the blank is class 0."""
    from demo_factory.train.loop import CtcHead, ctc_loss

    torch.manual_seed(0)
    table = torch.randn(50, 16)

    head = CtcHead(table)
    speech = torch.nn.Parameter(torch.randn(2, 6, 16) * 0.1)
    targets = [[5, 9, 12, 2], [7, 7, 2]]  # last id (EOS) is dropped; a repeat needs a blank between
    opt = torch.optim.Adam([speech, *head.parameters()], lr=0.05)
    first = None
    for _ in range(300):
        loss = ctc_loss(head, table, speech, [6, 5], targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    with torch.no_grad():
        best = head(speech, table).argmax(-1)  # class 0 = blank, v + 1 = token v
    decoded = []
    for row, n in zip(best.tolist(), [6, 5]):
        out, prev = [], 0
        for c in row[:n]:
            if c != prev and c != 0:
                out.append(c - 1)
            prev = c
        decoded.append(out)
    assert decoded == [[5, 9, 12], [7, 7]]


def test_ctc_over_the_answers_pieces_is_the_full_ctc_renormalised_over_them():
    """joint_ctc_vocab "answers": the CTC softmax over blank + the pieces the answers use equals the full-vocabulary
    head's logits with every other piece masked out; targets map to rows of the restricted table."""
    import torch.nn.functional as F

    from demo_factory.train.loop import CtcHead, answer_vocab, ctc_loss, restrict_targets

    torch.manual_seed(0)
    weight = F.normalize(torch.randn(40, 8), dim=1)  # rows of one norm: the head's temperature (its mean squared
    head = CtcHead(weight)  # norm of the table it compares with) is then the same over any subset of them
    with torch.no_grad():
        head.log_scale.fill_(0.7)
        head.blank.copy_(F.normalize(torch.randn(8), dim=0))
    speech = torch.randn(2, 7, 8)
    answers = [[31, 4, 17, 2], [17, 17, 9, 2]]  # EOS (2) last, dropped
    table, index = answer_vocab(weight, answers)
    assert table.shape == (4, 8) and sorted(index) == [4, 9, 17, 31]
    assert restrict_targets(answers, index) == [[index[31], index[4], index[17], -1], [index[17]] * 2 + [index[9], -1]]
    got = ctc_loss(head, table, speech, [7, 6], restrict_targets(answers, index))

    logits = head(speech, weight)
    keep = torch.zeros(41, dtype=torch.bool)
    keep[0] = True
    keep[[v + 1 for v in index]] = True
    logp = F.log_softmax(logits.masked_fill(~keep, float("-inf")).float(), -1)
    flat = torch.tensor([t + 1 for a in answers for t in a[:-1]])
    want = F.ctc_loss(logp.transpose(0, 1), flat, torch.tensor([7, 6]), torch.tensor([3, 3]), blank=0)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, ctc_loss(head, weight, speech, [7, 6], answers), atol=1e-3)


def test_batches_are_a_function_of_the_step():
    from demo_factory.train.loop import batch_at

    a = [batch_at(s, 10, 4, seed=0) for s in range(6)]
    assert a == [batch_at(s, 10, 4, seed=0) for s in range(6)]
    assert sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no repeats inside an epoch
    assert a[:2] != [batch_at(s, 10, 4, seed=1) for s in range(2)]


def test_length_buckets_keep_epochs_whole_and_batch_similar_lengths():
    from demo_factory.train.loop import batch_at

    rng = np.random.default_rng(0)
    lengths = [int(v) for v in rng.integers(5, 60, size=203)]
    pool = list(range(203))
    plain = [batch_at(s, pool, 8, seed=0) for s in range(25)]
    bucketed = [batch_at(s, pool, 8, seed=0, lengths=lengths, bucket=8) for s in range(25)]
    seen = [i for b in bucketed for i in b]
    assert len(seen) == len(set(seen)) == 200  # one epoch: 25 batches of 8, no clip twice
    assert bucketed == [batch_at(s, pool, 8, seed=0, lengths=lengths, bucket=8) for s in range(25)]

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(bucketed) < 0.25 * padding(plain)
    assert batch_at(25, pool, 8, seed=0, lengths=lengths, bucket=8) != bucketed[0]  # next epoch reshuffled


def test_two_queries_per_window_give_two_speech_tokens_per_window(tiny_data, tmp_path):
    from compress.loaders import load_model

    ts = S.preset("test").replace(queries=2, real_length=True, steps=3, front_warmup_steps=2, ctc_weight=0.5,
                                  joint_ctc_vocab="answers")
    s = train(ts, str(tmp_path / "a"), data_dir=str(tmp_path / "w"), annotations=tiny_data, progress=False,
              log=lambda *a: None)
    assert s["train"]["steps"] == 3 and np.isfinite(s["train"]["final_ctc_loss"])
    model = load_model(str(tmp_path / "a"))
    assert model.cfg.num_speech_query_token == 2
    from types import SimpleNamespace

    from demo_factory.train.loop import clip_tokens, clip_windows

    cache = SimpleNamespace(real_length=True, whisper_frames=lambda i: 95)
    assert clip_tokens(model, cache, 0) == 2 * clip_windows(model, cache, 0) > 0
    assert model.generate([np.zeros(16000, dtype=np.float32)], "asr", max_new_tokens=2)  # runs end to end

    # the front's CTC read-out from the run's state, on held-out and training clips
    from demo_factory.train.pipeline import run_key
    from demo_factory.train.readout import main as readout

    state = tmp_path / "w" / f"run-{run_key(ts)}" / "train-state.pt"
    out = tmp_path / "readout.json"
    assert readout(["--model", str(tmp_path / "a"), "--state", str(state), "--data", tiny_data, "--train-data",
                    tiny_data, "--limit", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["held_out"]["clips"] == r["train"]["clips"] == 2
    assert r["held_out"]["front_readout_wer"] >= 0 and r["held_out"]["llm_wer"] >= 0
    assert [x["reference"] for x in r["held_out"]["samples"]] == [x.text for x in read_annotations(tiny_data)
                                                                  if x.task == "asr"][:2]
    again = ["--model", str(tmp_path / "a"), "--state", str(state), "--data", tiny_data, "--no-llm", "--against",
             str(out)]
    assert readout(again + ["--limit", "2", "--out", str(tmp_path / "b.json")]) == 0
    vs = json.loads((tmp_path / "b.json").read_text())["against"]["held_out"]
    assert vs["delta"] == vs["low"] == vs["high"] == 0.0  # the same front read again: no difference
    assert readout(again + ["--limit", "1", "--out", str(tmp_path / "x.json")]) == 2  # other clips: refused
    assert readout(["--model", str(tmp_path / "a"), "--state", str(state.parent / "front-warmup.pt"), "--load-front",
                    "--no-llm", "--data", tiny_data, "--limit", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["held_out"]["clips"] == 1 and "llm_wer" not in json.loads(out.read_text())[
        "held_out"]
    # a warm-up of other settings, read through the model those settings build
    warm = ["--state", str(state.parent / "front-warmup.pt"), "--no-llm", "--data", tiny_data, "--limit", "1"]
    sets = ["--preset", "test", "--set", "queries=2", "--set", "real_length=true"]
    assert readout(sets + warm + ["--load-front", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["settings"] == ["queries=2", "real_length=true"] and r["held_out"]["clips"] == 1
    assert readout(sets + warm + ["--out", str(tmp_path / "x.json")]) == 2  # an untrained front: refused
    one = ["--preset", "test", "--set", "queries=1", "--set", "real_length=true", "--load-front"]
    assert readout(one + warm + ["--out", str(tmp_path / "x.json")]) == 2  # the state's 2 queries: refused
    both = ["--model", str(tmp_path / "a"), "--load-front"]
    assert readout(sets + warm + both + ["--out", str(tmp_path / "x.json")]) == 2  # --model and --set
    torch.save({"params": {}}, tmp_path / "empty.pt")
    assert readout(["--model", str(tmp_path / "a"), "--state", str(tmp_path / "empty.pt"), "--data", tiny_data,
                    "--out", str(tmp_path / "x.json")]) == 2  # no CTC head: a clear error
    assert not (tmp_path / "x.json").exists()


def test_time_mask_and_qformer_dropout(tiny_data, tmp_path):
    from demo_factory.train.loop import time_mask

    assert time_mask(4, 100, 0.0, 6) is None
    torch.manual_seed(0)
    m = time_mask(64, 200, 0.1, 6)
    assert m.shape == (64, 200) and m.dtype == torch.bool
    assert 0.06 < m.float().mean().item() < 0.12  # overlapping spans hide a little less than the share
    torch.manual_seed(0)
    assert torch.equal(m, time_mask(64, 200, 0.1, 6))
    longest = max(len(r) for r in "".join(map(str, m[0].int().tolist())).split("0"))
    assert 1 <= longest <= 12  # spans of at most 6 frames (two may touch)
    ts = S.preset("test").replace(steps=3, front_warmup_steps=2, ctc_weight=0.5)
    losses = []
    for i, kw in enumerate(({}, {"time_mask": 0.3}, {"qformer_dropout": 0.3})):
        s = train(ts.replace(**kw), str(tmp_path / f"a{i}"), data_dir=str(tmp_path / "w"),
                  annotations=tiny_data, progress=False, log=lambda *a: None)
        losses.append(s["train"]["final_loss"])
    assert np.isfinite(losses).all() and losses[0] != losses[1] and losses[0] != losses[2]
    from compress.loaders import load_model

    assert load_model(str(tmp_path / "a2")).cfg.qformer.hidden_dropout_prob == 0.3  # recorded; inert at inference


def test_caption_clips_repeat_per_epoch_and_speechless_captions_get_ctc():
    from compress.data.annotations import Sample
    from demo_factory.train.loop import batch_at, ctc_clips, epoch_pool

    samples = [Sample("a", "a.ogg", "asr", "hello"), Sample("b", "b.ogg", "caption", "A beep", extra={"kind": "beeps"}),
               Sample("c", "c.ogg", "caption", "A man talks", extra={"kind": "speech_noise"}),
               Sample("d", "d.ogg", "caption", "Silence")]  # no kind: treated as possibly speech
    pool = epoch_pool(samples, 3)
    assert sorted(pool) == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    epoch = [i for s in range(len(pool) // 2) for i in batch_at(s, pool, 2, seed=0)]
    assert sorted(epoch) == sorted(pool)  # one epoch sees every caption clip three times, every ASR clip once
    assert ctc_clips(samples, S.preset("demo")) == [True, True, False, False]
    assert ctc_clips(samples, S.preset("demo").replace(caption_ctc=False)) == [True, False, False, False]


def test_pipeline_trains_resumes_and_writes_a_loadable_artifact(tiny_data, tmp_path):
    from safetensors import safe_open

    from compress.loaders import load_model

    out = tmp_path / "artifact"
    ts = S.preset("test")
    s = train(ts, str(out), data_dir=str(tmp_path / "work"), annotations=tiny_data, progress=False,
              eval_data=tiny_data, eval_limit=2, log=lambda *a: None)
    t = s["train"]
    assert t["steps"] == ts.steps and t["final_loss"] < t["first_loss"], t
    assert {"data", "llm", "features", "train", "save"} <= set(s["stage_seconds"])
    assert {"wer", "cider_d"} <= set(s["eval"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["seed"] == 0 and manifest["training"]["train"]["steps"] == ts.steps
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert any("lora_B" in k for k in keys) and any(k.startswith("speech_Qformer.") for k in keys)
    model = load_model(str(out))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    lora = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert any(model.get_parameter(n).abs().sum() > 0 for n in lora)  # LoRA was trained
    assert model.cfg.instructions["asr"] == "Recognize the speech and give me the transcription."
    assert not model.real_length  # trained on 30 s features: no runtime change recorded
    # deterministic from the seed: another data folder gives the same losses
    again = train(ts, str(tmp_path / "again"), data_dir=str(tmp_path / "work2"), annotations=tiny_data,
                  progress=False, log=lambda *a: None)
    assert again["train"]["curve"] == t["curve"] and again["train"]["final_loss"] == t["final_loss"]


def test_real_length_training_ships_a_real_length_model(tiny_data, tmp_path):
    from compress.loaders import load_model

    ts = S.preset("test").replace(real_length=True, steps=3, front_warmup_steps=2)
    s = train(ts, str(tmp_path / "a"), data_dir=str(tmp_path / "w"), annotations=tiny_data, progress=False,
              log=lambda *a: None)
    assert s["train"]["steps"] == 3
    assert any("-real" in d for d in os.listdir(tmp_path / "w" / "features"))
    model = load_model(str(tmp_path / "a"))
    assert model.real_length and model.cfg.extra["runtime"]["real_length"] is True


def test_whisper_layer_mix_trains_caches_and_ships(tiny_data, tmp_path):
    """whisper_layers: the cache keeps the stacked hidden states, training's path equals real-length inference,
    the mix weights train and ship, and a bad index list is refused with the valid range."""
    from compress.audio import load_audio
    from compress.errors import ConfigError
    from compress.export import export_model
    from compress.loaders import load_model
    from demo_factory.train.featcache import build_cache
    from demo_factory.train.loop import cached_batch, speech_from_features

    ts = S.preset("test").replace(real_length=True, steps=3, front_warmup_steps=2, whisper_layers=[0, 1, 2])
    tok, folder = stage_llm(ts, progress=False)
    model, _ = assemble(ts, S.salmonn_config(ts), tok, folder)
    model.eval()
    model.real_length = True
    with torch.no_grad():
        model.speech_layer_weights.copy_(torch.tensor([0.5, -1.0, 1.5]))
    samples = read_annotations(tiny_data)[:2]
    cache = build_cache(model.speech_encoder, samples, str(tmp_path / "c"),
                        real_length=(model.cfg.window_kernel, model.cfg.window_stride), layers=model.whisper_layers,
                        log=lambda *a: None)
    assert "-layers0-1-2" in cache.folder and cache.whisper(0).shape[0] == 3
    frames = max(cache.whisper_frames(i) for i in range(2))
    with torch.no_grad():
        got = speech_from_features(model, *cached_batch(cache, [0, 1], frames))
        for i, s in enumerate(samples):
            ref = model.encode_audio(**model.prepare_audio([load_audio(s.path)]))
            assert torch.allclose(got[i, : ref.shape[1]], ref[0], atol=2e-2, rtol=1e-2)

    s = train(ts, str(tmp_path / "a"), data_dir=str(tmp_path / "w"), annotations=tiny_data, progress=False,
              log=lambda *a: None)
    assert s["train"]["steps"] == 3
    shipped = load_model(str(tmp_path / "a"))
    assert shipped.whisper_layers == [0, 1, 2]
    assert not torch.equal(shipped.speech_layer_weights.detach(), torch.zeros(3))  # trained, stored, loaded
    export_model(shipped, str(tmp_path / "onnx"))  # the exported front mixes the layers as the model does
    ort_model = load_model(str(tmp_path / "onnx"))
    wav = [load_audio(samples[0].path)]
    with torch.no_grad():
        ref = shipped.encode_audio(**shipped.prepare_audio(wav))
    got = ort_model.encode_audio(**ort_model.prepare_audio(wav))
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-3, rtol=1e-3)
    for bad in ([], [0, 0], [7], ["1"]):
        with pytest.raises(ConfigError, match="whisper_layers must be distinct hidden-state indices in 0..2"):
            assemble(ts.replace(whisper_layers=bad), S.salmonn_config(ts.replace(whisper_layers=bad)), tok, folder)


def test_a_killed_run_resumes_to_the_same_weights(tiny_data, tmp_path):
    """Stopped by max_minutes after a few steps (as a kill after a checkpoint), the rerun finishes the schedule
    and its weights equal an uninterrupted run's."""
    from compress.errors import ConfigError
    from demo_factory.train.loop import CKPT
    from demo_factory.train.pipeline import run_key

    ts = S.preset("test")
    whole = train(ts, str(tmp_path / "whole"), data_dir=str(tmp_path / "a"), annotations=tiny_data,
                  progress=False, log=lambda *a: None)
    cut = ts.replace(max_minutes=0.0)  # stops before its first step, after writing a checkpoint
    first = train(cut, str(tmp_path / "cut"), data_dir=str(tmp_path / "b"), annotations=tiny_data,
                  progress=False, log=lambda *a: None)
    assert first["train"]["steps"] == 0 and first["train"]["stopped"]
    assert run_key(cut) == run_key(ts)  # max_minutes is not part of the run's identity
    # a setting added later keeps the folders of runs made before it while at its default: the shipped artifact's
    # settings with 2 queries and 1,400 steps are the "q2t" run of benchmarks/README.md, made in run-852fa3715060
    with open(os.path.join(DEMO_DIR, "manifest.json")) as f:
        q2t = S.DemoSettings(**json.load(f)["training"]["config"]).replace(queries=2, steps=1400, max_minutes=80)
    assert run_key(q2t) == "852fa3715060" != run_key(q2t.replace(joint_ctc_vocab="answers"))
    with pytest.raises(ConfigError, match="joint_ctc_vocab 'some' is not one of"):
        ts.replace(joint_ctc_vocab="some")
    again = train(ts, str(tmp_path / "cut"), data_dir=str(tmp_path / "b"), annotations=tiny_data,
                  progress=False, log=lambda *a: None)
    assert again["invocations"] == 2 and again["train"]["steps"] == ts.steps
    a = torch.load(tmp_path / "a" / f"run-{run_key(ts)}" / CKPT, weights_only=True)["params"]
    b = torch.load(tmp_path / "b" / f"run-{run_key(ts)}" / CKPT, weights_only=True)["params"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole["train"]["final_loss"] == again["train"]["final_loss"]


def test_training_options_are_validated():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown training option"):
        S.preset("test").replace(no_such_option=1)
    with pytest.raises(ConfigError, match="steps"):
        S.preset("test").replace(steps=0)
    with pytest.raises(ConfigError, match="valid"):
        S.preset("nope")
    with pytest.raises(ConfigError, match="time_mask"):
        S.preset("test").replace(time_mask=1.0)


def test_beats_ablation_variants_change_only_the_beats_branch():
    from bundle import tone
    from compress.loaders import load_model
    from demo_factory.train.ablation import beats_variant

    model = load_model("tiny")
    clip = [tone(2.0)]
    with torch.no_grad():
        ref = model.encode_audio(**model.prepare_audio(clip))
        outs = {}
        for v in ("silence", "zero"):
            with beats_variant(model, v):
                outs[v] = model.encode_audio(**model.prepare_audio(clip))
        again = model.encode_audio(**model.prepare_audio(clip))
    assert torch.equal(ref, again)  # patches removed
    assert not torch.allclose(ref, outs["silence"]) and not torch.allclose(ref, outs["zero"])
    assert not torch.allclose(outs["silence"], outs["zero"])


def test_whisper_drop_leaves_beats_alone(tiny_data, tmp_path):
    from demo_factory.train.featcache import build_cache
    from demo_factory.train.loop import cached_batch, speech_from_features

    ts, model, _ = _tiny_model()
    model.eval()
    samples = read_annotations(tiny_data)[:2]
    cache = build_cache(model.speech_encoder, samples, str(tmp_path / "c"), log=lambda *a: None)
    batch = cached_batch(cache, [0, 1], 1500)
    with torch.no_grad():
        on = speech_from_features(model, *batch)
        off = speech_from_features(model, *batch, whisper_off=[True, False])
        zero_wh = speech_from_features(model, torch.zeros_like(batch[0]), batch[1], batch[2],
                                       whisper_off=[True, True])
    assert torch.equal(on[1], off[1]) and not torch.allclose(on[0], off[0])
    assert torch.allclose(off[0], zero_wh[0])  # whatever Whisper said, a dropped clip's tokens are BEATs'


def _demo_present() -> bool:
    return os.path.isfile(os.path.join(DEMO_DIR, "manifest.json"))


@pytest.mark.skipif(not _demo_present(), reason="the demo artifact is not built in this checkout")
def test_demo_artifact_size_and_manifest():
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DEMO_DIR) for f in fs)
    assert total <= MAX_DEMO_BYTES, total
    m = json.loads(open(os.path.join(DEMO_DIR, "manifest.json")).read())
    assert m["training"]["seed"] == 0 and "stage_seconds" in m["training"]


@pytest.mark.skipif(not _demo_present(), reason="the demo artifact is not built in this checkout")
def test_demo_loads_and_transcribes_a_dev_clip():
    from compress.audio import load_audio
    from compress.loaders import load_model

    model = load_model("demo")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.llm_base().config.model_type == "llama" and model.beats is not None
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    samples = read_annotations(os.path.join(here, "benchmarks", "data", "dev.json"))
    s = next(x for x in samples if x.task == "asr")
    out = model.generate([load_audio(s.path)], "asr", num_beams=1, max_new_tokens=40)
    assert len(out[0].text.split()) >= 2
    np.testing.assert_equal(len(out[0].token_ids) > 0, True)


@pytest.mark.skipif(not _demo_present(), reason="the demo artifact is not built in this checkout")
def test_demo_llm_without_lora_and_audio_answers_as_smollm2():
    """The artifact's LLM is the real SmolLM2: LoRA off, no audio, greedy answers equal the converted model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from compress.loaders import load_model
    from compress.models.sources import smollm2_dir

    model = load_model("demo")
    if "llm" not in (model.manifest.get("frozen_parts") or {}):
        pytest.skip("the shipped demo model is not built on SmolLM2")
    folder = smollm2_dir(progress=False)
    ref = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    answers = []
    for q in ("What is the capital of France?", "Repeat this sentence exactly: the cat sat on the mat.",
              "Name a primary colour."):
        text = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            want = ref.generate(ids, max_new_tokens=20, do_sample=False)
            with model.llama_model.disable_adapter():
                got = model.llm_base().generate(ids, max_new_tokens=20, do_sample=False)
        assert torch.equal(got, want), (tok.decode(got[0]), tok.decode(want[0]))
        answers.append(tok.decode(got[0, ids.shape[1]:], skip_special_tokens=True))
    assert "Paris" in answers[0], answers
