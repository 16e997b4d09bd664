"""Export a GPTQ-quantized LLM as a standard Hugging Face GPTQ checkpoint (what transformers + GPTQModel load).

The directory holds config.json with `quantization_config` {quant_method: gptq, bits, group_size, desc_act,
sym, checkpoint_format: gptq}, model.safetensors with qweight / qzeros (v1 offset) / scales / g_idx / bias for
every quantized Linear and float16 tensors for the rest, the tokenizer, and the LoRA adapters (if any) as a
PEFT adapter in `lora/` (they stay unmerged: merging into quantized weights would requantize them).
"""

from __future__ import annotations

import json
import os
import re

import torch

from ..errors import UserError
from .packing import pack_qzeros, unpack_qzeros
from .qlinear import GPTQLinear

LORA = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


def _hf_name(name: str) -> str:
    return name.replace(".base_layer.", ".")


def _quant_config(mods: dict, block_linears: list, checkpoint_format: str) -> dict:
    first = next(iter(mods.values()))
    for key in ("bits", "group_size", "sym"):
        vals = {getattr(m, key) for m in mods.values()}
        if len(vals) > 1:
            raise UserError(f"export: quantized layers differ in {key} ({sorted(vals)}); a GPTQ checkpoint has one")
    desc_act = any(m.act_order or not bool((m.g_idx[1:] >= m.g_idx[:-1]).all()) for m in mods.values())
    qc = {"quant_method": "gptq", "bits": first.bits, "group_size": first.group_size, "desc_act": desc_act,
          "sym": first.sym, "checkpoint_format": checkpoint_format, "format": checkpoint_format,
          "true_sequential": True, "damp_percent": 0.01,
          "meta": {"quantizer": ["salmonn-compress"]}}
    missing = [n for n in block_linears if n not in mods]
    if missing:  # only some Linears of the blocks are quantized: name them (suffix match in optimum)
        qc["modules_in_block_to_quantize"] = [["." + re.sub(r"^.*?\blayers\.", "layers.", n) for n in mods]]
    return qc


def export_hf_gptq(model, out_dir: str, *, checkpoint_format: str = "gptq", dtype=torch.float16,
                   overwrite: bool = False) -> str:
    """Write model's LLM (a Salmonn whose LLM Linears were replaced by GPTQLinear) as an HF GPTQ checkpoint."""
    from safetensors.torch import save_file

    from ..outputs import FORMAT, MARKER, atomic_directory, split_shared

    if checkpoint_format not in ("gptq", "gptq_v2"):
        raise UserError(f"export: checkpoint_format must be 'gptq' or 'gptq_v2', got {checkpoint_format!r}")
    base = model.llm_base()
    mods = {_hf_name(n + ".")[:-1]: m for n, m in base.named_modules() if isinstance(m, GPTQLinear)}
    if not mods:
        raise UserError("export: the LLM has no GPTQ/RTN-quantized Linear (run a gptq or rtn step first)")
    offset = [n for n, m in mods.items() if m.offsets is not None]
    if offset:
        raise UserError(f"export: {len(offset)} layers (e.g. {offset[0]}) use the float-offset grid (rtn zero_point: "
                        "float), which the GPTQ checkpoint format cannot hold; export to onnx instead, or quantize "
                        "with zero_point: integer")
    block_linears = [_hf_name(n + ".")[:-1] for n, m in base.named_modules()
                     if ".layers." in "." + n and (isinstance(m, torch.nn.Linear) or isinstance(m, GPTQLinear))
                     and not LORA.search(n + ".")]
    qc = _quant_config(mods, block_linears, checkpoint_format)

    state = {}
    for name, t in base.state_dict().items():
        if LORA.search(name):
            continue
        state[_hf_name(name)] = t
    for n, m in mods.items():
        if checkpoint_format == "gptq":
            zeros = unpack_qzeros(m.qzeros, m.bits, m.out_features, v1_offset=False)
            try:
                state[n + ".qzeros"] = pack_qzeros(zeros, m.bits, v1_offset=True)
            except ValueError as e:
                raise UserError(f"export: layer {n}: {e}") from None
        state[n + ".scales"] = m.scales.half()
        if m.bias is not None:
            state[n + ".bias"] = m.bias.detach().half()
    state = {k: (v.to(dtype) if v.is_floating_point() and k.rsplit(".", 1)[-1] != "scales" else v)
             for k, v in state.items()}
    unique, aliases = split_shared(state)
    cfg = base.config.to_dict()
    if aliases and not cfg.get("tie_word_embeddings"):
        raise UserError(f"export: tensors {sorted(aliases)} share storage but the config does not tie them")
    cfg["quantization_config"] = qc
    cfg["dtype"] = str(dtype).replace("torch.", "")
    cfg["torch_dtype"] = cfg["dtype"]

    def write(tmp: str) -> None:
        save_file({k: v.contiguous() for k, v in unique.items()}, os.path.join(tmp, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=1, default=str)
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save_pretrained(tmp)
        if hasattr(model.llama_model, "peft_config"):
            model.llama_model.save_pretrained(os.path.join(tmp, "lora"))
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"format": FORMAT, "kind": "hf-gptq"}, f)

    return atomic_directory(out_dir, write, overwrite=overwrite)
