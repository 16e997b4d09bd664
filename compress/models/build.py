"""Build the SALMONN module tree from a SalmonnConfig: the one constructor every loader uses."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError, choices
from .config import SalmonnConfig
from .salmonn import Salmonn

SUPPORTED_LLMS = ("llama", "qwen2", "gemma2", "mistral", "qwen3", "gemma")


def whisper_encoder_from_config(whisper: dict):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    cfg = WhisperConfig(**whisper)
    return WhisperEncoder(cfg)


def llm_from_config(llm: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    llm = dict(llm)
    mt = llm.pop("model_type", None)
    if mt not in SUPPORTED_LLMS:
        raise ConfigError(f"llm.model_type {mt!r} is not supported; valid: {choices(SUPPORTED_LLMS)}")
    cfg = AutoConfig.for_model(mt, **llm)
    return AutoModelForCausalLM.from_config(cfg)


def add_lora(llm, lora):
    """Wrap the LM with PEFT LoRA as SALMONN does (adapter name 'default')."""
    if lora is None:
        return llm
    from peft import LoraConfig, TaskType, get_peft_model

    pc = LoraConfig(task_type=TaskType.CAUSAL_LM, inference_mode=False, r=lora.r, lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout, target_modules=list(lora.target_modules))
    return get_peft_model(llm, pc)


def beats_from_cfg(beats_cfg: Optional[dict]):
    if beats_cfg is None:
        return None
    from .beats import BEATs, BEATsConfig

    return BEATs(BEATsConfig(beats_cfg))


def build_modules(cfg: SalmonnConfig, tokenizer, *, device="cpu", seed: Optional[int] = 0) -> Salmonn:
    """Module tree with initialised weights (seeded), or uninitialised ones when device='meta'."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):  # scoped: no global default-device mode left behind
        speech = whisper_encoder_from_config(cfg.whisper)
        beats = beats_from_cfg(cfg.beats)
        llm = add_lora(llm_from_config(cfg.llm), cfg.lora)
        model = Salmonn(cfg, speech, llm, beats, tokenizer)
        if device != "meta":
            torch.nn.init.normal_(model.speech_query_tokens, std=0.02)
    return model.eval()
