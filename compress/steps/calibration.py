"""Calibration through the real audio path, and the block-by-block driver that lets later blocks see pruned earlier ones."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .schema import CalibrationConfig


@dataclass
class CalibSample:
    id: str
    audio: object  # np.ndarray, 16 kHz mono
    task: str
    reference: str


def resolve_data_path(path: str, base_dir: Optional[str]) -> str:
    for cand in (os.path.join(base_dir, path) if base_dir else None, path):
        if cand and os.path.isfile(cand):
            return os.path.abspath(cand)
    raise ConfigError(f"data file {path!r} not found (looked relative to {base_dir!r} and the working directory)")


def load_calibration(cfg: CalibrationConfig, base_dir: Optional[str] = None) -> list:
    """`samples` clips drawn (seeded) from the annotation file, balanced over the tasks."""
    from ..audio import load_audio
    from ..data.annotations import read_annotations
    from ..models.config import resolve_task

    path = resolve_data_path(cfg.data, base_dir)
    tasks = [resolve_task(t) for t in cfg.tasks]
    pool = {t: [s for s in read_annotations(path) if s.task == t] for t in tasks}
    rng = random.Random(cfg.seed)
    chosen = []
    for i, t in enumerate(tasks):
        n = cfg.samples // len(tasks) + (1 if i < cfg.samples % len(tasks) else 0)
        if len(pool[t]) < n:
            raise ConfigError(f"calibration: {path} has {len(pool[t])} {t} samples, {n} requested")
        chosen += rng.sample(pool[t], n)
    return [CalibSample(s.id, load_audio(s.path), s.task, s.text) for s in chosen]


def reference_ids(model, text: str) -> list:
    """Token ids of an answer as the LLM should produce it after the prompt, EOS included (as trained)."""
    from ..models.salmonn import answer_ids

    return answer_ids(model.tokenizer, text)


def clip_speech_tokens(model, num_samples: int, margin: int = 2) -> int:
    """Speech tokens of the windows a clip of `num_samples` (16 kHz) covers, plus `margin` windows."""
    from ..models.salmonn import real_mel_frames, window_count

    cfg = model.cfg
    enc = real_mel_frames(num_samples, cfg.window_kernel, cfg.window_stride) // 2
    return (window_count(enc, cfg.window_kernel, cfg.window_stride) + margin) * cfg.num_speech_query_token


def llm_inputs(model, s: CalibSample, with_reference: bool = True, inputs: str = "audio",
               speech_windows: str = "all") -> tuple:
    """What the LLM sees in use: [BOS, prompt, speech tokens, prompt] (+ the reference answer and EOS).

    inputs='text': [BOS] + the reference answer only (no audio, no prompt): text-only calibration.
    speech_windows='clip': only the speech tokens of the clip's windows (`clip_speech_tokens`); the audio
    path still encodes the padded 30 s as in use.
    """
    if inputs == "text":
        bos = model.tokenizer.bos_token_id
        ids = ([bos] if bos is not None else []) + reference_ids(model, s.reference)
        emb = model.llama_model.get_input_embeddings()(torch.tensor([ids], device=model.device))
        return emb, torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
    speech = model.encode_audio(**model.prepare_audio([s.audio]))
    if speech_windows == "clip":
        speech = speech[:, : clip_speech_tokens(model, len(s.audio))]
    emb, mask = model.build_inputs(speech, model.instruction_for(s.task))
    if with_reference and s.reference:
        ids = reference_ids(model, s.reference)
        ref = model.llama_model.get_input_embeddings()(torch.tensor([ids], device=emb.device))
        emb = torch.cat([emb, ref.to(emb.dtype)], dim=1)
        mask = torch.ones(emb.shape[:2], dtype=mask.dtype, device=mask.device)
    return emb, mask


def full_forward(model, s: CalibSample, with_reference: bool = True, inputs: str = "audio",
                 speech_windows: str = "all") -> None:
    emb, mask = llm_inputs(model, s, with_reference, inputs, speech_windows)
    model.llama_model(inputs_embeds=emb, attention_mask=mask, use_cache=False)


def part_blocks(model, part: str) -> Optional[nn.ModuleList]:
    """The repeated blocks of a part, in order (None for parts without blocks)."""
    if part == "llm":
        return model.llm_base().model.layers
    if part == "speech_encoder":
        return model.speech_encoder.layers
    if part == "beats":
        return model.beats.encoder.layers if model.beats is not None else None
    if part == "qformer":
        return model.speech_Qformer.bert.encoder.layer
    return None


def block_output(out):
    """Hidden states out of a block (some blocks return a tuple, e.g. BEATs' (x, position_bias))."""
    return out[0] if isinstance(out, tuple) else out


def run_hooked(handles: list, fn: Callable) -> None:
    """Run fn() with hooks installed, removing them whatever happens."""
    try:
        fn()
    finally:
        for h in handles:
            h.remove()


def counted(forward: Callable, bar) -> Callable:
    """forward() that advances a progress bar (closed after its `total` calls; later calls are not counted)."""
    calls = [0]

    def f(sample):
        try:
            return forward(sample)
        finally:  # a forward stopped early (sequential_blocks' shared_call) counts too
            calls[0] += 1
            if calls[0] <= bar.total:
                bar.update(1)
                if calls[0] == bar.total:
                    bar.close()

    return f


class _StopForward(Exception):
    """Raised by the first block's hook once it has its inputs, when no later block needs the forward to go on."""


def forward_all(forward: Callable, samples: list) -> Callable:
    """run() feeding every sample through `forward`; a forward a hook stops early (_StopForward) ends quietly."""
    def run():
        for s in samples:
            try:
                forward(s)
            except _StopForward:
                pass

    return run


def linears_by_block(blocks, linears: dict) -> list:
    """For each block, {name: module} of the given Linears inside it (empty for a block with none)."""
    owner = {id(m): n for n, m in linears.items()}
    return [{owner[id(m)]: m for m in block.modules() if id(m) in owner} for block in blocks]


@torch.no_grad()
def sequential_blocks(blocks: nn.ModuleList, samples: list, forward: Callable, visit: Callable,
                      progress=None, shared_call: bool = False) -> None:
    """Record each block's real inputs once, then for block i: visit(i, block, run), where run() feeds the
    (already pruned) previous block's outputs through block i; after visit, its outputs feed block i+1.

    shared_call: every block takes the same arguments besides the hidden states (a Hugging Face decoder's layers
    get the same mask and position embeddings), so each forward stops at the first block and its call serves all
    blocks: the rest of the network, and everything after it, does not run for nothing."""
    calls = [[] for _ in blocks]
    first = []

    def hook_for(i):
        def hook(mod, args, kwargs):
            if i == 0:
                first.append(args[0].detach())
            # a KV cache would make each replay attend to the recorded tokens as well
            calls[i].append((args[1:], {k: v for k, v in kwargs.items() if k != "past_key_values"}))
            if shared_call:
                raise _StopForward

        return hook

    watched = blocks[:1] if shared_call else blocks
    handles = [b.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(watched)]
    run_hooked(handles, forward_all(forward, samples))
    if shared_call:
        calls = [calls[0]] * len(blocks)
    hidden = first
    for i, block in enumerate(blocks):
        def run(block=block, i=i, hidden=hidden):
            return [block_output(block(h, *a, **k)) for h, (a, k) in zip(hidden, calls[i])]

        visit(i, block, run)
        hidden = run()
        calls[i] = None  # free this block's records (shared: the last reference goes with the last block)
        if progress is not None:
            progress.update(1)


@torch.no_grad()
def collect_input_norms(linears: dict, run: Callable) -> dict:
    """Sum over all calibration tokens of x_j^2 for the input of each Linear, observed while run() executes."""
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}

    def hook_for(name):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] += (x * x).sum(0).cpu()

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in linears.items()]
    run_hooked(handles, run)
    return sums


@torch.no_grad()
def collect_hessians(linears: dict, run: Callable) -> dict:
    """H = 2 X^T X / n of each Linear's inputs (GPTQ and SparseGPT), observed while run() executes."""
    from ..quant.gptq_math import HessianAccumulator

    accs = {n: HessianAccumulator(m.in_features, device=m.weight.device) for n, m in linears.items()}
    handles = [m.register_forward_pre_hook(lambda mod, args, n=n: accs[n].add(args[0])) for n, m in linears.items()]
    run_hooked(handles, run)
    return accs


def _one_layer_type(model) -> bool:
    """Whether every LLM layer is called alike (no mix of full and sliding-window attention layers)."""
    types = getattr(model.llm_base().config, "layer_types", None) or ()
    return len(set(types)) <= 1


def by_blocks(model, linears: dict, ctx, collect: Callable, act: Callable, *, sequential: bool = True,
              label: str = "") -> None:
    """The driver of calibrated steps. For each part in data-flow order (upstream parts are changed before
    downstream ones calibrate), and block by block within it so later blocks see the already changed
    earlier ones: stats = collect(group, run) observes the group's Linears while run() executes, then
    act(group, stats) changes them. Targeted Linears outside the blocks go last, on full forwards."""
    from ..models.salmonn import PARTS, part_of

    samples = ctx.calibration()
    for part in PARTS:
        mine = {n: m for n, m in linears.items() if part_of(n) == part}
        if not mine:
            continue
        fwd = counted(ctx.calibration_forward, ctx.bar(len(samples), f"{label} {part}: calibration forwards"))
        blocks = part_blocks(model, part)
        done = set()
        if blocks is not None and sequential:
            groups = linears_by_block(blocks, mine)

            def visit(i, block, run):
                group = groups[i]
                done.update(group)
                if group:
                    act(group, collect(group, run))

            bar = ctx.bar(len(blocks), f"{label} {part}")
            sequential_blocks(blocks, samples, fwd, visit, bar, shared_call=part == "llm" and _one_layer_type(model))
            bar.close()
        rest = {n: m for n, m in mine.items() if n not in done}
        if rest:
            act(rest, collect(rest, forward_all(fwd, samples)))
