"""Runtime speed-ups (SDPA attention, real-length audio, torch.compile, Liger kernels): recorded in the config, re-applied at load.

None of these changes a weight, so the artifact stores them as `model.cfg.extra["runtime"]`
(saved in config.json) and `apply_runtime` re-applies them when the artifact is loaded.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from ..errors import ConfigError
from .registry import Step, register
from .schema import (COMPILE_MODES, COMPILE_PARTS, SDPA_PARTS, CompileConfig, LigerConfig,  # noqa: F401
                     RealLengthConfig, SdpaConfig)

RUNTIME_KEY = "runtime"
LIGER_FAMILIES = ("llama", "qwen2", "gemma2", "mistral", "qwen3", "gemma")


# ------------------------------------------------------------------------------------ the switches
def set_attention(model, parts, impl: str) -> list:
    """Switch the attention of `parts` to "sdpa" or back to "eager"; returns the parts switched."""
    sdpa = impl == "sdpa"
    done = []
    for part in parts:
        if part == "speech_encoder":
            enc = model.speech_encoder
            if hasattr(enc, "set_attn_implementation"):
                enc.set_attn_implementation(impl)
            else:
                enc.config._attn_implementation = impl
        elif part == "beats":
            if model.beats is None:
                continue
            for m in model.beats.modules():
                if hasattr(m, "use_sdpa"):
                    m.use_sdpa = sdpa
        elif part == "qformer":
            for m in model.speech_Qformer.modules():
                if hasattr(m, "use_sdpa"):
                    m.use_sdpa = sdpa
        else:
            raise ConfigError(f"sdpa: unknown part {part!r}; valid: {', '.join(SDPA_PARTS)}")
        done.append(part)
    return done


def _part_module(model, part: str):
    mod = model.parts().get(part)
    if mod is None:
        raise ConfigError(f"compile: this model has no {part!r} part")
    return mod


def compile_parts(model, parts, mode: str, dynamic: Optional[bool] = None) -> None:
    """torch.compile each part in place (nn.Module.compile: parameter names and the state dict do not change)."""
    for part in parts:
        _part_module(model, part).compile(mode=mode, dynamic=dynamic)


def apply_liger(model, rms_norm: bool = True, rope: bool = True, swiglu: bool = True) -> str:
    """Patch the LLM instance with Liger's Triton kernels; needs CUDA and the `liger-kernel` package."""
    if not torch.cuda.is_available() or model.device.type != "cuda":
        raise ConfigError("liger: Liger kernels are Triton kernels that need a CUDA GPU with the model on it "
                          f"(CUDA available: {torch.cuda.is_available()}, model on {model.device.type})")
    mt = model.llm_base().config.model_type
    if mt not in LIGER_FAMILIES:
        raise ConfigError(f"liger: LLM family {mt!r} is not supported; valid: {', '.join(LIGER_FAMILIES)}")
    try:
        import liger_kernel.transformers as lk  # lazy: pulls triton; not a dependency of this project
    except ImportError as e:
        raise ConfigError(f"liger: needs the `liger-kernel` package (pip install liger-kernel): {e}") from None
    import inspect

    fn = getattr(lk, f"apply_liger_kernel_to_{mt}")
    wanted = dict(rms_norm=rms_norm, rope=rope, swiglu=swiglu, geglu=swiglu, cross_entropy=False,
                  fused_linear_cross_entropy=False, model=model.llm_base())
    params = inspect.signature(fn).parameters
    fn(**{k: v for k, v in wanted.items() if k in params})
    return fn.__name__


def _record(model, key: str, value) -> None:
    model.cfg.extra.setdefault(RUNTIME_KEY, {})[key] = value


def apply_runtime(model):
    """Re-apply the runtime changes recorded in `model.cfg.extra["runtime"]` (called by load_artifact)."""
    rt = model.cfg.extra.get(RUNTIME_KEY) or {}
    if rt.get("sdpa"):
        set_attention(model, rt["sdpa"], "sdpa")
    if rt.get("real_length"):
        model.real_length = True
    if rt.get("liger"):
        if torch.cuda.is_available() and model.device.type == "cuda":
            apply_liger(model, **rt["liger"])
        else:  # loading on CPU (e.g. to inspect it) must still work; the model is equal without the kernels
            import warnings

            warnings.warn("artifact asks for Liger kernels, which need CUDA; loaded without them", stacklevel=2)
    if rt.get("compile"):
        c = rt["compile"]
        compile_parts(model, c["parts"], c["mode"], c.get("dynamic"))
    return model


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
        _record(model, "sdpa", done)
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
        _record(model, "real_length", True)
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
        _record(model, "compile", {"parts": list(c.parts), "mode": c.mode, "dynamic": c.dynamic})
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
        _record(model, "liger", kw)
        return {"applied": fn, **kw, "note": "kernels are numerically close to, not bit-equal with, the eager ones"}
