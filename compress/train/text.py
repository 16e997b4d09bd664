"""The text side: training corpus, a byte-level BPE tokenizer trained on it, and LM pretraining of the small Llama."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..models.config import SalmonnConfig
from ..models.salmonn import prompt_ids as model_prompt_ids, prompt_text
from .optim import make_optimizer, set_lr, warmup_cosine

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD, BOS, EOS, UNK = 0, 1, 2, 3


@dataclass
class Corpus:
    """Unique training texts with the task whose instruction they answer."""

    asr: list  # normalised sentences (lower case, no punctuation), as the ASR targets
    caption: list  # caption references as written

    def items(self) -> list:
        return [("asr", t) for t in self.asr] + [("caption", t) for t in self.caption]


def build_corpus(samples: list, extra_sentences: Optional[list] = None) -> Corpus:
    """Texts of the training samples (ASR transcripts, every caption reference) plus optional extra train sentences."""
    asr = _unique([s.text for s in samples if s.task == "asr"] + list(extra_sentences or []))
    cap = _unique([r for s in samples if s.task == "caption" for r in (s.references or [s.text])])
    return Corpus(asr=asr, caption=cap)


def _unique(texts) -> list:
    seen, out = set(), []
    for t in texts:
        t = " ".join(t.split())
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def train_tokenizer(corpus: Corpus, cfg: SalmonnConfig, vocab_size: int):
    """Byte-level BPE (GPT-2 style pre-tokenisation) on the corpus and the prompts; a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    prompts = [p for task in cfg.instructions for p in prompt_text(cfg, cfg.instructions[task])]
    texts = [" " + t for _, t in corpus.items()] + prompts * 50
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)
    assert [fast.convert_tokens_to_ids(s) for s in SPECIALS] == [PAD, BOS, EOS, UNK]
    return fast


def target_ids(tokenizer, text: str) -> list:
    """Answer tokens as they follow 'ASSISTANT:' (leading space), then EOS."""
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


FILLER = UNK  # stands for a speech window without a token in the slot-reading sequences
STOPWORDS = frozenset("a an the and or of to in on at by with from as is are was were be been it its this that "
                      "then while into over after before behind through up down out some one".split())


def slot_tokens(tokenizer, task: str, text: str, n_slots: int, rng: np.random.Generator) -> list:
    """Token ids for the speech slot of a slot-reading sequence (always `n_slots` long).

    ASR: the answer's tokens in order, spread with random filler gaps (as a few seconds of speech
    occupy the first windows of 30 s). Captioning: one to three content words of the caption at
    random places. The rest is filler.
    """
    if task == "asr":
        toks = tokenizer(" " + text, add_special_tokens=False)["input_ids"][: n_slots - 4]
        slot = [FILLER] * int(rng.integers(0, 4))
        for t in toks:
            slot.append(t)
            if rng.random() < 0.35 and len(slot) < n_slots - (len(toks) - len(slot)):
                slot.append(FILLER)
    else:
        words = [w for w in text.lower().replace(",", " ").split() if w not in STOPWORDS] or text.lower().split()
        k = min(len(words), int(rng.integers(1, 4)))
        picked = sorted(rng.choice(len(words), size=k, replace=False))
        slot = [FILLER] * int(rng.integers(0, 6))
        for i in picked:
            slot += tokenizer(" " + words[i], add_special_tokens=False)["input_ids"]
            slot += [FILLER] * int(rng.integers(0, 4))
    slot = slot[:n_slots]
    return slot + [FILLER] * (n_slots - len(slot))


def short_slot(slot: list, rng: np.random.Generator, full_share: float) -> list:
    """The slot as the audio stage's training batches see it (audio_stage.kept_windows): all of it for
    `full_share` of the sequences, else through its last token plus 2-24 filler windows."""
    if rng.random() < full_share:
        return slot
    last = max((i for i, t in enumerate(slot) if t != FILLER), default=0)
    return slot[: min(len(slot), last + 1 + int(rng.integers(2, 25)))]


def lm_sequences(corpus: Corpus, tokenizer, cfg: SalmonnConfig, rng: np.random.Generator, prompted_share: float,
                 slot_share: float = 0.0, n_slots: int = 88, slot_full_share: float = 1.0):
    """One epoch of LM sequences over the corpus, each text in one of three layouts:

    plain (BOS + answer + EOS); the SALMONN prompt with an empty speech slot (`prompted_share`);
    the SALMONN prompt with text in the speech slot (`slot_share`): the transcript itself for ASR,
    a few words of the caption for captioning, so the small LM learns to read its speech slot.
    Slots are cut short as the audio stage cuts its windows (`short_slot`) but in `slot_full_share`.
    """
    prompt_ids = {task: model_prompt_ids(tokenizer, cfg, cfg.instructions[task]) for task in cfg.instructions}
    seqs = []
    for task, text in corpus.items():
        ids = target_ids(tokenizer, text)
        r = rng.random()
        before, after = prompt_ids[task]
        if r < slot_share:
            slot = short_slot(slot_tokens(tokenizer, task, text, n_slots, rng), rng, slot_full_share)
            ids = before + slot + after + ids
        elif r < slot_share + prompted_share:
            ids = before + after + ids
        seqs.append([tokenizer.bos_token_id] + ids)
    order = rng.permutation(len(seqs))
    return [seqs[i] for i in order]


def length_batches(seqs: list, batch: int, rng: np.random.Generator, pool: int = 50) -> list:
    """Batches of similar lengths (less padding): sort pools of `pool` batches by length, shuffle the batches."""
    out = []
    for i in range(0, len(seqs), batch * pool):
        part = sorted(seqs[i:i + batch * pool], key=len)
        out += [part[j:j + batch] for j in range(0, len(part), batch)]
    return [out[k] for k in rng.permutation(len(out))]


def pad_batch(seqs: list, pad: int = PAD) -> tuple:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)


@torch.no_grad()
def lm_eval_loss(model, tokenizer, texts: list, batch: int = 64) -> float:
    """Mean per-token loss of BOS + ' text' + EOS (plain layout) over `texts`."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(texts), batch):
        seqs = [[tokenizer.bos_token_id] + target_ids(tokenizer, t) for t in texts[i:i + batch]]
        ids, mask = pad_batch(seqs)
        k = int(mask[:, 1:].sum())
        tot += float(lm_loss(model, ids, mask)) * k
        n += k
    model.train(was)
    return tot / max(n, 1)


@torch.no_grad()
def slot_reading(model, tokenizer, cfg: SalmonnConfig, corpus: Corpus, n_slots: int, seed: int, n: int = 32) -> dict:
    """Does the pretrained LM read its speech slot? Per task, the answer's loss after a slot holding the
    text of the same item vs of another item (`n` items, cut slots as in training). Equal = it does not."""
    rng = np.random.default_rng([seed, 44])
    was = model.training
    model.eval()
    out = {}
    try:
        for task, texts in (("asr", corpus.asr), ("caption", corpus.caption)):
            texts = [texts[i] for i in rng.permutation(len(texts))[:n]]
            if len(texts) < 2:
                continue
            before, after = model_prompt_ids(tokenizer, cfg, cfg.instructions[task])
            slots = [short_slot(slot_tokens(tokenizer, task, t, n_slots, rng), rng, 0.0) for t in texts]
            res = {}
            for name, shift in (("own_slot", 0), ("other_slot", len(texts) // 2)):
                seqs, starts = [], []
                for k, t in enumerate(texts):
                    head = [tokenizer.bos_token_id] + before + slots[(k + shift) % len(texts)] + after
                    starts.append(len(head))
                    seqs.append(head + target_ids(tokenizer, t))
                ids, mask = pad_batch(seqs)
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                for k, st in enumerate(starts):
                    labels[k, : st - 1] = -100
                res[name] = round(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                  ignore_index=-100).item(), 4)
            out[task] = res
    finally:
        model.train(was)
    return out


def pretrain_lm(model, corpus: Corpus, tokenizer, cfg: SalmonnConfig, *, epochs: float, batch: int, lr: float,
                warmup: int, weight_decay: float, prompted_share: float, seed: int, slot_share: float = 0.0,
                n_slots: int = 88, slot_full_share: float = 1.0, progress: Optional[Callable] = None) -> dict:
    """Train the causal LM on the corpus (all weights); returns a report with the loss curve."""
    rng = np.random.default_rng([seed, 11])
    n_items = len(corpus.items())
    steps_per_epoch = math.ceil(n_items / batch)
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = make_optimizer(model.named_parameters(), lr, weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    model.train()
    losses, step, t0 = [], 0, time.perf_counter()
    bar = progress(total) if progress else None
    first = None
    while step < total:
        seqs = lm_sequences(corpus, tokenizer, cfg, rng, prompted_share, slot_share, n_slots, slot_full_share)
        for chunk in length_batches(seqs, batch, rng):
            if step >= total:
                break
            set_lr(opt, base, warmup_cosine(step, total, warmup))
            ids, mask = pad_batch(chunk)
            loss = lm_loss(model, ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            first = losses[0] if first is None else first
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return {"steps": total, "epochs": epochs, "sequences_per_epoch": n_items, "first_loss": first,
            "final_loss": float(np.mean(losses[-max(1, min(50, len(losses))):])), "loss_curve": _curve(losses),
            "seconds": round(time.perf_counter() - t0, 1)}


def _curve(losses: list, points: int = 20) -> list:
    """A short loss curve for the manifest: means of `points` equal chunks."""
    if not losses:
        return []
    chunks = np.array_split(np.asarray(losses), min(points, len(losses)))
    return [round(float(c.mean()), 4) for c in chunks]
