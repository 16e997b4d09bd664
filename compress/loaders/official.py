"""Load a SALMONN checkpoint in the official layout: decode config YAML + Whisper/BEATs/LLM dirs + trainable .pth."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..models.config import DEFAULT_TEMPLATE, GenerateSettings, LoraSettings, SalmonnConfig
from ..models.qformer import QFormerConfig
from .checkpoint import load_tensor_file, state_dict_of
from ..yamlsafe import read_yaml

# Prefixes of the tensors SALMONN trains and saves; every one the model has must be in the checkpoint.
TRAINABLE_PREFIXES = ("speech_Qformer.", "speech_query_tokens", "speech_llama_proj.", "ln_speech.", "ln_audio.")
# Buffers the reference saves beside the trainable tensors; harmless when absent from our model.
KNOWN_EXTRA = ("speech_Qformer.bert.embeddings.position_ids",)
BERT_BASE = dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072, layer_norm_eps=1e-12,
                 hidden_act="gelu", max_position_embeddings=512)


def is_trainable(name: str) -> bool:
    return name.startswith(TRAINABLE_PREFIXES) or ".lora_A." in name or ".lora_B." in name


def _resolve(path: str, base_dir: str, what: str) -> str:
    if not path:
        raise ConfigError(f"model.{what} is empty; it must point to the {what.replace('_path', '')} weights")
    for cand in (path, os.path.join(base_dir, path)):
        if os.path.exists(cand):
            return os.path.abspath(cand)
    raise ConfigError(f"model.{what} {path!r} not found (looked relative to the working directory and to {base_dir!r})")


def find_bert_config(config_dir: str, explicit: Optional[str] = None) -> tuple:
    """BERT settings for the Q-Former, resolved as `BertConfig.from_pretrained('bert-base-uncased')` would offline."""
    cands = [explicit] if explicit else [os.path.join(config_dir, "bert-base-uncased"), "bert-base-uncased"]
    for c in cands:
        p = c if c.endswith(".json") else os.path.join(c, "config.json")
        if os.path.isfile(p):
            with open(p) as f:
                d = json.load(f)
            return {k: d[k] for k in BERT_BASE if k in d} | {k: v for k, v in BERT_BASE.items() if k not in d}, p
        if explicit:
            raise ConfigError(f"--qformer-config {explicit!r}: no config.json found there")
    return dict(BERT_BASE), "built-in bert-base-uncased values"


def load_llm_tokenizer(llama_path: str):
    """The LLM folder's tokenizer; a SentencePiece `tokenizer.model` (Vicuna, LLaMA-2, the released SALMONN
    models) needs the `sentencepiece` package, and the error says so (transformers' own message names tiktoken)."""
    import importlib.util

    from transformers import AutoTokenizer

    sp_file = os.path.join(llama_path, "tokenizer.model")
    if (os.path.isfile(sp_file) and not os.path.isfile(os.path.join(llama_path, "tokenizer.json"))
            and importlib.util.find_spec("sentencepiece") is None):
        raise CheckpointError(f"the LLM tokenizer {sp_file!r} is a SentencePiece model, which needs the "
                              "'sentencepiece' package: pip install sentencepiece")
    try:
        return AutoTokenizer.from_pretrained(llama_path, local_files_only=True)
    except (OSError, ValueError, ImportError) as e:
        raise CheckpointError(f"cannot load the LLM tokenizer from {llama_path!r}: {e}") from None


def load_official(config_path: str, *, allow_unsafe_pickle: bool = False, qformer_config: Optional[str] = None,
                  dtype: Optional[torch.dtype] = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperModel

    from ..models.build import add_lora
    from ..models.beats import BEATs
    from ..models.salmonn import Salmonn

    doc = read_yaml(config_path)
    m = doc.get("model")
    if not isinstance(m, dict):
        raise ConfigError(f"{config_path!r}: no `model:` section (the SALMONN decode config layout)")
    base = os.path.dirname(os.path.abspath(config_path))
    report = {}
    whisper_path = _resolve(m.get("whisper_path", ""), base, "whisper_path")
    llama_path = _resolve(m.get("llama_path", ""), base, "llama_path")
    ckpt_path = _resolve(m.get("ckpt", ""), base, "ckpt")
    beats_path = _resolve(m["beats_path"], base, "beats_path") if m.get("beats_path") else None

    # The checkpoint first, checked against the model's shapes built on the meta device from the parts' configs:
    # a wrong or broken checkpoint is refused in a second, before Whisper and the LLM load.
    sd = state_dict_of(load_tensor_file(ckpt_path, allow_unsafe_pickle=allow_unsafe_pickle), ckpt_path)
    beats_ckpt = (load_tensor_file(beats_path, allow_unsafe_pickle=allow_unsafe_pickle) if beats_path else None)
    lora = None
    if m.get("lora", True):
        lora = LoraSettings(r=int(m.get("lora_rank", 8)), alpha=int(m.get("lora_alpha", 32)),
                            dropout=float(m.get("lora_dropout", 0.1)),
                            target_modules=list(m.get("lora_target_modules", ["q_proj", "v_proj"])))
    if not m.get("window_level_Qformer", True) or not m.get("use_speech_Qformer", True):
        raise ConfigError("only window_level_Qformer: True with use_speech_Qformer: True is supported")
    bert, bert_src = find_bert_config(base, qformer_config)
    gen = {k: v for k, v in (doc.get("generate") or {}).items() if k in GenerateSettings.__dataclass_fields__}

    def salmonn_config(whisper_cfg: dict, llm_cfg: dict, beats_cfg: Optional[dict]) -> SalmonnConfig:
        beats_dim = beats_cfg["encoder_embed_dim"] if beats_cfg else 0
        qcfg = QFormerConfig(num_hidden_layers=2, encoder_width=whisper_cfg["d_model"] + beats_dim, **bert)
        return SalmonnConfig(
            whisper=whisper_cfg, llm=llm_cfg, qformer=qcfg, beats=beats_cfg, lora=lora,
            num_speech_query_token=int(m.get("num_speech_query_token", 1)),
            second_per_window=float(m.get("second_per_window", 0.333333)),
            second_stride=float(m.get("second_stride", 0.333333)),
            prompt_template=m.get("prompt_template", DEFAULT_TEMPLATE),
            generate=GenerateSettings.from_dict(gen), extra={"official_config": os.path.abspath(config_path)},
        )

    precheck_trainable(salmonn_config(*_part_configs(whisper_path, llama_path, beats_ckpt, beats_path)), sd,
                       ckpt_path)

    try:
        speech = WhisperModel.from_pretrained(whisper_path, local_files_only=True).encoder
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load Whisper from {whisper_path!r}: {e}") from None
    report["speech_encoder"] = {"source": whisper_path}
    beats = None
    if beats_path:
        beats = BEATs.from_checkpoint_dict(beats_ckpt)
        report["beats"] = {"source": beats_path}
    tok = load_llm_tokenizer(llama_path)
    try:
        llm = AutoModelForCausalLM.from_pretrained(llama_path, local_files_only=True, dtype=dtype or torch.float32)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load the LLM from {llama_path!r}: {e}") from None
    notes = []
    if tok.pad_token is None:  # the reference adds '[PAD]' and resizes the embeddings
        tok.add_special_tokens({"pad_token": "[PAD]"})
        llm.resize_token_embeddings(len(tok))
        notes.append("added pad token '[PAD]' and resized the LLM embeddings, as the reference does")
    report["llm"] = {"source": llama_path, "notes": notes}
    cfg = salmonn_config(speech.config.to_dict(), llm.config.to_dict(),
                         beats.cfg.to_dict() if beats is not None else None)
    model = Salmonn(cfg, speech, add_lora(llm, lora), beats, tok)
    report["qformer"] = {"config": bert_src}
    report.update(_load_trainable(model, sd, ckpt_path))
    model.load_report = report
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _part_configs(whisper_path: str, llama_path: str, beats_ckpt: Optional[dict], beats_path: Optional[str]) -> tuple:
    """(Whisper config, LLM config, BEATs cfg) dicts read from the parts' files, without loading any weights."""
    from transformers import AutoConfig, WhisperConfig

    try:
        whisper_cfg = WhisperConfig.from_pretrained(whisper_path, local_files_only=True).to_dict()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read Whisper's config from {whisper_path!r}: {e}") from None
    try:
        llm_cfg = AutoConfig.from_pretrained(llama_path, local_files_only=True).to_dict()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read the LLM's config from {llama_path!r}: {e}") from None
    beats_cfg = None
    if beats_ckpt is not None:
        cfg = beats_ckpt.get("cfg")
        if not isinstance(cfg, dict):
            raise CheckpointError(f"BEATs checkpoint {beats_path!r} has no 'cfg' dict")
        from ..models.beats import BEATsConfig

        beats_cfg = BEATsConfig(cfg).to_dict()
    return whisper_cfg, llm_cfg, beats_cfg


def check_trainable_shapes(own: dict, sd: dict, ckpt_path: str) -> None:
    """Refuse a checkpoint whose trainable tensors are missing or shaped unlike the model's (shapes named first:
    a checkpoint for another model size lacks nothing but fits nothing)."""
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
           for k in sorted(sd) if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    missing = [k for k in sorted(own) if is_trainable(k) and k not in sd]
    if bad:
        more = f" ({len(bad)} tensors in all)" if len(bad) > 5 else ""
        also = f"; it also lacks {len(missing)} trainable tensor(s), e.g. {', '.join(missing[:3])}" if missing else ""
        raise CheckpointError(f"checkpoint {ckpt_path!r} was made for another model shape: "
                              + "; ".join(bad[:5]) + more + also)
    if missing:
        raise CheckpointError(
            f"checkpoint {ckpt_path!r} lacks {len(missing)} trainable tensor(s) the model needs, e.g. "
            + ", ".join(missing[:6]))


def precheck_trainable(cfg: SalmonnConfig, sd: dict, ckpt_path: str) -> None:
    """The checkpoint's trainable tensors against the model built on the meta device (no memory, no weights).
    Embedding sizes may still change (a pad token added), but no trainable tensor depends on them."""
    from ..models.build import build_modules

    meta = build_modules(cfg, None, seed=None, device="meta")
    check_trainable_shapes(meta.state_dict(), sd, ckpt_path)


def _load_trainable(model, sd: dict, ckpt_path: str) -> dict:
    own = model.state_dict()
    check_trainable_shapes(own, sd, ckpt_path)
    unexpected = sorted(k for k in sd if k not in own and k not in KNOWN_EXTRA)
    load = {k: v for k, v in sd.items() if k in own}
    model.load_state_dict(load, strict=False)
    from ..models.salmonn import part_of

    per_part: dict = {}
    for k in load:
        per_part.setdefault(part_of(k), 0)
        per_part[part_of(k)] += 1
    return {
        "trainable": {"source": ckpt_path, "tensors_loaded": len(load), "per_part": per_part,
                      "missing": [], "unexpected": unexpected},
    }
