"""Builds a tiny SALMONN bundle in the official layout (as the released checkpoints are distributed)."""

import os

import numpy as np
import torch
import yaml

from compress.loaders.official import is_trainable
from compress.models.beats import BEATs, BEATsConfig, tiny_beats_cfg
from compress.models.build import build_modules
from compress.models.presets import preset_config
from compress.models.tokenizer import byte_tokenizer


def sentencepiece_tokenizer_dir(folder: str, vocab_size: int = 120) -> None:
    """A real SentencePiece BPE `tokenizer.model` (as Vicuna / LLaMA-2 ship) and the config naming LlamaTokenizer."""
    import io
    import json
    import random

    import sentencepiece as spm

    words = ("the a cat sat on mat dog ran to house red green blue sound speech audio music bird sings loud "
             "quiet rain falls engine starts people talk").split()
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
                                   model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   num_threads=1)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer.model"), "wb") as f:
        f.write(model.getvalue())
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>"}, f)


def make_official_bundle(root: str, *, seed: int = 0, with_pad_token: bool = True,
                         sentencepiece: bool = False) -> dict:
    """Whisper HF dir, BEATs .pt, Llama HF dir + tokenizer, trainable-only .pth and a decode YAML.
    `sentencepiece`: the LLM folder's tokenizer is a real SentencePiece tokenizer.model, as the released models'."""
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperModel

    torch.manual_seed(seed)
    cfg = preset_config("tiny")
    whisper_dir = os.path.join(root, "whisper")
    WhisperModel(WhisperConfig(**cfg.whisper)).save_pretrained(whisper_dir)

    bcfg = tiny_beats_cfg()
    beats = BEATs(BEATsConfig(bcfg))
    beats_path = os.path.join(root, "BEATs_tiny.pt")
    torch.save({"cfg": bcfg, "model": beats.state_dict()}, beats_path)

    llm_dir = os.path.join(root, "llama")
    llm_cfg = {k: v for k, v in cfg.llm.items() if k != "model_type"}
    LlamaForCausalLM(LlamaConfig(**llm_cfg)).save_pretrained(llm_dir)
    if sentencepiece:
        sentencepiece_tokenizer_dir(llm_dir)
    else:
        tok = byte_tokenizer()
        if not with_pad_token:
            tok.pad_token = None
        tok.save_pretrained(llm_dir)

    # The trainable tensors, with random values (LoRA B too, so the adapters matter).
    src = build_modules(cfg, byte_tokenizer(), seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    sd = {}
    for k, v in src.state_dict().items():
        if is_trainable(k):
            sd[k] = torch.randn(v.shape, generator=g) * 0.05 + (1.0 if k.endswith("LayerNorm.weight") else 0.0)
    sd["speech_Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]  # the reference saves this buffer
    ckpt_path = os.path.join(root, "salmonn_tiny.pth")
    torch.save({"model": sd, "optimizer": {"state": {}}, "epoch": 3, "config": {"run": {"seed": 42}}}, ckpt_path)

    conf = {
        "model": {
            "llama_path": llm_dir, "whisper_path": whisper_dir, "beats_path": beats_path, "ckpt": ckpt_path,
            "freeze_whisper": True, "freeze_beats": True, "use_speech_Qformer": True,
            "freeze_speech_QFormer": False, "window_level_Qformer": True, "num_speech_query_token": 1,
            "second_per_window": 0.333333, "second_stride": 0.333333, "speech_llama_proj_model": "",
            "freeze_speech_llama_proj": False, "lora": True, "lora_rank": 4, "lora_alpha": 16,
            "lora_dropout": 0.0, "multi_prompt": True, "prompt_template": "USER: {}\nASSISTANT:",
            "max_txt_len": 300, "end_sym": "</s>", "low_resource": False, "device_8bit": 0,
        },
        "generate": {"max_new_tokens": 8, "num_beams": 2, "do_sample": False, "min_length": 1,
                     "temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.0, "length_penalty": 1.0},
    }
    # The Q-Former of the tiny preset is not bert-base: point at a local bert-base-uncased dir, as
    # transformers would resolve the name when such a directory exists beside the config.
    bert_dir = os.path.join(root, "bert-base-uncased")
    os.makedirs(bert_dir, exist_ok=True)
    q = cfg.qformer
    with open(os.path.join(bert_dir, "config.json"), "w") as f:
        import json

        json.dump({"hidden_size": q.hidden_size, "num_attention_heads": q.num_attention_heads,
                   "intermediate_size": q.intermediate_size, "model_type": "bert"}, f)
    yaml_path = os.path.join(root, "decode_config.yaml")
    with open(yaml_path, "w") as f:
        yaml.safe_dump(conf, f)
    return {"yaml": yaml_path, "ckpt": ckpt_path, "trainable": sd, "root": root}


def tone(seconds=2.0, freq=440.0, sr=16000):
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
