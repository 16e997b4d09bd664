"""Runtime switches: SDPA attention per part, real-length audio, torch.compile per part, Liger kernels.

None of them changes a weight: the recipe steps of compress/steps/runtime.py apply them and note them in
`model.cfg.extra["runtime"]` (saved in the artifact's config.json), and `apply_runtime` re-applies them when an
artifact is loaded. Torch is imported where it is used, so the recipe schema can read the part names below
without it.
"""

from __future__ import annotations

from typing import Optional

from .errors import ConfigError

SDPA_PARTS = ("speech_encoder", "beats", "qformer")
COMPILE_PARTS = ("speech_encoder", "beats", "qformer", "llm")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
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
    import torch

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


def record_runtime(model, key: str, value) -> None:
    """Note a runtime change in the model's config (saved with the artifact, re-applied by apply_runtime)."""
    model.cfg.extra.setdefault(RUNTIME_KEY, {})[key] = value


def apply_runtime(model):
    """Re-apply the runtime changes recorded in `model.cfg.extra["runtime"]` (called by load_artifact)."""
    rt = model.cfg.extra.get(RUNTIME_KEY) or {}
    if rt.get("sdpa"):
        set_attention(model, rt["sdpa"], "sdpa")
    if rt.get("real_length"):
        model.real_length = True
    if rt.get("liger"):
        import torch

        if torch.cuda.is_available() and model.device.type == "cuda":
            apply_liger(model, **rt["liger"])
        else:  # loading on CPU (e.g. to inspect it) must still work; the model is equal without the kernels
            import warnings

            warnings.warn("artifact asks for Liger kernels, which need CUDA; loaded without them", stacklevel=2)
    if rt.get("compile"):
        c = rt["compile"]
        compile_parts(model, c["parts"], c["mode"], c.get("dynamic"))
    return model
