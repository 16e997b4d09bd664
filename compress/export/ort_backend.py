"""ONNX Runtime backend: an exported directory behaves like a Salmonn for `generate`, the bench harness and `inspect`.

The decode loop is compress.generation's (greedy and beam search are the same code as for PyTorch): the LLM
session is wrapped in an object that answers like the HF causal LM that loop calls (inputs_embeds,
attention_mask, position_ids, past_key_values, use_cache -> .logits, .past_key_values with reorder_cache).
Tensors cross to and from ONNX Runtime as host numpy arrays (zero-copy torch.from_numpy views).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Optional

import numpy as np
import torch

from ..errors import CheckpointError, UserError
from ..models.config import SalmonnConfig
from ..models.salmonn import PromptMixin
from .layout import CONFIG, EMBED, FRONT, KIND, LLM
from .lite import default_providers, llm_session, session  # noqa: F401  (default_providers re-exported)


def _session(path: str, providers: Optional[list], spin: Optional[bool] = None):
    """lite.session with torch's thread count: `bench --threads` / set_num_threads apply to ORT too."""
    return session(path, providers, torch.get_num_threads(), spin=spin)


class _Out:
    def __init__(self, logits, past_key_values):
        self.logits = logits
        self.past_key_values = past_key_values


class OrtCache:
    """The KV cache as host arrays [k0, v0, k1, v1, ...], each (B, KV, P, hd)."""

    def __init__(self, arrays: list):
        self.arrays = arrays

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.arrays[0].shape[2]) if self.arrays else 0

    def reorder_cache(self, rows) -> None:
        idx = rows.cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
        self.arrays = [a[idx] for a in self.arrays]


class _Embedding:
    """Token ids -> embeddings from the host table, as nn.Embedding would return them."""

    def __init__(self, table: np.ndarray):
        self.weight = table
        self.embedding_dim = table.shape[1]

    def __call__(self, ids) -> torch.Tensor:
        idx = ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        return torch.from_numpy(self.weight[idx])


class OrtCausalLM:
    """The llm.onnx session with the call signature compress.generation uses: torch tensors in and out around
    lite.LlmSession, which builds the feeds for either graph layout (dynamo exporter's or onnxruntime-genai's)."""

    def __init__(self, llm, embed: np.ndarray):
        self.llm = llm  # lite.LlmSession
        self.embed = _Embedding(embed)

    def get_input_embeddings(self) -> _Embedding:
        return self.embed

    def __call__(self, *, inputs_embeds, attention_mask, position_ids, past_key_values=None, use_cache=True):
        past = None if past_key_values is None else past_key_values.arrays
        logits, present = self.llm.run(inputs_embeds.detach().cpu().numpy(), attention_mask.detach().cpu().numpy(),
                                       position_ids.detach().cpu().numpy(), past)
        return _Out(torch.from_numpy(logits), OrtCache(present))


def onnx_part_stats(path: str, files: dict) -> dict:
    """Part -> {params, bytes, dtype, sparsity, lora_params} from the graphs' initializers and the embedding table."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    out = {}
    for part, rel in files.items():
        full = os.path.join(path, rel)
        if rel.endswith(".npy"):
            arr = np.load(full, mmap_mode="r")
            out[part] = {"params": int(arr.size), "bytes": int(arr.nbytes), "dtype": str(arr.dtype),
                         "sparsity": None, "lora_params": 0}
            continue
        proto = onnx.load(full, load_external_data=False)
        n = nbytes = 0
        dtypes: Counter = Counter()
        for t in proto.graph.initializer:
            k = int(np.prod(t.dims)) if len(t.dims) else 1
            dt = np.dtype(tensor_dtype_to_np_dtype(t.data_type))
            n += k
            nbytes += k * dt.itemsize
            dtypes[str(dt)] += k
        out[part] = {"params": n, "bytes": nbytes, "dtype": "/".join(d for d, _ in dtypes.most_common()),
                     "sparsity": None, "lora_params": 0}
    return out


class OrtSalmonn(PromptMixin):
    """An ONNX export loaded for inference: same generate(), device, tokenizer, cfg as Salmonn."""

    kind = KIND
    dtype = torch.float32

    def __init__(self, path: str, *, providers: Optional[list] = None, manifest: Optional[dict] = None):
        from transformers import AutoTokenizer

        self.path = os.path.abspath(path)
        with open(os.path.join(path, CONFIG)) as f:
            conf = json.load(f)
        self.conf = conf
        self.cfg = SalmonnConfig.from_dict(conf["model"])
        self.real_length = bool(conf.get("real_length"))
        self.n_mels = int(conf["n_mels"])
        self.has_beats = bool(conf["has_beats"])
        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"), local_files_only=True)
        self.front = _session(os.path.join(path, FRONT), providers, spin=False)  # as lite.LiteRuntime
        # memory-mapped: a prompt reads a few rows of the table, not all of it
        self.lm = OrtCausalLM(llm_session(path, conf["llm"], providers, torch.get_num_threads()),
                              np.load(os.path.join(path, EMBED), mmap_mode="r"))
        if "prompts" in conf:  # the prompt's fixed start is prefilled once, as lite.LiteEngine does
            self.lm.llm.keep_prompt_starts(self.lm.embed.weight, conf["prompts"], conf.get("bos_id"))
        self.providers = self.front.get_providers()
        self.manifest = manifest or {}
        self._prompt_cache: dict = {}
        src = f"ONNX Runtime ({', '.join(self.providers)})"
        self.load_report = {part: {"source": f"{os.path.join(self.path, rel)} via {src}"}
                            for part, rel in self.part_files().items()}

    # ------------------------------------------------------------------ what the harness reads
    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu")

    def part_files(self) -> dict:
        return {"audio_front": FRONT, "llm": LLM, "embed_table": EMBED}

    def part_stats(self) -> dict:
        return onnx_part_stats(self.path, self.part_files())

    # ------------------------------------------------------------------ audio path
    def encode_audio(self, spectrogram, wav=None, padding_mask=None) -> torch.Tensor:
        feeds = {"spectrogram": np.ascontiguousarray(spectrogram.cpu().numpy(), dtype=np.float32)}
        if self.has_beats:
            if wav is None:
                raise UserError("this export's audio front takes the waveform too (the model has BEATs)")
            feeds["wav"] = np.ascontiguousarray(wav.cpu().numpy(), dtype=np.float32)
            pm = padding_mask if padding_mask is not None else torch.zeros(wav.shape, dtype=torch.bool)
            feeds["padding_mask"] = pm.cpu().numpy().astype(bool)
        return torch.from_numpy(self.front.run(None, feeds)[0])

    # ------------------------------------------------------------------ prompt (PromptMixin, as Salmonn)
    def prompt_embedding(self):
        return self.lm.get_input_embeddings()

    def prompt_bos(self) -> Optional[int]:
        return self.conf.get("bos_id")

    def eos_ids(self) -> list:
        return list(self.conf.get("eos_ids") or [])

    def decoder_lm(self):
        return self.lm


def load_onnx_export(path: str, *, verify: bool = True, dtype=None, providers: Optional[list] = None) -> OrtSalmonn:
    """A directory written by `export --format onnx` -> OrtSalmonn (every file checked against the manifest)."""
    from ..outputs import read_manifest, verify_files

    manifest = read_manifest(path)
    if manifest.get("kind") != KIND:
        raise CheckpointError(f"{path!r} is not an ONNX export (manifest kind {manifest.get('kind')!r})")
    if dtype is not None and dtype != torch.float32:
        raise UserError(f"{path!r} is an ONNX export in float32; --dtype {str(dtype).replace('torch.', '')} "
                        "does not apply to it")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise UserError("loading an ONNX export needs onnxruntime: pip install -c constraints.txt "
                        "onnxruntime==1.31.1") from None
    verify_files(path, manifest, hashes=verify)
    return OrtSalmonn(path, providers=providers, manifest=manifest)
