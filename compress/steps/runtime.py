"""Recipe steps of the runtime switches (`sdpa`, `real_length`, `compile`, `liger`): each applies its switch
(compress/runtime.py), notes it in the config so that loading re-applies it, and measures what it changed.
"""

from __future__ import annotations

import time
import torch

from ..errors import ConfigError
from ..runtime import apply_liger, compile_parts, record_runtime, set_attention
from .registry import Step, register
from .schema import CompileConfig, LigerConfig, RealLengthConfig, SdpaConfig  # noqa: F401


# ------------------------------------------------------------------------------------ measuring helpers
def _clip(ctx):
    return ctx.calibration()[0]


@torch.inference_mode()
def _speech(model, clip) -> torch.Tensor:
    return model.encode_audio(**model.prepare_audio([clip.audio])).float()


@torch.inference_mode()
def _greedy(model, clip, n: int) -> list:
    return model.generate([clip.audio], clip.task, num_beams=1, max_new_tokens=n, ignore_eos=True)[0].token_ids


# ------------------------------------------------------------------------------------ steps
@register("sdpa")
class Sdpa(Step):
    """Runs the chosen parts' attention through torch SDPA; measures the difference from eager on real audio."""

    Config = SdpaConfig

    def run(self, model, ctx) -> dict:
        c = self.config
        clip = _clip(ctx)
        set_attention(model, c.parts, "eager")
        ref, ref_ids = _speech(model, clip), _greedy(model, clip, c.check_tokens)
        done = set_attention(model, c.parts, "sdpa")
        out, ids = _speech(model, clip), _greedy(model, clip, c.check_tokens)
        record_runtime(model, "sdpa", done)
        return {"parts": done, "speech_embeds_max_abs_diff": float((out - ref).abs().max()),
                "speech_embeds_max_abs": float(ref.abs().max()), "greedy_tokens_equal": ids == ref_ids,
                "checked_on": clip.id}


@register("real_length")
class RealLength(Step):
    """Encodes each clip's real length (rounded up to whole windows) instead of 30 s, so the LLM sees fewer speech tokens."""

    Config = RealLengthConfig
    NOTE = ("speech tokens counted on the calibration clips; the effect on accuracy is not measured by this step: "
            "benchmark the artifact against the baseline (WER, CIDEr-D) before relying on it")

    def run(self, model, ctx) -> dict:
        clips = ctx.calibration()
        model.real_length = False
        before = [_speech(model, s).shape[1] for s in clips]
        model.real_length = True
        after = [_speech(model, s).shape[1] for s in clips]
        record_runtime(model, "real_length", True)
        n = len(clips)
        return {"speech_tokens_before": before, "speech_tokens_after": after,
                "mean_speech_tokens_before": sum(before) / n, "mean_speech_tokens_after": sum(after) / n,
                "clip_seconds": [round(len(s.audio) / 16000, 3) for s in clips], "note": self.NOTE}


@register("compile")
class Compile(Step):
    """torch.compile on chosen parts; the first generate (compilation) is timed apart from a steady-state one."""

    Config = CompileConfig
    saves_artifact = False  # nothing in the weights changes; re-applied at load from the config

    def run(self, model, ctx) -> dict:
        c = self.config
        clip = _clip(ctx)
        t0 = time.perf_counter()
        _greedy(model, clip, c.warmup_tokens)
        eager_s = time.perf_counter() - t0
        compile_parts(model, c.parts, c.mode, c.dynamic)
        try:
            t0 = time.perf_counter()
            _greedy(model, clip, c.warmup_tokens)
            first_s = time.perf_counter() - t0
        except Exception as e:  # inductor needs a C compiler on CPU, Triton on GPU
            raise ctx.error(f"compile: torch.compile failed on {c.parts} (mode {c.mode!r}; on CPU inductor needs "
                            f"gcc, on GPU triton): {type(e).__name__}: {e}") from e
        t0 = time.perf_counter()
        _greedy(model, clip, c.warmup_tokens)
        steady_s = time.perf_counter() - t0
        record_runtime(model, "compile", {"parts": list(c.parts), "mode": c.mode, "dynamic": c.dynamic})
        return {"parts": list(c.parts), "mode": c.mode, "device": model.device.type,
                "eager_generate_seconds": round(eager_s, 4), "first_generate_seconds": round(first_s, 4),
                "compile_seconds": round(max(first_s - steady_s, 0.0), 4),
                "steady_generate_seconds": round(steady_s, 4), "generate_tokens": c.warmup_tokens,
                "note": "one run each, not a latency benchmark; compilation is redone when the artifact loads"}


@register("liger")
class Liger(Step):
    """Liger Triton kernels (RMSNorm, RoPE, SwiGLU) in the LLM; CUDA only, checked when the recipe runs."""

    Config = LigerConfig
    saves_artifact = False

    def run(self, model, ctx) -> dict:
        c = self.config
        kw = dict(rms_norm=c.rms_norm, rope=c.rope, swiglu=c.swiglu)
        try:
            fn = apply_liger(model, **kw)
        except ConfigError as e:
            raise ctx.error(str(e)) from None
        record_runtime(model, "liger", kw)
        return {"applied": fn, **kw, "note": "kernels are numerically close to, not bit-equal with, the eager ones"}
