"""SALMONN's training on cached encoder inputs: BEATs, Q-Former, projection and LoRA learn ASR + captioning.

The forward pass is the model's own audio path with the frozen Whisper encoder's output read from the cache
and BEATs fed its fbank; the LLM input is `Salmonn.build_inputs` (BOS, prompt, speech tokens, instruction)
followed by the answer tokens (teacher forcing); the loss is cross-entropy on the answer tokens only, and the
LLM's output layer runs only at those positions (the tied 49k x 576 output layer is a fifth of SmolLM2).

Both stages (the CTC front warm-up and the joint stage) run on the product's one training loop
(`compress.trainloop`): every `checkpoint_minutes` the trained tensors, the optimizer and the step are written
atomically; a rerun continues from there. Batch order, kept windows and dropout are functions of (seed, step),
so a resumed run takes the same steps an uninterrupted one would.
"""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from compress.models.salmonn import _pad_to_same_length, answer_ids, window_count, window_tokens
from compress.trainloop import LoopSettings, only_trainable, warmup_cosine
from compress.trainloop import train as train_loop

from .featcache import FeatureCache

TRAINABLE_PREFIXES = ("ln_speech.", "speech_layer_weights", "beats.", "ln_audio.", "speech_Qformer.",
                      "speech_query_tokens", "speech_llama_proj.")
def set_trainable(model) -> list:
    """SALMONN's trainable set: everything but the Whisper encoder and the LLM's base weights (LoRA trains)."""
    names = []
    for n, p in model.named_parameters():
        train = n.startswith(TRAINABLE_PREFIXES) or ("lora_" in n and n.startswith("llama_model."))
        p.requires_grad_(train)
        if train:
            names.append(n)
    return names


# ----------------------------------------------------------------------------------------------- forward
def cached_batch(cache: FeatureCache, idx: list, frames: int) -> tuple:
    """Whisper outputs (B, frames, Dw) float32 (stacked caches: (B, layers, frames, Dw)), BEATs fbanks (B, F, 128)
    and their padding mask (True = pad). Real-length outputs shorter than `frames` are zero-filled (their windows
    are dropped by `llm_inputs`)."""
    whs = [np.asarray(cache.whisper(i, frames), dtype=np.float32) for i in idx]
    wh = torch.zeros((len(idx),) + whs[0].shape[:-2] + (frames, whs[0].shape[-1]))
    for j, a in enumerate(whs):
        wh[j, ..., : a.shape[-2], :] = torch.from_numpy(a)
    fbs = [cache.fbank(i) for i in idx]
    n = max(f.shape[0] for f in fbs)
    fb = torch.zeros(len(idx), n, fbs[0].shape[1])
    pad = torch.ones(len(idx), n, dtype=torch.bool)
    for j, f in enumerate(fbs):
        fb[j, : f.shape[0]] = torch.from_numpy(f.astype(np.float32))
        pad[j, : f.shape[0]] = False
    return wh, fb, pad


def time_mask(batch: int, frames: int, share: float, span: int) -> Optional[torch.Tensor]:
    """(batch, frames) bool, True on frames to hide: spans of 1..`span` frames at random starts, about `share` of
    the frames in all (SpecAugment's time masking, here on the frozen encoder's outputs). None when share is 0.
    Draws from torch's generator (seeded per step by the loops)."""
    if share <= 0 or frames < 1:
        return None
    n = max(1, round(share * frames * 2 / (span + 1)))  # spans of mean length (span + 1) / 2
    starts = torch.randint(0, frames, (batch, n, 1))
    ends = starts + torch.randint(1, span + 1, (batch, n, 1))
    t = torch.arange(frames)[None, None, :]
    return ((t >= starts) & (t < ends)).any(1)


def speech_from_features(model, wh: torch.Tensor, fbank: Optional[torch.Tensor], fbank_pad: Optional[torch.Tensor],
                         *, beats_mode: str = "on", whisper_off: Optional[list] = None,
                         hide: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Salmonn.encode_audio from cached Whisper outputs (B, T, Dw) and BEATs fbanks -> (B, L, D) speech tokens.

    Padded BEATs tokens are zeroed (what a batch of one clip gives at inference). `beats_mode='zero'` replaces
    BEATs' features by zeros; `whisper_off` zeroes the Whisper features of the flagged clips (BEATs alone); `hide`
    (B, T) zeroes those Whisper frames (training's time masking). `wh` (B, layers, T, Dw): the hidden states of
    `model.whisper_layers`, mixed by the model's learned weights first."""
    speech = model.ln_speech(model.mix_layers(wh) if wh.dim() == 4 else wh)
    if whisper_off is not None and any(whisper_off):
        speech = speech.masked_fill(torch.tensor(whisper_off)[:, None, None], 0.0)
    if hide is not None:
        speech = speech.masked_fill(hide[:, : speech.shape[1], None], 0.0)
    t = speech.shape[1]
    if model.beats is not None and beats_mode == "zero":
        speech = torch.cat([speech, speech.new_zeros(speech.shape[:2] + (model.ln_audio.normalized_shape[0],))], -1)
    elif model.beats is not None and fbank is not None:
        audio, tok_pad = model.beats._encode_fbank(fbank, fbank_pad if fbank_pad is not None and fbank_pad.any()
                                                   else None)
        audio = model.ln_audio(audio)
        if tok_pad is not None:
            audio = audio.masked_fill(tok_pad.unsqueeze(-1), 0.0)
        speech, audio = _pad_to_same_length(speech, audio[:, :t] if t < 1500 else audio)
        speech = torch.cat([speech, audio], dim=-1)
    return window_tokens(model, speech, model.cfg.window_kernel, model.cfg.window_stride)


def llm_inputs(model, speech: torch.Tensor, tasks: list, targets: list, windows: Optional[list] = None) -> tuple:
    """Prompt + answer embeddings right-padded (B, S, D), attention mask, and (rows, cols, labels) of the
    positions whose next token is an answer token. `windows[i]`: the speech tokens clip i keeps (all if None)."""
    emb = model.llama_model.get_input_embeddings()
    rows, pos_r, pos_c, labels = [], [], [], []
    for i, (task, tgt) in enumerate(zip(tasks, targets)):
        own = speech[i:i + 1] if windows is None else speech[i:i + 1, : windows[i]]
        prompt, _ = model.build_inputs(own, model.instruction_for(task))  # (1, P, D)
        p = prompt.shape[1]
        rows.append(torch.cat([prompt[0], emb(torch.tensor(tgt[:-1], dtype=torch.long))], dim=0))
        pos_r += [i] * len(tgt)
        pos_c += list(range(p - 1, p - 1 + len(tgt)))
        labels += list(tgt)
    n = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros(len(rows), n, rows[0].shape[1])
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        embeds[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    return embeds, mask, (torch.tensor(pos_r), torch.tensor(pos_c), torch.tensor(labels))


def answer_logits(model, embeds: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    """The LLM (with LoRA) over the sequence; its output layer only at (rows, cols)."""
    base = model.llm_base()
    hidden = base.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    return base.lm_head(hidden[rows, cols])


class CtcHead(torch.nn.Module):
    """Training only (not in the artifact): speech tokens -> logits over a blank + the LLM's vocabulary, each
    token's logit being minus its squared distance to that token's frozen input embedding (times a learned
    temperature). CTC through it pulls each window's speech token onto the embedding of the word piece spoken
    there: the LLM then reads its own word embeddings, in order, which it needs no training to understand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.log_scale = torch.nn.Parameter(torch.zeros(()))
        self.blank = torch.nn.Parameter(table.detach().mean(0).clone())

    def forward(self, speech: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.blank[None], table.detach()], 0)  # blank = class 0, token v = class v + 1
        sq = table.pow(2).sum(1)
        return (speech @ table.T - 0.5 * sq) * (self.log_scale.exp() * 10.0 / sq.mean())


def ctc_loss(head: CtcHead, table: torch.Tensor, speech: torch.Tensor, windows: list, targets: list) -> torch.Tensor:
    """CTC of each clip's answer tokens (EOS dropped; ids index `table`, the embeddings the head compares with)
    over its own speech windows; mean over clips."""
    logp = F.log_softmax(head(speech, table).float(), -1)
    flat = torch.tensor([t + 1 for tg in targets for t in tg[:-1]], dtype=torch.long)
    return F.ctc_loss(logp.transpose(0, 1), flat, torch.tensor(windows, dtype=torch.long),
                      torch.tensor([len(t) - 1 for t in targets], dtype=torch.long), blank=0, reduction="mean",
                      zero_infinity=True)


def ctc_clips(samples: list, ts) -> list:
    """Per clip: whether its answer is also a CTC target of its speech tokens. ASR clips always; caption clips
    without speech when `ts.caption_ctc` (a clip with speech cannot have both its transcript and its caption as
    the pieces its windows spell)."""
    return [s.task == "asr" or (ts.caption_ctc and "speech" not in str(s.extra.get("kind", "speech")))
            for s in samples]


def batch_loss(model, cache: FeatureCache, idx: list, tasks: list, targets: list, *, frames: int,
               beats_mode: str = "on", whisper_off: Optional[list] = None, ctc_head: Optional[CtcHead] = None,
               ctc_weight: float = 0.0, ctc_on: Optional[list] = None, masking: tuple = (0.0, 1),
               ctc_vocab: Optional[tuple] = None) -> tuple:
    """Mean answer-token cross-entropy of a batch (+ ctc_weight x CTC of the speech tokens of the clips flagged in
    `ctc_on`, default the ASR clips), and {name: (loss sum, count)}. `masking`: (share, span) of time_mask.
    `ctc_vocab`: (embedding rows, {LLM id: row}) of answer_vocab to restrict the CTC softmax to; None = all pieces."""
    feats = cached_batch(cache, idx, frames)
    speech = speech_from_features(model, *feats, beats_mode=beats_mode, whisper_off=whisper_off,
                                  hide=time_mask(len(idx), feats[0].shape[-2], *masking))
    own = [clip_tokens(model, cache, i) for i in idx] if cache.real_length else None
    embeds, mask, (r, c, labels) = llm_inputs(model, speech, tasks, targets, own)
    tok = F.cross_entropy(answer_logits(model, embeds, mask, r, c).float(), labels, reduction="none")
    per_task = {}
    for task in set(tasks):
        sel = torch.tensor([tasks[int(i)] == task for i in r])
        per_task[task] = (tok[sel].sum().item(), int(sel.sum()))
    loss = tok.mean()
    ctc_on = ctc_on if ctc_on is not None else [t == "asr" for t in tasks]
    rows = [j for j in range(len(idx)) if ctc_on[j] and len(targets[j]) > 1]
    if ctc_head is not None and ctc_weight > 0 and rows:
        windows = [min(speech.shape[1], clip_tokens(model, cache, idx[j])) for j in rows]
        table = model.llama_model.get_input_embeddings().weight
        tg = [targets[j] for j in rows]
        if ctc_vocab is not None:
            table, tg = ctc_vocab[0], restrict_targets(tg, ctc_vocab[1])
        ctc = ctc_loss(ctc_head, table, speech[rows, : max(windows)], windows, tg)
        per_task["ctc"] = (ctc.item() * len(rows), len(rows))
        loss = loss + ctc_weight * ctc
    return loss, per_task


# ----------------------------------------------------------------------------------------------- plan
def clip_windows(model, cache: FeatureCache, i: int) -> int:
    """Q-Former windows (by stride) that clip i's audio covers; with real-length features, the windows of its
    cached encoder frames (what real-length inference of the clip gives)."""
    if cache.real_length:
        return window_count(cache.whisper_frames(i), model.cfg.window_kernel, model.cfg.window_stride)
    return -(-cache.clip_frames(i) // model.cfg.window_stride)


def clip_tokens(model, cache: FeatureCache, i: int) -> int:
    """Speech tokens of clip i: its windows times the Q-Former's queries per window."""
    return clip_windows(model, cache, i) * model.cfg.num_speech_query_token


def window_frames_needed(model, windows: int) -> int:
    """Whisper frames that `windows` whole Q-Former windows span (at most the 1500 of 30 s)."""
    return min(1500, (windows - 1) * model.cfg.window_stride + model.cfg.window_kernel)


def keep_frames(model, cache: FeatureCache, idx: list, rng: np.random.Generator, full_share: float) -> int:
    """Whisper frames to keep for a batch: all 1500 (as at inference) for `full_share` of the batches, else
    the windows of the batch's longest clip plus 2-24 windows of its padding (the silence the model must learn
    to ignore costs most of a step at full length). Real-length features: the batch's longest clip."""
    if cache.real_length:
        return max(cache.whisper_frames(i) for i in idx)
    total = 1500
    if full_share >= 1.0 or rng.random() < full_share:
        return total
    speech = max(clip_windows(model, cache, i) for i in idx)
    windows = min(window_count(total, model.cfg.window_kernel, model.cfg.window_stride),
                  speech + int(rng.integers(2, 25)))
    return window_frames_needed(model, windows)


def batch_at(step: int, n, batch: int, seed: int, lengths: Optional[list] = None, bucket: int = 0) -> list:
    """Clip indices of `step`: epochs of a seeded permutation, so any step's batch is known without history.
    `n` is the clip count, or the list of clip indices of one epoch (a clip listed twice is seen twice).
    With `lengths` (per clip index) and `bucket` > 1, each run of `bucket` batches of the permutation is sorted by
    length before it is cut into batches, and the epoch's batches are then shuffled: batches hold clips of similar
    length, so little of a step is spent on padding, and each epoch still sees every clip once."""
    pool = np.arange(n) if isinstance(n, int) else np.asarray(n)
    per_epoch = max(1, len(pool) // batch)
    epoch, k = divmod(step, per_epoch)
    order = pool[np.random.default_rng([seed, 7, epoch]).permutation(len(pool))]
    if lengths is None or bucket <= 1:
        return [int(i) for i in order[k * batch:(k + 1) * batch]]
    return [int(i) for i in _bucketed_epoch(tuple(int(i) for i in order), batch, bucket, tuple(lengths),
                                            (seed, epoch))[k]]


@functools.lru_cache(maxsize=2)
def _bucketed_epoch(order: tuple, batch: int, bucket: int, lengths: tuple, key: tuple) -> list:
    chunk = batch * bucket
    batches = []
    for start in range(0, len(order) - len(order) % batch, chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        part = part[: len(part) - len(part) % batch]
        batches += [part[j:j + batch] for j in range(0, len(part), batch)]
    shuffle = np.random.default_rng([key[0], 17, key[1]]).permutation(len(batches))
    return [batches[j] for j in shuffle]


def epoch_pool(samples: list, caption_repeat: int) -> list:
    """One epoch's clip indices: every clip once, caption clips `caption_repeat` times."""
    return list(range(len(samples))) + [i for i, s in enumerate(samples) if s.task != "asr"] * (caption_repeat - 1)


# ----------------------------------------------------------------------------------------------- loop
CKPT = "train-state.pt"
WARMUP = "front-warmup.pt"


def _loop_settings(ts, steps: int, lr: float, warmup: int, checkpoint: str) -> LoopSettings:
    return LoopSettings(steps=steps, lr=lr, weight_decay=ts.weight_decay, betas=(0.9, 0.98), grad_clip=ts.grad_clip,
                        schedule=lambda step: warmup_cosine(step, steps, warmup), checkpoint=checkpoint,
                        checkpoint_minutes=ts.checkpoint_minutes or None, max_minutes=ts.max_minutes, log_every=50)


def answer_vocab(weight: torch.Tensor, ids: list) -> tuple:
    """(rows of the input embeddings `weight` for the LLM pieces in the answers `ids` (EOS dropped), {LLM id: row}):
    the CTC softmax over these + blank instead of the whole vocabulary."""
    vocab = sorted({t for tg in ids for t in tg[:-1]})
    return weight.detach()[vocab], {v: k for k, v in enumerate(vocab)}


def restrict_targets(targets: list, index: dict) -> list:
    """Answers' LLM ids as rows of an answer_vocab table (EOS dropped, a placeholder end kept for ctc_loss)."""
    return [[index[t] for t in tg[:-1]] + [-1] for tg in targets]


def front_warmup(model, samples: list, cache: FeatureCache, ts, state_dir: str, *,
                 progress: Optional[Callable] = None, log=print) -> Optional[dict]:
    """CTC alone before SALMONN's loss, on the ASR clips and the caption clips of `ctc_clips`: the audio front
    (BEATs, Q-Former, projection) learns to put each window's word piece onto its LLM input embedding without any
    LLM forward, about ten times cheaper per clip than a joint step. The softmax runs over the pieces the training
    answers use (+ blank). Deterministic from (seed, step) and resumable like the joint stage; its final state
    (`state_dir`/front-warmup.pt) also hands the CTC head to the joint stage."""
    if ts.front_warmup_steps <= 0:
        return None
    head = CtcHead(model.llama_model.get_input_embeddings().weight)
    params = dict(model.named_parameters())
    named = {n: params[n] for n in set_trainable(model) if "lora_" not in n}
    named.update({f"ctc_head.{n}": p for n, p in head.named_parameters()})
    tok = model.tokenizer
    clips = [i for i, on in enumerate(ctc_clips(samples, ts)) if on]
    targets = {i: answer_ids(tok, samples[i].text) for i in clips}
    table, index = answer_vocab(model.llama_model.get_input_embeddings().weight, list(targets.values()))

    def step_loss(step: int):
        rng = np.random.default_rng([ts.seed, 13, step])
        idx = [clips[int(j)] for j in rng.choice(len(clips), min(ts.front_warmup_batch, len(clips)), replace=False)]
        off = [samples[i].task != "asr" and rng.random() < ts.warmup_whisper_drop for i in idx]
        torch.manual_seed(ts.seed * 1_000_003 + 500_000 + step)
        windows = [clip_windows(model, cache, i) for i in idx]
        feats = cached_batch(cache, idx, window_frames_needed(model, max(windows)))
        speech = speech_from_features(model, *feats, whisper_off=off,
                                      hide=time_mask(len(idx), feats[0].shape[-2], ts.time_mask, ts.time_mask_span))
        windows = [min(w * model.cfg.num_speech_query_token, speech.shape[1]) for w in windows]
        return ctc_loss(head, table, speech, windows, restrict_targets([targets[i] for i in idx], index)), {}

    steps = ts.front_warmup_steps
    cfg = _loop_settings(ts, steps, ts.front_warmup_lr, min(100, steps // 10), os.path.join(state_dir, WARMUP))
    cfg.max_minutes = None
    bar = progress(steps) if progress else None
    with only_trainable(model, named.values()):
        model.speech_encoder.eval()
        r = train_loop(named, step_loss, cfg, progress=bar, log=lambda m: log(f"train: front warm-up {m}"),
                       lr_of=lambda n: ts.front_warmup_lr * (10 if n.startswith("ctc_head.") else 1))
    if bar is not None:
        bar.close()
    model.eval()
    ctc = r["curves"].get("loss", [])
    return {"steps": r["steps"], "batch": ts.front_warmup_batch, "vocabulary": len(index),
            "first_ctc": ctc[0] if ctc else None, "final_ctc": _tail(ctc), "seconds": r["seconds"]}


def train(model, samples: list, cache: FeatureCache, ts, state_dir: str, *,
          progress: Optional[Callable] = None, log=print) -> dict:
    """Run (or continue) the joint stage (SALMONN's answer loss + the auxiliary CTC); returns its report.
    `ts` is a DemoSettings."""
    names = set_trainable(model)
    params = dict(model.named_parameters())
    named = {n: params[n] for n in names}
    tok = model.tokenizer
    targets = [answer_ids(tok, s.text) for s in samples]
    tasks = ["asr" if s.task == "asr" else "caption" for s in samples]
    ctc_on = ctc_clips(samples, ts)
    pool = epoch_pool(samples, ts.caption_repeat)
    lengths = [clip_tokens(model, cache, i) + len(targets[i]) for i in range(len(samples))]

    head = CtcHead(model.llama_model.get_input_embeddings().weight) if ts.ctc_weight > 0 else None
    vocab = None
    if head is not None and ts.joint_ctc_vocab == "answers":
        vocab = answer_vocab(model.llama_model.get_input_embeddings().weight,
                             [targets[i] for i in range(len(samples)) if ctc_on[i]])
    warm = os.path.join(state_dir, WARMUP)
    if head is not None:  # the head starts from the warm-up's (its blank and temperature)
        if os.path.isfile(warm):
            state = torch.load(warm, map_location="cpu", weights_only=True)["params"]
            head.load_state_dict({k[len("ctc_head."):]: v for k, v in state.items() if k.startswith("ctc_head.")})
        named.update({f"ctc_head.{n}": p for n, p in head.named_parameters()})

    def lr_of(name):  # the head's temperature and blank learn fast: at the weights' rate they barely move
        if name.startswith("ctc_head."):
            return ts.lr * 10
        return ts.lora_lr if ("lora_" in name and ts.lora_lr is not None) else ts.lr

    def step_loss(step: int):
        idx = batch_at(step, pool, ts.batch, ts.seed, lengths, ts.length_buckets)
        rng = np.random.default_rng([ts.seed, 11, step])
        torch.manual_seed(ts.seed * 1_000_003 + step)
        frames = keep_frames(model, cache, idx, rng, ts.full_share)
        off = [tasks[i] == "caption" and rng.random() < ts.whisper_drop for i in idx]
        loss, per_task = batch_loss(model, cache, idx, [tasks[i] for i in idx], [targets[i] for i in idx],
                                    frames=frames, whisper_off=off, ctc_head=head, ctc_weight=ts.ctc_weight,
                                    ctc_on=[ctc_on[i] for i in idx], masking=(ts.time_mask, ts.time_mask_span),
                                    ctc_vocab=vocab)
        return loss, {t: s / max(c, 1) for t, (s, c) in per_task.items()}

    n_params = sum(p.numel() for n, p in named.items() if not n.startswith("ctc_head."))
    log(f"train: {len(names)} trainable tensors, {n_params / 1e6:.2f} M parameters; {len(samples)} clips, "
        f"batch {ts.batch}, {ts.steps} steps")
    os.makedirs(state_dir, exist_ok=True)
    bar = progress(ts.steps) if progress else None
    with only_trainable(model, named.values()):
        model.speech_encoder.eval()
        r = train_loop(named, step_loss, _loop_settings(ts, ts.steps, ts.lr, ts.warmup, os.path.join(state_dir, CKPT)),
                       lr_of=lr_of, progress=bar, log=lambda m: log(f"train: {m}"))
    if bar is not None:
        bar.close()
    model.eval()
    c = r["curves"]
    return {"steps": r["steps"], "planned_steps": ts.steps, "stopped": r["stopped"], "trainable_tensors": len(names),
            "trainable_parameters": n_params, "seconds": r["seconds"],
            "first_loss": c["loss"][0] if c.get("loss") else None, "final_loss": _tail(c.get("loss", [])),
            "final_asr_loss": _tail(c.get("asr", [])), "final_caption_loss": _tail(c.get("caption", [])),
            "final_ctc_loss": _tail(c.get("ctc", [])), "curve": _curve(c.get("loss", []))}


def _tail(values: list, n: int = 50) -> float:
    return round(float(np.mean(values[-n:])), 4) if values else float("nan")


def _curve(losses: list, points: int = 20) -> list:
    """About `points` (step, mean loss over the preceding stretch) pairs of the loss curve."""
    every = max(1, len(losses) // points)
    return [{"step": i + 1, "loss": _tail(losses[: i + 1], every)} for i in range(len(losses)) if (i + 1) % every == 0]


@torch.no_grad()
def init_projection(model, cache: FeatureCache, idx: list) -> dict:
    """Start the projection at the LLM's embedding scale: its output on training clips gets the mean norm of
    the LLM's token embeddings (the Q-Former ends in a LayerNorm, whose outputs a default Linear maps to vectors
    several times larger than any word embedding)."""
    frames = max(cache.whisper_frames(i) for i in idx)
    wh, fb, pad = cached_batch(cache, idx, frames)
    model.eval()
    speech = speech_from_features(model, wh, fb, pad)
    table = model.llama_model.get_input_embeddings().weight
    target = table.norm(dim=1).mean()
    got = speech.norm(dim=-1).mean()
    model.speech_llama_proj.weight.mul_(target / got)
    model.speech_llama_proj.bias.mul_(target / got)
    after = speech_from_features(model, wh, fb, pad).norm(dim=-1).mean()
    return {"clips": len(idx), "embedding_norm": round(float(target), 4), "token_norm_before": round(float(got), 4),
            "token_norm_after": round(float(after), 4)}
