"""Parity of an export with the PyTorch model: greedy token ids on real clips, and the speech embeddings' distance."""

from __future__ import annotations

import os

import torch

from ..errors import AudioError, UserError


def parity_check(model, export_dir: str, *, data: str, limit: int = 4, max_new_tokens: int = 32,
                 tasks=("asr", "caption"), ignore_eos: bool = False) -> dict:
    """Greedy decode of the first `limit` clips per task with `model` (PyTorch) and the ONNX Runtime export.

    Returns {"clips", "identical", "differences": [...], "speech_embeds_max_abs_diff", ...}; a clip that
    cannot be read is listed under "errors".
    """
    from ..audio import load_audio
    from ..data.annotations import read_annotations
    from ..outputs import sha256_file
    from .ort_backend import OrtSalmonn

    if limit < 1 or max_new_tokens < 1:
        raise UserError(f"parity check: limit and max_new_tokens must be >= 1 (got {limit}, {max_new_tokens})")
    samples = read_annotations(data, check_files=False)
    chosen = [s for t in tasks for s in [s for s in samples if s.task == t][:limit]]
    if not chosen:
        raise UserError(f"parity check: {data} has no samples for tasks {list(tasks)}")
    ort_model = OrtSalmonn(export_dir)
    same, diffs, errors, emb_diff = 0, [], [], 0.0
    for s in chosen:
        try:
            wav = load_audio(s.path)
        except AudioError as e:
            errors.append({"id": s.id, "error": str(e)})
            continue
        with torch.inference_mode():
            ref_speech = model.encode_audio(**model.prepare_audio([wav])).float()
        ort_speech = ort_model.encode_audio(**ort_model.prepare_audio([wav]))
        emb_diff = max(emb_diff, float((ref_speech.cpu() - ort_speech).abs().max()))
        kw = dict(num_beams=1, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
        ref = model.generate([wav], s.task, **kw)[0].token_ids
        got = ort_model.generate([wav], s.task, **kw)[0].token_ids
        if ref == got:
            same += 1
        else:
            first = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
            diffs.append({"id": s.id, "task": s.task, "first_mismatch": first, "torch": ref, "onnx": got})
    return {"data": os.path.abspath(data), "data_sha256": sha256_file(data), "decoding": "greedy",
            "max_new_tokens": max_new_tokens, "ignore_eos": ignore_eos, "limit_per_task": limit,
            "clips": len(chosen) - len(errors), "identical": same, "differences": diffs, "errors": errors,
            "speech_embeds_max_abs_diff": emb_diff}
