"""SALMONN's training stage on cached encoder inputs: BEATs, Q-Former, projection and LoRA learn ASR + captioning.

The forward pass is the model's own audio path (`Salmonn.encode_audio`) with the frozen Whisper
encoder's output taken from the cache and BEATs fed its fbank directly; the LLM input is
`Salmonn.build_inputs` (BOS, "USER: <Speech>", speech tokens, "</Speech> {instruction}\\nASSISTANT:")
followed by the target tokens + EOS (teacher forcing); the loss covers the target tokens only.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.build import is_chain
from ..models.salmonn import _pad_to_same_length, window_count, window_tokens
from .features import FeatureCache
from .optim import make_optimizer, set_lr, warmup_cosine
from .recipe import CTC_HEADS
from .text import FILLER, content_pieces, target_ids

TRAINABLE_PREFIXES = ("ln_speech.", "beats.", "ln_audio.", "speech_Qformer.", "speech_query_tokens",
                      "speech_llama_proj.")


def set_trainable(model) -> list:
    """SALMONN's trainable set here: everything but the Whisper encoder and the LLM base weights (LoRA trains)."""
    names = []
    for n, p in model.named_parameters():
        train = n.startswith(TRAINABLE_PREFIXES) or ("lora_" in n and n.startswith("llama_model."))
        p.requires_grad_(train)
        if train:
            names.append(n)
    return names


def pad_fbanks(fbanks: list) -> tuple:
    """[(F_i, 128)] -> fbank (B, F_max, 128) float32 zero-padded, padding mask (B, F_max) True = padding."""
    n = max(f.shape[0] for f in fbanks)
    out = torch.zeros(len(fbanks), n, fbanks[0].shape[1])
    pad = torch.ones(len(fbanks), n, dtype=torch.bool)
    for i, f in enumerate(fbanks):
        out[i, : f.shape[0]] = torch.from_numpy(np.asarray(f, dtype=np.float32))
        pad[i, : f.shape[0]] = False
    return out, pad


def cached_inputs(cache: FeatureCache, idx: list) -> tuple:
    """Whisper outputs (B, 1500, Dw) float32, BEATs fbanks and their padding mask of clips `idx`, in that order."""
    order = np.argsort(idx)  # memory-mapped rows read in file order
    rows = np.asarray(cache.whisper[np.asarray(idx)[order]])
    wh = torch.empty((len(idx),) + rows.shape[1:], dtype=torch.float32)
    wh[torch.as_tensor(order)] = torch.from_numpy(rows.astype(np.float32))
    fb, pad = pad_fbanks([cache.fbank_of(i) for i in idx])
    return wh, fb, pad


def speech_from_features(model, whisper_out: torch.Tensor, fbank: Optional[torch.Tensor],
                         fbank_pad: Optional[torch.Tensor], *, beats_mode: str = "on",
                         keep_windows: Optional[int] = None, whisper_off: Optional[list] = None) -> torch.Tensor:
    """Salmonn.encode_audio from the Whisper encoder output (B, 1500, Dw) and BEATs fbanks -> (B, L, D).

    Padded BEATs tokens are zeroed, which is what a batch of one clip (no padding) gives at inference.
    `beats_mode='zero'` replaces the BEATs features by zeros (ablation). `keep_windows` (training only)
    keeps the first windows of the 30 s layout and drops the rest (see `kept_windows`). `whisper_off`
    (training only): clips whose Whisper features are zeroed, so that BEATs alone must carry them.
    """
    speech = model.ln_speech(whisper_out)
    if whisper_off is not None and any(whisper_off):
        speech = speech.masked_fill(torch.tensor(whisper_off)[:, None, None], 0.0)
    if model.beats is not None and beats_mode == "zero":  # BEATs tokens never outnumber Whisper's 1500 frames
        speech = torch.cat([speech, speech.new_zeros(speech.shape[:2] + (model.ln_audio.normalized_shape[0],))], -1)
    elif model.beats is not None and fbank is not None:
        audio, tok_pad = model.beats._encode_fbank(fbank, fbank_pad if fbank_pad is not None and fbank_pad.any() else None)
        audio = model.ln_audio(audio)
        if tok_pad is not None:
            audio = audio.masked_fill(tok_pad.unsqueeze(-1), 0.0)
        speech, audio = _pad_to_same_length(speech, audio)
        speech = torch.cat([speech, audio], dim=-1)
    if keep_windows is not None:
        speech = speech[:, : (keep_windows - 1) * model.cfg.window_stride + model.cfg.window_kernel]
    return window_tokens(model, speech, model.cfg.window_kernel, model.cfg.window_stride)


def llm_batch(model, speech: torch.Tensor, tasks: list, targets: list) -> tuple:
    """Prompt (build_inputs) + target embeddings, right-padded; labels -100 except on target tokens."""
    emb = model.llama_model.get_input_embeddings()
    rows, labels = [], []
    for i, (task, tgt) in enumerate(zip(tasks, targets)):
        prompt, _ = model.build_inputs(speech[i:i + 1], model.instruction_for(task))  # (1, P, D)
        p = prompt.shape[1]
        t = torch.tensor(tgt[:-1], dtype=torch.long)  # the last target (EOS) is never an input
        rows.append(torch.cat([prompt[0], emb(t)], dim=0))
        labels.append([-100] * (p - 1) + list(tgt))
    n = max(r.shape[0] for r in rows)
    d = rows[0].shape[1]
    embeds = rows[0].new_zeros(len(rows), n, d)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    lab = torch.full((len(rows), n), -100, dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        embeds[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
        lab[i, : len(lb)] = torch.tensor(lb)
    return embeds, mask, lab


def kept_windows(model, cache: FeatureCache, idx: list, rng: np.random.Generator, full_share: float) -> Optional[int]:
    """Windows to keep for a training batch: all of them (None) for `full_share` of the batches, else the
    windows that hold the batch's longest clip plus a random 2-24 windows of its padding.

    Speech fills the first seconds of Whisper's 30 s; the padding windows after it are what the model
    must learn to ignore, and they cost most of a step. Keeping a random stretch of them (and all of
    them in some batches, as at inference) trains that at a fraction of the cost.
    """
    if full_share >= 1.0 or rng.random() < full_share:
        return None
    total = window_count(cache.whisper.shape[1], model.cfg.window_kernel, model.cfg.window_stride)
    return min(total, speech_windows(model, cache, idx) + int(rng.integers(2, 25)))


def speech_windows(model, cache: FeatureCache, idx: list) -> int:
    """Q-Former windows (by stride) that the longest of clips `idx` covers."""
    return -(-max(clip_frames(cache, idx)) // model.cfg.window_stride)


def clip_frames(cache: FeatureCache, idx: list) -> list:
    """Whisper frames (50 per second) each clip's audio covers: half its 100-per-second fbank frames."""
    return [int(cache.offsets[i + 1] - cache.offsets[i]) // 2 for i in idx]


class CtcHead(torch.nn.Module):
    """Training only (not in the artifact): speech tokens -> vocabulary logits for the auxiliary CTC.

    `lm`: the frozen LM's own final norm and (tied) output layer read the speech token as if it were
    a hidden state, times a learned scale: CTC then pulls each window's token towards the embedding
    of the word piece spoken in it, which is what the LM learned to copy from its speech slot in
    pretraining. `linear`: a LayerNorm (no affine) and a free linear layer (tokens only need to be
    linearly decodable). `embed`: minus the squared distance to each row of the LM's frozen input
    embedding table, times a learned scale: CTC pulls each token onto the embedding of its word piece
    (the blank's is the filler's), the layout of the text slots the LM was pretrained to read. The
    blank is the filler token of the slot-reading sequences. (A head of
    cosine similarities to the frozen embedding table did not learn at all: the table's rows share
    one dominant direction, so all cosines are nearly equal.)
    """

    def __init__(self, kind: str, dim: int, vocab: int):
        super().__init__()
        if kind not in CTC_HEADS:
            raise ValueError(f"unknown CTC head {kind!r}; valid: {', '.join(CTC_HEADS)}")
        self.kind = kind
        if kind == "linear":
            self.out = torch.nn.Linear(dim, vocab)
        else:
            self.log_scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, speech: torch.Tensor, lm=None) -> torch.Tensor:
        if self.kind == "linear":
            return self.out(F.layer_norm(speech, speech.shape[-1:]))
        if self.kind == "embed":
            table = lm.get_input_embeddings().weight.detach()
            sq = table.pow(2).sum(1)  # logits start spread over ~10 units between near and far rows
            return (speech @ table.T - 0.5 * sq) * (self.log_scale.exp() * 10.0 / sq.mean())
        return lm.get_output_embeddings()(lm.model.norm(speech)) * self.log_scale.exp()


def ctc_loss(head: CtcHead, speech: torch.Tensor, targets: list, lm=None) -> torch.Tensor:
    """CTC of word pieces (each target's last id, EOS, dropped) over the speech tokens, blank = FILLER; mean over clips."""
    logp = F.log_softmax(head(speech, lm).float(), dim=-1).transpose(0, 1)  # (L, B, V)
    tg = [t[:-1] for t in targets]
    flat = torch.tensor([i for t in tg for i in t], dtype=torch.long)
    return F.ctc_loss(logp, flat, torch.full((len(tg),), logp.shape[0], dtype=torch.long),
                      torch.tensor([len(t) for t in tg], dtype=torch.long), blank=FILLER, reduction="mean",
                      zero_infinity=True)


@torch.no_grad()
def boost_cross_attention(model, gain: float) -> None:
    """Scale the Q-Former's cross-attention output projections at init.

    With a single query per window, every window's query is the same vector; at the default init
    the audio read by cross-attention is a small part of each post-LN residual (about 9% of the
    Q-Former output's energy varies across windows, measured on training clips), so the speech
    tokens start almost identical. A larger cross-attention output makes the audio dominate.
    """
    for layer in model.speech_Qformer.bert.encoder.layer:
        if layer.has_cross_attention:
            layer.crossattention.output.dense.weight.mul_(gain)


@torch.no_grad()
def init_projection_from_data(model, cache: FeatureCache, idx: list, scale: float, filler_id: int) -> dict:
    """Data-dependent init of speech_llama_proj (training clips `idx`, first 60 windows each).

    The Q-Former output's mean over windows is mapped to the filler token's embedding (what the
    pretrained LM saw in an empty speech slot) and its window-dependent part to vectors of `scale`
    times the LM's mean embedding norm, so the speech tokens start at the embedding scale and differ
    from window to window as much as word embeddings differ.
    """
    was = model.training
    model.eval()
    seen = {}
    hook = model.speech_Qformer.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o))
    try:
        speech_from_features(model, *cached_inputs(cache, idx), keep_windows=60)
    finally:
        hook.remove()
        model.train(was)
    x = seen["q"].reshape(-1, seen["q"].shape[-1]).float()
    mu = x.mean(0)
    table = model.llama_model.get_input_embeddings().weight
    target = scale * table.norm(dim=1).mean().item()
    proj = model.speech_llama_proj
    torch.nn.init.normal_(proj.weight)
    proj.weight.mul_(target / ((x - mu) @ proj.weight.T).norm(dim=1).mean().item())
    proj.bias.copy_(table[filler_id] - proj.weight @ mu)
    out = proj(x)
    return {"clips": len(idx), "token_norm": round(out.norm(dim=1).mean().item(), 4),
            "window_dependent_share": round((out.var(0).sum() / out.pow(2).sum(1).mean()).item(), 4)}


def batch_loss(model, cache: FeatureCache, idx: list, tasks: list, targets: list, *, beats_mode="on",
               ctc_head: Optional[CtcHead] = None, ctc_weight: float = 0.0, keep_windows: Optional[int] = None,
               ctc_targets: Optional[list] = None, whisper_off: Optional[list] = None) -> tuple:
    """Mean target-token loss of a batch (+ ctc_weight x CTC), and {name: (loss sum, count)}.

    CTC covers the clips whose `ctc_targets` entry is not None (word pieces + EOS, see `epoch_plan`);
    without `ctc_targets`, the ASR clips with their targets."""
    speech = speech_from_features(model, *cached_inputs(cache, idx), beats_mode=beats_mode, keep_windows=keep_windows,
                                  whisper_off=whisper_off)
    embeds, mask, labels = llm_batch(model, speech, tasks, targets)
    logits = model.llama_model(inputs_embeds=embeds, attention_mask=mask).logits
    tok_loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               reduction="none").view(labels.shape)
    valid = labels != -100
    per_task = {}
    for task in set(tasks):
        rows = torch.tensor([t == task for t in tasks])
        m = valid & rows[:, None]
        per_task[task] = (tok_loss[m].sum().item(), int(m.sum()))
    loss = tok_loss[valid].mean()
    if ctc_targets is None:
        ctc_targets = [t if task == "asr" else None for task, t in zip(tasks, targets)]
    rows = [i for i, t in enumerate(ctc_targets) if t is not None and len(t) > 1]
    if ctc_head is not None and ctc_weight > 0 and rows:
        ctc = ctc_loss(ctc_head, speech[rows], [ctc_targets[i] for i in rows], model.llm_base())
        per_task["ctc"] = (ctc.item() * len(rows), len(rows))
        loss = loss + ctc_weight * ctc
    return loss, per_task


def augment_features(wh: torch.Tensor, frames: list, gen: torch.Generator, dropout: float, masks: int,
                     max_width: int) -> torch.Tensor:
    """Training-only noise on cached Whisper outputs (B, T, D): element dropout at rate `dropout` (kept values
    scaled by 1/(1-p)) and `masks` time spans per clip of 0 to `max_width` - 1 frames zeroed, placed inside
    the clip's own `frames` (its speech, not the 30 s padding). The front cannot lean on any single frame."""
    out = wh
    if dropout > 0:
        keep = torch.rand(wh.shape, generator=gen) >= dropout
        out = wh * keep / (1.0 - dropout)
    if masks > 0 and max_width > 1:
        out = out.clone() if out is wh else out
        for b, n in enumerate(frames):
            for _ in range(masks):
                w = int(torch.randint(0, max_width, (1,), generator=gen))
                start = int(torch.randint(0, max(1, n - w), (1,), generator=gen))
                out[b, start:start + w] = 0
    return out


def ctc_warmup(model, samples: list, cache: FeatureCache, head: CtcHead, *, steps: int, batch: int, lr: float,
               seed: int, proj_lr: Optional[float] = None, feature_dropout: float = 0.0, time_masks: int = 0,
               mask_width: int = 12, progress: Optional[Callable] = None) -> dict:
    """CTC alone on the ASR clips' speech tokens, before SALMONN's loss: no LLM forward and no BEATs (its
    features zeroed), so a step costs a fraction of a joint one and the Q-Former learns to spell first.

    Trains ln_speech, the Q-Former, its queries, the projection (at `proj_lr`) and the head; each batch
    keeps the windows of its longest clip plus 2 of padding; `feature_dropout` / `time_masks` (of up to
    `mask_width` frames) add `augment_features` noise. Returns the loss curve and the greedy read-out
    (`ctc_readout`) after it."""
    asr = [i for i, s in enumerate(samples) if s.task == "asr"]
    if steps <= 0 or not asr:
        return {"steps": 0}
    mods = [model.ln_speech, model.speech_Qformer]
    named = [(n, p) for mod in mods for n, p in mod.named_parameters()] + [("speech_query_tokens", model.speech_query_tokens)]
    proj = list(model.speech_llama_proj.parameters())
    head_named = list(head.named_parameters())
    groups = [{"params": [p for _, p in named] + [p for n, p in head_named if n != "log_scale"], "lr": lr},
              {"params": proj, "lr": proj_lr or lr},
              {"params": [p for n, p in head_named if n == "log_scale"], "lr": HEAD_SCALE_LR}]
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    base = [g["lr"] for g in opt.param_groups]
    rng = np.random.default_rng([seed, 44])
    gen = torch.Generator().manual_seed(int(seed) * 1000 + 45)
    targets = {i: target_ids(model.tokenizer, samples[i].text) for i in asr}
    was = model.training
    model.train()
    model.speech_encoder.eval()
    lm = model.llm_base()
    losses, t0 = [], time.perf_counter()
    bar = progress(steps) if progress else None
    for step in range(steps):
        set_lr(opt, base, warmup_cosine(step, steps, min(100, steps // 10)))
        idx = [int(i) for i in rng.choice(asr, min(batch, len(asr)), replace=False)]
        wh, fb, pad = cached_inputs(cache, idx)
        if feature_dropout > 0 or time_masks > 0:
            wh = augment_features(wh, clip_frames(cache, idx), gen, feature_dropout, time_masks, mask_width)
        speech = speech_from_features(model, wh, None, None, beats_mode="zero",
                                      keep_windows=speech_windows(model, cache, idx) + 2)
        loss = ctc_loss(head, speech, [targets[i] for i in idx], lm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(ctc=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    model.train(was)
    from .text import _curve

    return {"steps": steps, "batch": batch, "lr": lr, "proj_lr": proj_lr, "feature_dropout": feature_dropout,
            "time_masks": time_masks, "mask_width": mask_width, "first_loss": losses[0],
            "final_loss": float(np.mean(losses[-50:])), "loss_curve": _curve(losses),
            "seconds": round(time.perf_counter() - t0, 1), "ctc_readout": ctc_readout(model, cache, samples, head=head)}


def epoch_plan(samples: list, tokenizer, rng: np.random.Generator, batch: int, ctc_caption: bool = False,
               chain_per_epoch: Optional[int] = None) -> list:
    """Shuffled batches of (indices, tasks, target ids, CTC targets); a caption clip's target is one of its
    references. CTC targets: an ASR clip's target; with `ctc_caption` a caption clip's content words
    (`text.content_pieces` of the same reference, + EOS: the layout its slot had in LM pretraining).
    `chain_per_epoch`: an epoch takes every other clip and this many chain-sentence clips drawn afresh
    (None: all of them)."""
    order = epoch_ids(samples, rng, chain_per_epoch)
    out = []
    for i in range(0, len(order), batch):
        idx = [int(j) for j in order[i:i + batch]]
        tasks, tgts, ctc = [], [], []
        for j in idx:
            s = samples[j]
            refs = s.references or [s.text]
            text = s.text if s.task == "asr" else refs[int(rng.integers(len(refs)))]
            tasks.append(s.task)
            tgts.append(target_ids(tokenizer, text))
            if s.task == "asr":
                ctc.append(tgts[-1])
            else:
                ctc.append(content_pieces(tokenizer, text) + [tokenizer.eos_token_id] if ctc_caption else None)
        out.append((idx, tasks, tgts, ctc))
    return out


def epoch_ids(samples: list, rng: np.random.Generator, chain_per_epoch: Optional[int] = None) -> np.ndarray:
    """One epoch's clip indices in shuffled order (see `epoch_plan`)."""
    if chain_per_epoch is None:
        return rng.permutation(len(samples))
    chain = [i for i, s in enumerate(samples) if is_chain(s)]
    rest = [i for i, s in enumerate(samples) if not is_chain(s)]
    drawn = rng.choice(chain, min(chain_per_epoch, len(chain)), replace=False) if chain else []
    return rng.permutation(np.asarray(rest + [int(i) for i in drawn], dtype=np.int64))


def epoch_size(samples: list, chain_per_epoch: Optional[int] = None) -> int:
    if chain_per_epoch is None:
        return len(samples)
    chain = sum(is_chain(s) for s in samples)
    return len(samples) - chain + min(chain_per_epoch, chain)


def train_audio(model, samples: list, cache: FeatureCache, *, epochs: float, batch: int, lr: float,
                lora_lr: Optional[float], warmup: int, weight_decay: float, grad_clip: float, seed: int,
                ctc_weight: float = 0.0, full_share: float = 1.0, max_minutes: Optional[float] = None,
                proj_lr: Optional[float] = None, ctc_head: str = "lm", ctc_caption: bool = False,
                whisper_drop: float = 0.0, warmup_steps: int = 0, warmup_batch: int = 16, warmup_lr: float = 1e-3,
                chain_per_epoch: Optional[int] = None, warmup_augment: Optional[dict] = None,
                progress: Optional[Callable] = None, warmup_progress: Optional[Callable] = None, log=print) -> dict:
    """SALMONN's stage (see the module docstring). `whisper_drop`: share of caption clips trained with their
    Whisper features zeroed (BEATs alone), so that the BEATs branch learns to carry the sound.
    `warmup_steps` of `ctc_warmup` come first (same CTC head, kept for the joint steps); BEATs' output
    LayerNorm (ln_audio) then starts at zero gain, so that the joint steps begin from the inputs the
    warm-up saw (BEATs zeroed) and the BEATs branch opens as it learns."""
    trainable = set_trainable(model)
    rng = np.random.default_rng([seed, 22])
    per_epoch = -(-epoch_size(samples, chain_per_epoch) // batch)
    total = max(1, int(round(epochs * per_epoch)))
    lr_of = partial(_lr_of, lr=lr, lora_lr=lora_lr, proj_lr=proj_lr)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    head = None
    if ctc_weight > 0 or warmup_steps > 0:
        head = CtcHead(ctc_head, model.speech_llama_proj.out_features,
                       model.llama_model.get_input_embeddings().num_embeddings)
        named += [(f"ctc_head.{n}", p) for n, p in head.named_parameters()]
    warm = {"steps": 0}
    if warmup_steps > 0:
        if model.beats is not None:
            with torch.no_grad():
                model.ln_audio.weight.zero_()
                model.ln_audio.bias.zero_()
        warm = ctc_warmup(model, samples, cache, head, steps=warmup_steps, batch=warmup_batch, lr=warmup_lr,
                          seed=seed, proj_lr=proj_lr, progress=warmup_progress, **(warmup_augment or {}))
        if warm["steps"]:  # none without ASR clips
            log(f"audio: CTC warm-up {warm['steps']} steps in {warm['seconds']:.0f} s, loss {warm['first_loss']:.3f} "
                f"-> {warm['final_loss']:.3f}, greedy read-out WER {warm['ctc_readout'].get('wer')}")
    opt = make_optimizer(named, lr, weight_decay, lr_of)
    base = [g["lr"] for g in opt.param_groups]
    params = [p for _, p in named]
    control_before = audio_control(model, cache, samples)
    model.train()
    model.speech_encoder.eval()
    losses, step, t0, stopped = [], 0, time.perf_counter(), None
    task_tail: dict = {}  # task -> [(loss sum, tokens)] per step
    bar = progress(total) if progress else None
    while step < total and stopped is None:
        for idx, tasks, tgts, ctc_tgts in epoch_plan(samples, model.tokenizer, rng, batch, ctc_caption,
                                                     chain_per_epoch):
            if step >= total:
                break
            if max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
                stopped = step
                break
            set_lr(opt, base, warmup_cosine(step, total, warmup))
            keep = kept_windows(model, cache, idx, rng, full_share)
            off = [t == "caption" and rng.random() < whisper_drop for t in tasks] if whisper_drop > 0 else None
            loss, per_task = batch_loss(model, cache, idx, tasks, tgts, ctc_head=head, ctc_weight=ctc_weight,
                                        keep_windows=keep, ctc_targets=ctc_tgts, whisper_off=off)
            for task, (tot, n) in per_task.items():
                task_tail.setdefault(task, []).append((tot, n))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            losses.append(loss.item())
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", **{t: f"{_tail(v):.3f}" for t, v in task_tail.items()})
    if bar is not None:
        bar.close()
    model.eval()
    from .text import _curve

    n_tr = sum(p.numel() for p in params)
    return {"steps": step, "planned_steps": total, "epochs": epochs, "batch": batch, "clips": len(samples),
            "chain_clips": sum(is_chain(s) for s in samples), "chain_per_epoch": chain_per_epoch,
            "stopped_early_at": stopped, "trainable_parameters": n_tr,
            "trainable_tensors": len(trainable), "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(losses[-50:])) if losses else None, "loss_curve": _curve(losses),
            "final_loss_per_task": {t: round(_tail(v), 4) for t, v in task_tail.items()},
            "ctc_weight": ctc_weight, "ctc_head": ctc_head, "ctc_caption": ctc_caption, "whisper_drop": whisper_drop, "full_length_share": full_share, "lr": lr, "lora_lr": lora_lr,
            "proj_lr": proj_lr, "seconds": round(time.perf_counter() - t0, 1),
            "audio_control": {"what": "target loss of the last 16 training clips per task with their own audio vs "
                                      "the audio of other clips (equal = the audio is not read)",
                              "before": control_before, "after": audio_control(model, cache, samples)},
            "ctc_warmup": warm, "ctc_readout": ctc_readout(model, cache, samples, head=head)}


HEAD_SCALE_LR = 0.03  # the CTC head's one scalar (log temperature): at the weights' LR it took thousands of steps


def _lr_of(name: str, *, lr: float, lora_lr: Optional[float], proj_lr: Optional[float]) -> float:
    """LoRA and the projection may have their own LR. The projection writes straight into the LM's
    embedding space, whose scale is small (mean row norm ~0.6 here): an Adam step of `lr` on its
    weights moves a speech token by several embedding norms, and the tokens then drift to norms
    of 20-80 and lose their window-to-window differences (measured), hence a much lower LR."""
    if name == "ctc_head.log_scale":
        return HEAD_SCALE_LR
    if "lora_" in name and lora_lr:
        return lora_lr
    if name.startswith("speech_llama_proj.") and proj_lr:
        return proj_lr
    return lr


@torch.no_grad()
def audio_control(model, cache: FeatureCache, samples: list, n: int = 16, keep_windows: int = 60) -> dict:
    """Does the model read the audio? Per task, the target loss of `n` training clips with their own
    audio and with the audio of other clips of the same task (targets unchanged). Equal losses mean the
    LM answers from its prior alone."""
    was = model.training
    model.eval()
    out = {}
    try:
        for task in ("asr", "caption"):
            ids = [i for i, s in enumerate(samples) if s.task == task][-n:]
            if len(ids) < 2:
                continue
            tg = [target_ids(model.tokenizer, (samples[i].references or [samples[i].text])[0]) for i in ids]
            own, _ = batch_loss(model, cache, ids, [task] * len(ids), tg, keep_windows=keep_windows)
            half = len(ids) // 2
            other, _ = batch_loss(model, cache, ids[half:] + ids[:half], [task] * len(ids), tg, keep_windows=keep_windows)
            out[task] = {"own_audio": round(own.item(), 4), "other_audio": round(other.item(), 4)}
    finally:
        model.train(was)
    return out


@torch.no_grad()
def ctc_readout(model, cache: FeatureCache, samples: list, n: int = 20, keep_windows: int = 60,
                head: Optional[CtcHead] = None) -> dict:
    """Do the speech tokens spell the transcript? Greedy CTC read-out of `n` training ASR clips' speech
    tokens through `head`, by default a fresh `CtcHead("lm")` (the LM's own final norm and output layer;
    a learned scale does not change the argmax; blank = FILLER), scored with corpus WER.
    High = the tokens do not carry the words, whatever the LM does with them."""
    from ..metrics import wer

    ids = [i for i, s in enumerate(samples) if s.task == "asr"][-n:]
    if not ids:
        return {}
    was = model.training
    model.eval()
    try:
        speech = speech_from_features(model, *cached_inputs(cache, ids), keep_windows=keep_windows)
        head = head or CtcHead("lm", speech.shape[-1], model.llama_model.get_input_embeddings().num_embeddings)
        best = head(speech, model.llm_base()).argmax(-1).tolist()
    finally:
        model.train(was)
    hyps = []
    for row in best:
        out = [t for k, t in enumerate(row) if t != FILLER and (k == 0 or t != row[k - 1])]
        hyps.append(model.tokenizer.decode(out).strip())
    refs = [samples[i].text for i in ids]
    return {"clips": len(ids), "wer": round(wer(refs, hyps), 4), "examples": [list(p) for p in zip(refs, hyps)][:3]}


def _tail(pairs: list, n: int = 50) -> float:
    """Token-weighted mean loss over the last n steps."""
    tot = sum(p[0] for p in pairs[-n:])
    cnt = sum(p[1] for p in pairs[-n:])
    return tot / max(cnt, 1)
