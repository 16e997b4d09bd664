"""Greedy and beam-search decoding over a causal LM fed with input embeddings, with a per-token hook.

Our own loop (not `generate()`) so that a harness can time the first token and every later one,
EOS can be ignored for fixed-length timing, and later steps can swap the cache or compile the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class DecodeOptions:
    max_new_tokens: int = 200
    num_beams: int = 1
    min_length: int = 1  # new tokens before EOS may be chosen
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    eos_ids: list = field(default_factory=list)  # empty = never stop early


def options_from(g, *, max_new_tokens: Optional[int] = None, num_beams: Optional[int] = None,
                 min_length: Optional[int] = None, repetition_penalty: Optional[float] = None,
                 length_penalty: Optional[float] = None, eos_ids: Optional[list] = None) -> DecodeOptions:
    """DecodeOptions from a model's GenerateSettings `g`, each argument overriding its default when given."""
    return DecodeOptions(
        max_new_tokens=max_new_tokens or g.max_new_tokens,
        num_beams=num_beams or g.num_beams,
        min_length=g.min_length if min_length is None else min_length,
        repetition_penalty=g.repetition_penalty if repetition_penalty is None else repetition_penalty,
        length_penalty=g.length_penalty if length_penalty is None else length_penalty,
        eos_ids=list(eos_ids or []),
    )


def tokens_to_text(tokenizer, ids: list) -> str:
    """Generated ids -> text; ids past the tokenizer (padded embedding rows) and special tokens dropped."""
    n = len(tokenizer)
    return tokenizer.decode([i for i in ids if i < n], skip_special_tokens=True).strip()


def apply_repetition_penalty(logits: torch.Tensor, seqs: list, penalty: float) -> torch.Tensor:
    """CTRL-style penalty, as transformers applies it: divide positive, multiply negative logits."""
    if penalty == 1.0:
        return logits
    logits = logits.clone()
    for row, seq in enumerate(seqs):
        if seq:
            idx = torch.tensor(sorted(set(seq)), device=logits.device)
            v = logits[row, idx]
            logits[row, idx] = torch.where(v > 0, v / penalty, v * penalty)
    return logits


def suppress_eos(logits: torch.Tensor, eos_ids: list, step: int, min_length: int) -> torch.Tensor:
    if eos_ids and step < min_length:
        logits = logits.clone()
        logits[:, eos_ids] = float("-inf")
    return logits


class _Stepper:
    """Holds the KV cache and positions; one call = one forward over new embeddings."""

    def __init__(self, model, embeds: torch.Tensor, mask: torch.Tensor):
        self.model = model
        self.emb = model.get_input_embeddings()
        self.mask = mask
        self.pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, S)
        self.cache = None
        self.logits = self._forward(embeds, self.pos)

    def _forward(self, embeds, pos):
        out = self.model(inputs_embeds=embeds, attention_mask=self.mask, position_ids=pos,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1, :].float()  # (B, V)

    def advance(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) -> logits (B, V) for the next position."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.pos = self.pos[:, -1:] + 1
        self.logits = self._forward(self.emb(tokens[:, None]), self.pos)
        return self.logits

    def reorder(self, rows: torch.Tensor):
        self.cache.reorder_cache(rows)
        self.mask = self.mask[rows]
        self.pos = self.pos[rows]


def decode(model, embeds: torch.Tensor, mask: torch.Tensor, opts: DecodeOptions,
           on_token: Optional[Callable[[int], None]] = None) -> list:
    """(B, S, D) prompt embeddings -> list of B generated token-id lists (EOS excluded)."""
    if opts.num_beams == 1:
        return _greedy(model, embeds, mask, opts, on_token)
    return _beam(model, embeds, mask, opts, on_token)


def _greedy(model, embeds, mask, opts, on_token):
    b = embeds.shape[0]
    eos = set(opts.eos_ids)
    seqs = [[] for _ in range(b)]
    done = [False] * b
    st = _Stepper(model, embeds, mask)
    logits = st.logits
    for step in range(opts.max_new_tokens):
        logits = apply_repetition_penalty(logits, seqs, opts.repetition_penalty)
        logits = suppress_eos(logits, opts.eos_ids, step, opts.min_length)
        nxt = logits.argmax(-1)  # (B,)
        ids = nxt.tolist()  # host sync: the token ids are on the host from here
        for i, t in enumerate(ids):
            if not done[i]:
                if t in eos:
                    done[i] = True
                else:
                    seqs[i].append(t)
        if on_token is not None:
            on_token(step)
        if all(done) or step == opts.max_new_tokens - 1:
            break
        logits = st.advance(nxt)
    return seqs


def _beam(model, embeds, mask, opts, on_token):
    b, k = embeds.shape[0], opts.num_beams
    eos = set(opts.eos_ids)
    lp = opts.length_penalty
    # Every beam starts from the same prompt: expand before prefill (simple, exact).
    embeds = embeds.repeat_interleave(k, dim=0)
    mask = mask.repeat_interleave(k, dim=0)
    st = _Stepper(model, embeds, mask)
    logits = st.logits
    beams = [[] for _ in range(b * k)]
    scores = torch.zeros(b, k, device=embeds.device)
    scores[:, 1:] = float("-inf")  # only the first beam is live at step 0
    finished = [[] for _ in range(b)]  # (normalised score, seq)
    done = [False] * b
    for step in range(opts.max_new_tokens):
        logits = apply_repetition_penalty(logits, beams, opts.repetition_penalty)
        logits = suppress_eos(logits, opts.eos_ids, step, opts.min_length)
        logp = torch.log_softmax(logits, dim=-1)  # (B*K, V)
        v = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(b, k * v)
        top_s, top_i = cand.topk(2 * k, dim=1)  # (B, 2K)
        top_s, top_i = top_s.tolist(), top_i.tolist()  # host sync
        rows, toks, new_scores, new_beams = [], [], [], []
        for i in range(b):
            picked = 0
            for s, idx in zip(top_s[i], top_i[i]):
                src, tok = i * k + idx // v, idx % v
                if done[i]:
                    s, tok = 0.0, 0  # keep shapes; this sample is finished
                elif tok in eos:
                    if len(finished[i]) < k or s / (step + 1) ** lp > min(f[0] for f in finished[i]):
                        finished[i].append((s / (step + 1) ** lp, list(beams[src])))
                        finished[i] = sorted(finished[i], key=lambda f: -f[0])[:k]
                    continue
                rows.append(src)
                toks.append(tok)
                new_scores.append(s)
                new_beams.append(beams[src] + [tok])
                picked += 1
                if picked == k:
                    break
            while picked < k:  # everything was EOS: pad with dead beams
                rows.append(i * k)
                toks.append(0)
                new_scores.append(float("-inf"))
                new_beams.append(list(beams[i * k]))
                picked += 1
        if on_token is not None:
            on_token(step)
        beams = new_beams
        scores = torch.tensor(new_scores, device=scores.device).view(b, k)
        for i in range(b):
            if not done[i] and len(finished[i]) >= k:
                best_live = scores[i].max().item() / (step + 1) ** lp
                done[i] = best_live <= min(f[0] for f in finished[i])
        if all(done) or step == opts.max_new_tokens - 1:
            break
        rows_t = torch.tensor(rows, device=embeds.device)
        st.reorder(rows_t)
        logits = st.advance(torch.tensor(toks, device=embeds.device))
    n = len(beams[0]) if beams else 0
    out = []
    for i in range(b):
        cands = list(finished[i])
        if not done[i]:
            for j in range(k):
                s = scores[i, j].item()
                if s > float("-inf"):
                    cands.append((s / max(n, 1) ** lp, beams[i * k + j]))
        out.append(max(cands, key=lambda f: f[0])[1] if cands else [])
    return out
