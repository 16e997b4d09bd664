"""The text side: training corpus, a byte-level BPE tokenizer trained on it, and LM pretraining of the small Llama."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.build import is_chain
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
    """Texts of the training samples (ASR transcripts, every caption reference) plus optional extra train sentences.
    Chain-sentence clips (``sentence_source: chain``, word-bigram sequences) stay out: the LM learns real text."""
    asr = _unique([s.text for s in samples if s.task == "asr" and not is_chain(s)] + list(extra_sentences or []))
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


def content_pieces(tokenizer, text: str) -> list:
    """Word pieces of a caption's content words, in order (stop words and commas dropped): what a
    captioning clip's speech slot holds in LM pretraining, and the CTC target of its speech tokens."""
    words = [w for w in text.lower().replace(",", " ").split() if w not in STOPWORDS] or text.lower().split()
    return [t for w in words for t in tokenizer(" " + w, add_special_tokens=False)["input_ids"]]


def spread(pieces: list, n_slots: int, rng: np.random.Generator) -> list:
    """`pieces` in order after a random 0-3 filler lead, a filler after each with probability 0.35, then
    filler up to `n_slots` (as a few seconds of sound occupy the first windows of 30 s)."""
    slot = [FILLER] * int(rng.integers(0, 4))
    for t in pieces:
        slot.append(t)
        if rng.random() < 0.35 and len(slot) < n_slots - (len(pieces) - len(slot)):
            slot.append(FILLER)
    slot = slot[:n_slots]
    return slot + [FILLER] * (n_slots - len(slot))


def slot_tokens(tokenizer, task: str, text: str, n_slots: int, rng: np.random.Generator) -> list:
    """Token ids for the speech slot of a slot-reading sequence (always `n_slots` long).

    ASR: the answer's tokens in order; captioning: the caption's content words in order
    (`content_pieces`); both laid out by `spread`.
    """
    pieces = (tokenizer(" " + text, add_special_tokens=False)["input_ids"] if task == "asr"
              else content_pieces(tokenizer, text))[: n_slots - 4]
    return spread(pieces, n_slots, rng)


def short_slot(slot: list, rng: np.random.Generator, full_share: float) -> list:
    """The slot as the audio stage's training batches see it (audio_stage.kept_windows): all of it for
    `full_share` of the sequences, else through its last token plus 2-24 filler windows."""
    if rng.random() < full_share:
        return slot
    last = max((i for i, t in enumerate(slot) if t != FILLER), default=0)
    return slot[: min(len(slot), last + 1 + int(rng.integers(2, 25)))]


def copy_slot(tokenizer, n_tokens: int, n_slots: int, rng: np.random.Generator) -> tuple:
    """A synthetic copy item: (slot, answer) for `n_tokens` random word pieces (no specials) laid out as
    `slot_tokens` lays out a transcript. With real sentences the LM can lower its answer loss from its
    prior alone; random pieces can only be predicted by reading the slot, which forces the copy circuit."""
    toks = [int(t) for t in rng.integers(len(SPECIALS), len(tokenizer), size=n_tokens)]
    return spread(toks[: n_slots - 4], n_slots, rng), toks + [tokenizer.eos_token_id]


def prompt_item(bos: int, prompt: tuple, slot: list, answer: list, answer_only: bool = True) -> tuple:
    """(ids, first scored position) of BOS + prompt-before + slot + prompt-after + answer; with `answer_only`
    only the answer is scored, else every token after BOS."""
    before, after = prompt
    head = [bos] + before + slot + after
    return head + answer, len(head) if answer_only else 1


def lm_sequences(corpus: Corpus, tokenizer, cfg: SalmonnConfig, rng: np.random.Generator, prompted_share: float,
                 slot_share: float = 0.0, n_slots: int = 88, slot_full_share: float = 1.0, copy_share: float = 0.0,
                 answer_only: bool = True) -> list:
    """One epoch of LM sequences over the corpus as (ids, first scored position), each text in one of three layouts:

    plain (BOS + answer + EOS, every token scored); the SALMONN prompt with an empty speech slot
    (`prompted_share`); the SALMONN prompt with text in the speech slot (`slot_share`): the transcript
    itself for ASR, the caption's content words for captioning, so the small LM learns to read its speech
    slot. Slots are cut short as the audio stage cuts its windows (`short_slot`) but in `slot_full_share`.
    Plus `copy_share` x the corpus size synthetic copy items (`copy_slot`, ASR prompt).

    With `answer_only` the prompt layouts score only the answer: scoring the slot too spends most of
    the loss on predicting slot contents and fillers, and the copy circuit then did not form at all
    (a fresh 4-layer LM on random 4-20-piece copies, 800 steps: answer accuracy 7%; answer-only, the
    same task reached 44% in 400 steps and rising; measured in session 5).
    """
    prompt_ids = {task: model_prompt_ids(tokenizer, cfg, cfg.instructions[task]) for task in cfg.instructions}
    bos, seqs = tokenizer.bos_token_id, []
    for task, text in corpus.items():
        ids = target_ids(tokenizer, text)
        r = rng.random()
        if r < slot_share:
            slot = short_slot(slot_tokens(tokenizer, task, text, n_slots, rng), rng, slot_full_share)
            seqs.append(prompt_item(bos, prompt_ids[task], slot, ids, answer_only))
        elif r < slot_share + prompted_share:
            seqs.append(prompt_item(bos, prompt_ids[task], [], ids, answer_only))
        else:
            seqs.append(([bos] + ids, 1))
    seqs += copy_sequences(tokenizer, cfg, rng, int(round(copy_share * len(corpus.items()))), n_slots,
                           slot_full_share, answer_only)
    order = rng.permutation(len(seqs))
    return [seqs[i] for i in order]


def copy_sequences(tokenizer, cfg: SalmonnConfig, rng: np.random.Generator, n: int, n_slots: int,
                   slot_full_share: float, answer_only: bool = True) -> list:
    """`n` synthetic copy items (`copy_slot`, 4-20 pieces) in the ASR prompt layout, as (ids, first scored position)."""
    prompt = model_prompt_ids(tokenizer, cfg, cfg.instructions["asr"])
    out = []
    for _ in range(n):
        slot, answer = copy_slot(tokenizer, int(rng.integers(4, 21)), n_slots, rng)
        out.append(prompt_item(tokenizer.bos_token_id, prompt, short_slot(slot, rng, slot_full_share), answer,
                               answer_only))
    return out


def length_batches(seqs: list, batch: int, rng: np.random.Generator, pool: int = 50, key=len) -> list:
    """Batches of similar lengths (less padding): sort pools of `pool` batches by length, shuffle the batches."""
    out = []
    for i in range(0, len(seqs), batch * pool):
        part = sorted(seqs[i:i + batch * pool], key=key)
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


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor, starts: Optional[list] = None) -> torch.Tensor:
    """Mean next-token loss; with `starts`, row k scores only the tokens from position starts[k] on."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    for k, st in enumerate(starts or []):
        labels[k, : st - 1] = -100
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
    text of the same item vs of another item (`n` items, cut slots as in training); `copy` uses
    synthetic random-piece items (`copy_slot`), where only reading helps. Equal = it does not read."""
    rng = np.random.default_rng([seed, 44])
    was = model.training
    model.eval()
    out = {}
    try:
        for task, texts in (("asr", corpus.asr), ("caption", corpus.caption), ("copy", None)):
            if task == "copy":
                items = [copy_slot(tokenizer, int(rng.integers(4, 21)), n_slots, rng) for _ in range(n)]
            else:
                texts = [texts[i] for i in rng.permutation(len(texts))[:n]]
                items = [(slot_tokens(tokenizer, task, t, n_slots, rng), target_ids(tokenizer, t)) for t in texts]
            if len(items) < 2:
                continue
            prompt = model_prompt_ids(tokenizer, cfg, cfg.instructions["asr" if task == "copy" else task])
            slots = [short_slot(slot, rng, 0.0) for slot, _ in items]
            res = {}
            for name, shift in (("own_slot", 0), ("other_slot", len(items) // 2)):
                seqs = [prompt_item(tokenizer.bos_token_id, prompt, slots[(k + shift) % len(items)], answer)
                        for k, (_, answer) in enumerate(items)]
                ids, mask = pad_batch([q for q, _ in seqs])
                res[name] = round(lm_loss(model, ids, mask, [st for _, st in seqs]).item(), 4)
            out[task] = res
    finally:
        model.train(was)
    return out


def pretrain_lm(model, corpus: Corpus, tokenizer, cfg: SalmonnConfig, *, epochs: float, batch: int, lr: float,
                warmup: int, weight_decay: float, prompted_share: float, seed: int, slot_share: float = 0.0,
                n_slots: int = 88, slot_full_share: float = 1.0, copy_share: float = 0.0, answer_only: bool = True,
                copy_steps: int = 0, progress: Optional[Callable] = None) -> dict:
    """Train the causal LM (all weights): first `copy_steps` steps on synthetic copy items alone (the copy
    circuit forms there: a fresh LM learned it in a few hundred steps of copies alone, and hardly at all
    among text), then `epochs` over the corpus (`lm_sequences`); returns a report with the loss curve."""
    rng = np.random.default_rng([seed, 11])
    n_items = len(corpus.items()) + int(round(copy_share * len(corpus.items())))
    steps_per_epoch = math.ceil(n_items / batch)
    total = copy_steps + max(1, int(round(epochs * steps_per_epoch)))
    opt = make_optimizer(model.named_parameters(), lr, weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    model.train()
    losses, step, t0 = [], 0, time.perf_counter()
    bar = progress(total) if progress else None
    first = None
    while step < total:
        if step < copy_steps:
            seqs = copy_sequences(tokenizer, cfg, rng, (copy_steps - step) * batch, n_slots, slot_full_share,
                                  answer_only)
        else:
            seqs = lm_sequences(corpus, tokenizer, cfg, rng, prompted_share, slot_share, n_slots, slot_full_share,
                                copy_share, answer_only)
        for chunk in length_batches(seqs, batch, rng, key=lambda s: len(s[0])):
            if step >= total:
                break
            set_lr(opt, base, warmup_cosine(step, total, warmup))
            ids, mask = pad_batch([s for s, _ in chunk])
            loss = lm_loss(model, ids, mask, [st for _, st in chunk])
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
    return {"steps": total, "copy_steps": copy_steps, "epochs": epochs, "sequences_per_epoch": n_items,
            "first_loss": first,
            "final_loss": float(np.mean(losses[-max(1, min(50, len(losses))):])), "loss_curve": _curve(losses),
            "seconds": round(time.perf_counter() - t0, 1)}


def _curve(losses: list, points: int = 20) -> list:
    """A short loss curve for the manifest: means of `points` equal chunks."""
    if not losses:
        return []
    chunks = np.array_split(np.asarray(losses), min(points, len(losses)))
    return [round(float(c.mean()), 4) for c in chunks]
