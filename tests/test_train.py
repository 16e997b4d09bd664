"""The demo training pipeline end to end on a handful of procedural clips (tiny sizes), and the shipped demo model."""

import json
import os

import numpy as np
import pytest
import torch

from compress.data.annotations import read_annotations, write_annotations
from compress.loaders.spec import DEMO_DIR
from compress.train import recipe
from compress.train.demo import assemble, n_speech_tokens, train
from compress.train.text import build_corpus, target_ids, train_tokenizer

MAX_DEMO_BYTES = 60 * 1000 * 1000


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """8 procedural caption clips (no TTS) and 6 'ASR' entries on them with short made-up transcripts."""
    from compress.data.build import build_split

    root = tmp_path_factory.mktemp("traindata")
    ann = build_split(root, "train", seed=0, n_asr=0, n_caption=8, voices=[], fmt="flac", progress=False)
    entries = json.loads(ann.read_text())["annotation"]
    words = ["a steady tone", "short beeps again", "a low rumble", "some soft noise", "a rising sweep",
             "quiet ticking sounds"]
    entries += [{"path": e["path"], "text": w, "task": "asr", "voice": "none"} for e, w in zip(entries, words)]
    out = root / "mixed.json"
    write_annotations(out, entries)
    return str(out)


def test_tokenizer_round_trip_and_specials(tiny_data):
    samples = read_annotations(tiny_data)
    cfg = recipe.salmonn_config(recipe.preset("test"), 300, bos=1, eos=2, pad=0)
    tok = train_tokenizer(build_corpus(samples), cfg, 300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    ids = target_ids(tok, "a steady tone")
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).strip() == "a steady tone"


def test_cached_path_equals_encode_audio(tiny_data):
    """Training's forward (cached Whisper output + padded BEATs fbanks) equals the inference audio path."""
    from compress.audio import load_audio
    from compress.models.build import llm_from_config
    from compress.train.audio_stage import pad_fbanks, speech_from_features
    from compress.train.features import clip_fbank

    tc = recipe.preset("test")
    samples = read_annotations(tiny_data)[:3]
    cfg0 = recipe.salmonn_config(tc, 300, bos=1, eos=2, pad=0)
    tok = train_tokenizer(build_corpus(samples), cfg0, 300)
    cfg = recipe.salmonn_config(tc, len(tok), bos=1, eos=2, pad=0)
    model, _ = assemble(tc, cfg, tok, llm_from_config(cfg.llm))
    model.eval()
    waves = [load_audio(s.path) for s in samples]
    with torch.no_grad():
        ref = torch.cat([model.encode_audio(**model.prepare_audio([w])) for w in waves])  # batches of one
        wh = torch.cat([model.speech_encoder(model.prepare_audio([w])["spectrogram"]).last_hidden_state
                        for w in waves])
        fb, pad = pad_fbanks([clip_fbank(w).astype(np.float32) for w in waves])
        got = speech_from_features(model, wh, fb, pad)
    assert got.shape == ref.shape == (3, n_speech_tokens(cfg), tc.llm_hidden)
    # fbanks are cached as float16: compare with a tolerance above that rounding
    assert torch.allclose(got, ref, atol=2e-2, rtol=1e-2), (got - ref).abs().max()


def test_pipeline_trains_and_writes_a_loadable_artifact(tiny_data, tmp_path):
    from compress.loaders import load_model
    from safetensors import safe_open

    out = tmp_path / "artifact"
    tc = recipe.preset("test")
    s = train(tc, str(out), data_dir=str(tmp_path / "work"), annotations=tiny_data, progress=False,
              eval_data=tiny_data, eval_limit=2, log=lambda *a: None)
    for stage in ("lm", "audio"):
        curve = s[stage]["loss_curve"]
        assert curve[-1] < curve[0], (stage, curve)
    assert set(s["stage_seconds"]) == {"data", "tokenizer", "lm", "features", "audio", "save"}
    assert {"wer", "cider_d"} <= set(s["eval"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["seed"] == 0 and manifest["training"]["audio"]["steps"] > 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in dtypes
    model = load_model(str(out))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    lora = [n for n, p in model.named_parameters() if "lora_B" in n]
    assert lora and any(model.get_parameter(n).abs().sum() > 0 for n in lora)  # LoRA was trained
    assert model.cfg.instructions["asr"] == "Recognize the speech and give me the transcription."
    from compress.audio import load_audio

    sample = read_annotations(tiny_data)[0]
    outs = model.generate([load_audio(sample.path)], "caption", num_beams=1, max_new_tokens=6)
    assert isinstance(outs[0].text, str)
    # reproducible from the seed: a second run (LM retrained) gives the same weights ...
    s2 = train(tc, str(tmp_path / "again"), data_dir=str(tmp_path / "work"), annotations=tiny_data,
               progress=False, reuse_lm=False, log=lambda *a: None)
    assert "reused_from" not in s2["lm"] and s2["lm"]["loss_curve"] == s["lm"]["loss_curve"]
    assert s2["audio"]["loss_curve"] == s["audio"]["loss_curve"]
    # ... and so does one that takes the LM from the first run's cache in the data folder
    s3 = train(tc, str(tmp_path / "third"), data_dir=str(tmp_path / "work"), annotations=tiny_data,
               progress=False, log=lambda *a: None)
    assert s3["lm"]["reused_from"].startswith(str(tmp_path / "work" / "lm"))
    assert s3["audio"]["loss_curve"] == s["audio"]["loss_curve"]
    other = train(tc.replace(lm_epochs=2), str(tmp_path / "fourth"), data_dir=str(tmp_path / "work"),
                  annotations=tiny_data, progress=False, log=lambda *a: None)
    assert "reused_from" not in other["lm"]  # another LM option, another cache entry


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


def test_beats_ablation_variants_change_only_the_beats_branch():
    from bundle import tone
    from compress.loaders import load_model
    from compress.train.ablation import beats_variant

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


def _tiny_model(tiny_data, n=4):
    from compress.models.build import llm_from_config

    tc = recipe.preset("test")
    samples = read_annotations(tiny_data)
    cfg0 = recipe.salmonn_config(tc, 300, bos=1, eos=2, pad=0)
    corpus = build_corpus(samples)
    tok = train_tokenizer(corpus, cfg0, 300)
    cfg = recipe.salmonn_config(tc, len(tok), bos=1, eos=2, pad=0)
    model, _ = assemble(tc, cfg, tok, llm_from_config(cfg.llm))
    return tc, cfg, tok, corpus, samples, model


def test_training_options_are_validated():
    from compress.errors import ConfigError

    with pytest.raises(ConfigError, match="proj_init"):
        recipe.preset("test").replace(proj_init="zeros")
    with pytest.raises(ConfigError, match="ctc_head"):
        recipe.preset("test").replace(ctc_head="cosine")
    with pytest.raises(ConfigError, match="unknown training option"):
        recipe.preset("test").replace(not_an_option=1)


def test_short_slot_keeps_every_token_and_a_bounded_tail():
    from compress.train.text import FILLER, short_slot

    rng = np.random.default_rng(0)
    slot = [FILLER, 7, FILLER, 9, 11] + [FILLER] * 100
    for _ in range(20):
        cut = short_slot(slot, rng, 0.0)
        assert cut[:5] == slot[:5] and 5 + 2 <= len(cut) <= 5 + 24
        assert set(cut[5:]) == {FILLER}
    assert short_slot(slot, rng, 1.0) == slot


def test_lm_sequences_score_only_the_answer_of_prompt_layouts(tiny_data):
    from compress.train.text import BOS, EOS, FILLER, lm_sequences, target_ids

    tc, cfg, tok, corpus, _, _ = _tiny_model(tiny_data)
    rng = np.random.default_rng(0)
    seqs = lm_sequences(corpus, tok, cfg, rng, prompted_share=0.2, slot_share=0.5, n_slots=n_speech_tokens(cfg),
                        copy_share=0.5)
    answers = {tuple(target_ids(tok, t)) for _, t in corpus.items()}
    n_items = len(corpus.items())
    assert len(seqs) == n_items + round(0.5 * n_items)
    kinds = {"plain": 0, "prompt": 0, "copy": 0}
    for ids, start in seqs:
        assert ids[0] == BOS and ids[-1] == EOS
        if start == 1:  # plain text: every token scored
            assert tuple(ids[1:]) in answers
            kinds["plain"] += 1
        else:  # prompt layouts: the scored part is the answer alone, after the prompt
            assert ids[start - 1] != EOS and 1 < start < len(ids)
            kinds["copy" if tuple(ids[start:]) not in answers else "prompt"] += 1
            if tuple(ids[start:]) not in answers:  # a copy item: its pieces are in the slot, in order
                slot = [t for t in ids[:start] if t != FILLER]
                it = iter(slot)
                assert all(t in it for t in ids[start:-1])
    assert kinds["plain"] and kinds["prompt"] and kinds["copy"] == round(0.5 * n_items)
    unscored = lm_sequences(corpus, tok, cfg, np.random.default_rng(0), 0.2, 0.5, n_speech_tokens(cfg),
                            copy_share=0.5, answer_only=False)
    assert all(start == 1 for _, start in unscored)


def test_copy_phase_comes_first_and_is_counted(tiny_data):
    from compress.models.build import llm_from_config
    from compress.models.salmonn import prompt_ids
    from compress.train.text import EOS, FILLER, copy_sequences, pretrain_lm

    tc, cfg, tok, corpus, _, _ = _tiny_model(tiny_data)
    before, after = prompt_ids(tok, cfg, cfg.instructions["asr"])
    for ids, start in copy_sequences(tok, cfg, np.random.default_rng(0), 20, n_speech_tokens(cfg), 0.0):
        assert ids[1:1 + len(before)] == before and ids[start - len(after):start] == after
        answer = ids[start:]
        assert answer[-1] == EOS and 4 <= len(answer) - 1 <= 20
        it = iter(t for t in ids[1 + len(before):start - len(after)] if t != FILLER)
        assert all(t in it for t in answer[:-1])  # the slot holds the answer's pieces, in order
    lm = llm_from_config(cfg.llm)
    rep = pretrain_lm(lm, corpus, tok, cfg, epochs=1, batch=8, lr=1e-3, warmup=1, weight_decay=0.0,
                      prompted_share=0.1, seed=0, slot_share=0.5, n_slots=n_speech_tokens(cfg), copy_steps=3)
    per_epoch = -(-len(corpus.items()) // 8)
    assert rep["copy_steps"] == 3 and rep["steps"] == 3 + per_epoch


def test_lm_loss_scores_from_start():
    from compress.train.text import lm_loss

    class Fixed(torch.nn.Module):  # logits favour token 5 everywhere
        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(input_ids.shape + (8,))
            logits[..., 5] = 4.0
            return type("O", (), {"logits": logits})()

    ids = torch.tensor([[1, 5, 5, 3, 3]])
    mask = torch.ones_like(ids)
    lp = torch.log_softmax(torch.tensor([0.0] * 5 + [4.0] + [0.0] * 2), 0)
    assert torch.isclose(lm_loss(Fixed(), ids, mask, [3]), -lp[3])  # tokens 3, 3 scored
    assert torch.isclose(lm_loss(Fixed(), ids, mask), -(2 * lp[5] + 2 * lp[3]) / 4)


def test_caption_ctc_targets_are_content_words(tiny_data):
    from compress.train.audio_stage import epoch_plan
    from compress.train.text import content_pieces

    tc, cfg, tok, corpus, samples, _ = _tiny_model(tiny_data)
    assert content_pieces(tok, "A siren, then the rain") == \
        tok(" siren rain", add_special_tokens=False)["input_ids"]
    for ctc_caption in (True, False):
        for idx, tasks, tgts, ctc in epoch_plan(samples, tok, np.random.default_rng(0), 4, ctc_caption):
            for task, tgt, c in zip(tasks, tgts, ctc):
                if task == "asr":
                    assert c == tgt
                elif ctc_caption:
                    text = tok.decode(tgt[:-1]).strip()
                    assert c == content_pieces(tok, text) + [tok.eos_token_id]
                else:
                    assert c is None


def test_epoch_takes_all_pool_clips_and_some_chain_clips():
    from compress.data.annotations import Sample
    from compress.train.audio_stage import epoch_ids, epoch_size
    from compress.train.text import build_corpus

    samples = [Sample(f"p{i}", f"/p{i}", "asr", f"pool {i}") for i in range(5)]
    samples += [Sample(f"c{i}", f"/c{i}", "asr", f"chain {i}", extra={"sentence_source": "chain"}) for i in range(10)]
    samples += [Sample("k", "/k", "caption", "a beep", ["a beep", "one beep", "a short beep"])]
    assert build_corpus(samples).asr == [f"pool {i}" for i in range(5)]  # the LM learns pool sentences only
    rng = np.random.default_rng(0)
    assert sorted(epoch_ids(samples, rng)) == list(range(16)) and epoch_size(samples) == 16
    epochs = [epoch_ids(samples, rng, 3) for _ in range(4)]
    assert epoch_size(samples, 3) == 9 and all(len(e) == 9 == len(set(e)) for e in epochs)
    assert all({0, 1, 2, 3, 4, 15} <= set(e.tolist()) for e in epochs)  # every pool and caption clip, each epoch
    drawn = [sorted(set(e.tolist()) - {0, 1, 2, 3, 4, 15}) for e in epochs]
    assert all(len(d) == 3 and set(d) <= set(range(5, 15)) for d in drawn) and len({tuple(d) for d in drawn}) > 1
    assert epoch_size(samples, 50) == 16  # more than there are: all of them


def test_slot_reading_reports_own_and_other_slot_losses(tiny_data):
    from compress.models.build import llm_from_config
    from compress.train.text import slot_reading

    tc, cfg, tok, corpus, _, _ = _tiny_model(tiny_data)
    lm = llm_from_config(cfg.llm)
    out = slot_reading(lm, tok, cfg, corpus, n_speech_tokens(cfg), seed=0)
    assert set(out) == {"asr", "caption", "copy"}
    for v in out.values():
        assert set(v) == {"own_slot", "other_slot"} and all(np.isfinite(x) and x > 0 for x in v.values())


def test_projection_init_from_data_sets_scale_and_centre(tiny_data, tmp_path):
    from compress.train.audio_stage import init_projection_from_data, pad_fbanks, speech_from_features
    from compress.train.demo import stage_features
    from compress.train.text import FILLER

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    cache = stage_features(tc, model, samples, str(tmp_path), False, lambda *a: None)
    idx = list(range(len(samples)))
    info = init_projection_from_data(model, cache, idx, 1.0, FILLER)
    table = model.llama_model.get_input_embeddings().weight
    model.eval()
    with torch.no_grad():
        wh = torch.from_numpy(np.asarray(cache.whisper[idx]).astype(np.float32))
        fb, pad = pad_fbanks([cache.fbank_of(i) for i in idx])
        sp = speech_from_features(model, wh, fb, pad, keep_windows=60).reshape(-1, table.shape[1])
    # the mean token is the filler's embedding; tokens spread around it by one mean embedding norm
    assert torch.allclose(sp.mean(0), table[FILLER], atol=1e-4)
    spread = (sp - sp.mean(0)).norm(dim=1).mean().item()
    assert abs(spread / table.norm(dim=1).mean().item() - 1.0) < 1e-3
    assert info["clips"] == len(idx) and 0 < info["window_dependent_share"] < 1


def test_ctc_readout_spells_tokens_that_are_word_embeddings(tiny_data, tmp_path):
    """Speech tokens that are exactly the transcript's piece embeddings (filler between) read out perfectly."""
    from compress.train import audio_stage
    from compress.train.demo import stage_features
    from compress.train.text import FILLER

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    cache = stage_features(tc, model, samples, str(tmp_path), False, lambda *a: None)
    table = model.llama_model.get_input_embeddings().weight
    asr = [i for i, s in enumerate(samples) if s.task == "asr"]

    def spelled(model, wh, fb, pad, keep_windows=None):
        rows = []
        for i in range(wh.shape[0]):
            pieces = tok(" " + samples[asr[i]].text, add_special_tokens=False)["input_ids"]
            slot = [t for p in pieces for t in (p, FILLER)][:keep_windows]
            rows.append(table[torch.tensor(slot + [FILLER] * (keep_windows - len(slot)))] * 50)
        return torch.stack(rows)

    real = audio_stage.ctc_readout(model, cache, samples)
    assert real["clips"] == len(asr) and np.isfinite(real["wer"])
    orig = audio_stage.speech_from_features
    audio_stage.speech_from_features = spelled
    try:
        assert audio_stage.ctc_readout(model, cache, samples)["wer"] == 0.0
    finally:
        audio_stage.speech_from_features = orig


def test_whisper_off_leaves_beats_alone(tiny_data, tmp_path):
    """A clip trained with its Whisper features off: its tokens no longer depend on Whisper; others unchanged."""
    from compress.train.audio_stage import cached_inputs, speech_from_features
    from compress.train.demo import stage_features

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    cache = stage_features(tc, model, samples, str(tmp_path), False, lambda *a: None)
    model.eval()
    wh, fb, pad = cached_inputs(cache, [0, 1])
    other = wh.clone()
    other[0] = torch.randn_like(other[0])
    with torch.no_grad():
        plain = speech_from_features(model, wh, fb, pad, keep_windows=20)
        off = speech_from_features(model, wh, fb, pad, keep_windows=20, whisper_off=[True, False])
        off2 = speech_from_features(model, other, fb, pad, keep_windows=20, whisper_off=[True, False])
    assert torch.equal(off[1], plain[1]) and not torch.allclose(off[0], plain[0])
    assert torch.allclose(off[0], off2[0])


@pytest.mark.parametrize("kind", ["lm", "linear", "embed"])
def test_ctc_head_learns_on_free_tokens(tiny_data, kind):
    """Every CTC head gives a loss that falls when the speech tokens themselves are optimised."""
    from compress.train.audio_stage import CtcHead, ctc_loss

    torch.manual_seed(0)
    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    lm = model.llm_base()
    head = CtcHead(kind, tc.llm_hidden, lm.get_input_embeddings().num_embeddings)
    targets = [target_ids(tok, "a steady tone"), target_ids(tok, "a low rumble")]
    x = torch.randn(2, 12, tc.llm_hidden, requires_grad=True)
    opt = torch.optim.Adam([x] + list(head.parameters()), lr=5e-2)
    first = None
    for _ in range(60):
        loss = ctc_loss(head, x, targets, lm)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())
    assert not any(p.grad is not None and p.requires_grad for p in lm.parameters())  # the LM stays frozen


def test_audio_control_compares_own_and_other_audio(tiny_data, tmp_path):
    from compress.train.audio_stage import audio_control, batch_loss
    from compress.train.demo import stage_features

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    cache = stage_features(tc, model, samples, str(tmp_path), False, lambda *a: None)
    out = audio_control(model, cache, samples, n=4)
    assert set(out) == {"asr", "caption"}
    model.eval()
    for task, v in out.items():
        ids = [i for i, s in enumerate(samples) if s.task == task][-4:]
        tg = [target_ids(tok, (samples[i].references or [samples[i].text])[0]) for i in ids]
        with torch.no_grad():
            own, _ = batch_loss(model, cache, ids, [task] * 4, tg, keep_windows=60)
            other, _ = batch_loss(model, cache, ids[2:] + ids[:2], [task] * 4, tg, keep_windows=60)
        assert v == {"own_audio": round(own.item(), 4), "other_audio": round(other.item(), 4)}
    assert model.training is False  # the mode it was called in is restored


def test_embed_head_prefers_the_nearest_embedding(tiny_data):
    """The `embed` head's argmax is the embedding row closest to the token, whatever the scale."""
    from compress.train.audio_stage import CtcHead

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    lm = model.llm_base()
    table = lm.get_input_embeddings().weight.detach()
    head = CtcHead("embed", tc.llm_hidden, table.shape[0])
    ids = torch.tensor([3, 17, 42, 99])
    x = table[ids] + 0.01 * torch.randn(4, table.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for scale in (0.0, 2.0):
            head.log_scale.fill_(scale)
            assert torch.equal(head(x[None], lm)[0].argmax(-1), ids)


def test_beats_zero_mode_matches_zeroed_beats_features(tiny_data, tmp_path):
    """beats_mode='zero' skips BEATs and gives what zeroing its output gives (the warm-up's and the ablation's input)."""
    from compress.train.audio_stage import cached_inputs, speech_from_features
    from compress.train.demo import stage_features

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    cache = stage_features(tc, model, samples, str(tmp_path), False, lambda *a: None)
    model.eval()
    wh, fb, pad = cached_inputs(cache, [0, 1, 2])
    handle = model.ln_audio.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
    with torch.no_grad():
        zeroed = speech_from_features(model, wh, fb, pad, keep_windows=20)
        handle.remove()
        skipped = speech_from_features(model, wh, None, None, beats_mode="zero", keep_windows=20)
        plain = speech_from_features(model, wh, fb, pad, keep_windows=20)
    assert torch.allclose(skipped, zeroed, atol=1e-6) and not torch.allclose(plain, zeroed)


def test_ctc_warmup_trains_the_front_alone_then_the_joint_stage_starts_from_it(tiny_data, tmp_path):
    from compress.train.audio_stage import train_audio
    from compress.train.demo import stage_features

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    cache = stage_features(tc, model, samples, str(tmp_path), False, lambda *a: None)
    lm_before = {n: p.detach().clone() for n, p in model.llm_base().named_parameters() if "lora_" not in n}
    beats_before = {n: p.detach().clone() for n, p in model.beats.named_parameters()}
    report = train_audio(model, samples, cache, epochs=0.01, batch=4, lr=3e-3, lora_lr=None, warmup=1,
                         weight_decay=0.0, grad_clip=1.0, seed=0, ctc_weight=1.0, ctc_head="embed",
                         warmup_steps=30, warmup_batch=4, warmup_lr=3e-3, log=lambda *a: None)
    warm = report["ctc_warmup"]
    assert warm["steps"] == 30 and warm["final_loss"] < warm["first_loss"], warm
    assert {"wer", "clips"} <= set(warm["ctc_readout"])
    assert report["steps"] == 1 and report["ctc_head"] == "embed"
    # the LM base never trains; ln_audio's gain starts at zero, so the one joint step opens it a little and
    # BEATs itself (no gradient through a zero gain) is still untouched
    assert all(torch.equal(p, lm_before[n]) for n, p in model.llm_base().named_parameters() if "lora_" not in n)
    assert 0 < model.ln_audio.weight.abs().max() < 0.1
    assert all(torch.equal(p, beats_before[n]) for n, p in model.beats.named_parameters())
    captions = [s for s in samples if s.task == "caption"]  # no ASR clip: no warm-up, the joint stage still runs
    cap_cache = stage_features(tc, model, captions, str(tmp_path / "captions"), False, lambda *a: None)
    report = train_audio(model, captions, cap_cache, epochs=0.01, batch=4, lr=3e-3, lora_lr=None, warmup=1,
                         weight_decay=0.0, grad_clip=1.0, seed=0, ctc_weight=1.0, ctc_head="embed",
                         warmup_steps=5, log=lambda *a: None)
    assert report["ctc_warmup"] == {"steps": 0} and report["steps"] == 1


def test_lm_cache_that_does_not_fit_is_refused(tiny_data, tmp_path):
    from safetensors.torch import save_file

    from compress.errors import ConfigError
    from compress.train.demo import cached_stage_lm, lm_cache_key

    tc, cfg, tok, corpus, samples, model = _tiny_model(tiny_data)
    key = lm_cache_key(tc, cfg, corpus, tok)
    assert key != lm_cache_key(tc.replace(lm_lr=1e-4), cfg, corpus, tok)
    (tmp_path / "lm").mkdir()
    save_file({"model.embed_tokens.weight": torch.zeros(3, 3)}, str(tmp_path / "lm" / f"lm-{key}.safetensors"))
    (tmp_path / "lm" / f"lm-{key}.json").write_text("{}")
    with pytest.raises(ConfigError, match="does not match the LM.*--no-lm-cache"):
        cached_stage_lm(tc, cfg, corpus, tok, False, None, str(tmp_path), True, lambda *a: None)


def test_feature_cache_copies_known_clips_and_matches_a_fresh_one(tiny_data, tmp_path):
    from compress.models.build import whisper_encoder_from_config
    from compress.train.features import build_cache

    samples = [s for s in read_annotations(tiny_data) if s.task == "caption"]
    torch.manual_seed(0)
    enc = whisper_encoder_from_config(recipe.preset("test").whisper)
    calls = []
    enc.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    logs = []
    build_cache(enc, samples[:4], str(tmp_path / "c"), batch=3, log=logs.append)
    assert sum(calls) == 4
    calls.clear()
    grown = build_cache(enc, samples[2:] , str(tmp_path / "c"), batch=3, log=logs.append)
    assert sum(calls) == len(samples) - 4  # clips 2 and 3 came from the first cache
    assert any("2 of 6 clips copied" in m for m in logs)
    fresh = build_cache(enc, samples[2:], str(tmp_path / "fresh"), batch=3, log=logs.append)
    assert np.array_equal(np.asarray(grown.whisper), np.asarray(fresh.whisper))
    assert np.array_equal(grown.fbank, fresh.fbank) and np.array_equal(grown.offsets, fresh.offsets)
    calls.clear()
    again = build_cache(enc, samples[2:], str(tmp_path / "c"), batch=3, log=logs.append)
    assert calls == [] and logs[-1].startswith("features: reusing the cache")
    assert np.array_equal(np.asarray(again.whisper), np.asarray(fresh.whisper))


def test_augment_features_drops_and_masks_inside_the_clip_only():
    from compress.train.audio_stage import augment_features

    wh = torch.ones(2, 100, 8)
    out = augment_features(wh, [30, 60], torch.Generator().manual_seed(0), 0.0, 3, 12)
    assert torch.equal(wh, torch.ones(2, 100, 8))  # input untouched
    zeroed = (out == 0).all(dim=-1)
    assert not zeroed[0, 30:].any() and not zeroed[1, 60:].any()  # padding frames never masked
    assert 0 < zeroed.sum() <= 2 * 3 * 11
    again = augment_features(wh, [30, 60], torch.Generator().manual_seed(0), 0.0, 3, 12)
    assert torch.equal(out, again)
    big = torch.ones(4, 200, 64)
    d = augment_features(big, [200] * 4, torch.Generator().manual_seed(1), 0.2, 0, 12)
    assert (d == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert torch.allclose(d[d != 0], torch.tensor(1.25))  # kept values rescaled: the mean is unchanged
