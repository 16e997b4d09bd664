"""The LLM decoder graph as onnxruntime-genai's model builder writes it, holding this model's own weights.

Why: the torch dynamo exporter writes the decoder as ~1,700 primitive nodes per token (RMSNorm as Pow / ReduceMean /
Sqrt, rotary as Slice / Neg / Concat, grouped-query attention as Expand + MatMul + Softmax); on a CPU their
per-node overhead costs as much as reading the weights. The builder of onnxruntime-genai (maintained by the ONNX
Runtime team) writes the same Llama decoder as ~340 nodes of ONNX Runtime's fused operators (GroupQueryAttention
with rotary and the KV-cache append inside, SkipSimplifiedLayerNormalization, one Q/K/V MatMul). It runs here
through its command line, in a child process, on the LLM's float weights with LoRA merged: inputs_embeds in (the
speech prefix is fed as embeddings), last-position logits out (prune_lm_head).

GPTQ / RTN models: the builder would re-quantize float weights; instead its float projections are swapped for
MatMulNBits nodes holding this model's own codes (compress.quant.nbits; q, k and v stacked along N when they share a
column order, which act-order gives them since they read the same input), and LoRA, which cannot merge into codes,
is added back beside each quantized projection as two small MatMuls (x A^T, then B^T * scaling); a float-offset
grid's offsets join the same two MatMuls (x's block sums times the offsets). No installable
library swaps existing GPTQ codes into a builder graph, hence the code below.

Limits: positions come from the attention mask's count of ones (GroupQueryAttention), so a batch must be
unpadded (the harness benches one clip at a time); Llama-family LLMs only (what the builder's llama path writes).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from ..quant.nbits import NBitsWeight, concat_outputs, dequantize

GRAPH = "genai"
HEAD_NODE = "/lm_head/MatMul"
INSTALL = "pip install -c constraints.txt onnxruntime-genai==0.18.0"
# the builder's fused projection -> the Llama modules it stacks along N, in its order
PROJECTIONS = (("attn/qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
               ("attn/o_proj", ("self_attn.o_proj",)), ("mlp/gate_proj", ("mlp.gate_proj",)),
               ("mlp/up_proj", ("mlp.up_proj",)), ("mlp/down_proj", ("mlp.down_proj",)))


def require_builder() -> str:
    """The installed onnxruntime-genai version, or a UserError naming the install command."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        raise UserError(f"the 'genai' LLM graph needs onnxruntime-genai's model builder: {INSTALL}")
    import importlib.metadata as md

    return md.version("onnxruntime-genai")


# ------------------------------------------------------------------------------------ weights
def _lora_of(m) -> Optional[tuple]:
    """(A (r, K), B (N, r), scaling) of a PEFT LoRA layer's active adapter, or None."""
    if not hasattr(m, "lora_A"):
        return None
    names = [a for a in (m.active_adapters if hasattr(m, "active_adapters") else []) if a in m.lora_A]
    if not names:
        return None
    if len(names) > 1:
        raise UserError(f"export: {len(names)} LoRA adapters active on one layer; the graph holds one")
    a = names[0]
    return m.lora_A[a].weight.detach().float(), m.lora_B[a].weight.detach().float(), float(m.scaling[a])


def split_llm(lm) -> tuple:
    """An LLM (PEFT-wrapped or plain, Linears or NBitsLinears) -> (float state dict under plain HF names with LoRA
    merged into float Linears, {projection name: (NBitsWeight, LoRA or None)} for the quantized ones, whose float
    entry holds the dequantized codes and whose LoRA stays apart)."""
    from .nbits_op import NBitsLinear

    if hasattr(lm, "get_base_model"):
        lm = lm.get_base_model()
    state, nbits = {}, {}
    for name, m in lm.named_modules():
        if hasattr(m, "base_layer"):  # a PEFT LoRA layer around its base Linear
            base, lora = m.base_layer, _lora_of(m)
        elif isinstance(m, NBitsLinear) and not name.endswith(".base_layer"):
            base, lora = m, None
        else:
            continue
        if isinstance(base, NBitsLinear):
            w = base.nbits_weight()
            nbits[name] = (w, lora)
            state[name + ".weight"] = dequantize(w)
        else:
            weight = base.weight.detach().float()
            if lora is not None:
                a, b, s = lora
                weight = weight + s * (b @ a)
            state[name + ".weight"] = weight
        if getattr(base, "bias", None) is not None:
            state[name + ".bias"] = base.bias.detach().float()
    for name, t in lm.state_dict().items():
        plain = name.replace(".base_layer.", ".")
        if "lora_" in name or plain in state or plain.rsplit(".", 1)[0] in nbits:
            continue
        state[plain] = t.detach().float() if t.is_floating_point() else t
    return state, nbits


def write_hf_folder(cfg: dict, tokenizer, state: dict, path: str) -> None:
    """A plain Hugging Face Llama folder (config, safetensors, tokenizer) the builder reads."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(cfg)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    plain.load_state_dict(state, strict=False, assign=True)
    missing = [k for k, v in plain.state_dict().items() if v.is_meta]
    if missing:
        raise UserError(f"export: the LLM lacks {len(missing)} weights the builder needs, e.g. {missing[:3]}")
    plain.save_pretrained(path)
    tokenizer.save_pretrained(path)


# ------------------------------------------------------------------------------------ builder
def run_builder(hf_dir: str, out_dir: str, log_path: str) -> None:
    """onnxruntime-genai's builder, float32 for the CPU, embeddings excluded, logits of the last position only."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", out_dir, "-p", "fp32",
           "-e", "cpu", "-c", os.path.join(out_dir, ".cache"), "--extra_options", "exclude_embeds=true",
           "prune_lm_head=true", "filename=llm.onnx"]
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        with open(log_path, errors="replace") as f:
            tail = [ln.strip() for ln in f.read().replace("\r", "\n").splitlines() if ln.strip()][-3:]
        raise UserError(f"onnxruntime-genai's model builder failed (exit {rc}): {' | '.join(tail)[-400:]}")


# ------------------------------------------------------------------------------------ graph surgery
def _init(name: str, arr: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def _nbits_nodes(prefix: str, x: str, y: str, w: NBitsWeight, accuracy_level: int) -> tuple:
    """Nodes and initializers computing y = x W^T from MatMulNBits codes (a Gather first when the columns are
    permuted)."""
    from onnx import helper

    inits = [_init(f"{prefix}.B", w.b.numpy()), _init(f"{prefix}.scales", w.scales.float().numpy())]
    nodes, a = [], x
    if w.perm is not None:
        inits.append(_init(f"{prefix}.perm", w.perm.to(torch.int64).numpy()))
        a = f"{prefix}/Gather/output_0"
        nodes.append(helper.make_node("Gather", [x, f"{prefix}.perm"], [a], name=f"{prefix}/Gather", axis=-1))
    ins = [a, f"{prefix}.B", f"{prefix}.scales"]
    if w.zero_points is not None:
        inits.append(_init(f"{prefix}.zero_points", w.zero_points.numpy()))
        ins.append(f"{prefix}.zero_points")
    extra = {"accuracy_level": accuracy_level} if accuracy_level else {}
    nodes.append(helper.make_node("MatMulNBits", ins, [y], name=f"{prefix}/MatMulNBits", domain="com.microsoft",
                                  K=w.k, N=w.n, bits=w.bits, block_size=w.block_size, **extra))
    return nodes, inits


def side_matrices(ws: list, loras: list) -> tuple:
    """(A (K, R), B (R, N)) with x A B = every member's LoRA (x A_i^T B_i^T s_i, zero where a member has none) plus,
    for float-offset grids, block_sums(x) @ offsets^T (A holds the block indicator, B the offsets): one pair of
    MatMuls beside the stacked MatMulNBits. `ws` are the members' NBitsWeights (stacked along N in this order)."""
    from ..quant.nbits import block_indicator

    n_total = sum(w.n for w in ws)
    cols, rows = [], []
    n0 = 0
    for w, lora in zip(ws, loras):
        if lora is not None:
            a, b, s = lora
            cols.append(a.T.numpy())
            r = np.zeros((a.shape[0], n_total), np.float32)
            r[:, n0:n0 + w.n] = (b * s).T.numpy()
            rows.append(r)
        if w.offsets is not None:
            cols.append(block_indicator(w).numpy())
            r = np.zeros((w.offsets.shape[1], n_total), np.float32)
            r[:, n0:n0 + w.n] = w.offsets.T.numpy()
            rows.append(r)
        n0 += w.n
    if not cols:
        return None
    return np.concatenate(cols, axis=1), np.concatenate(rows, axis=0)


def _side_nodes(prefix: str, x: str, base: str, y: str, a_cat: np.ndarray, b_cat: np.ndarray) -> tuple:
    """y = base + (x A) B."""
    from onnx import helper

    t = f"{prefix}/lora/A/output_0"
    lo = f"{prefix}/lora/B/output_0"
    nodes = [helper.make_node("MatMul", [x, f"{prefix}.lora_A"], [t], name=f"{prefix}/lora/A"),
             helper.make_node("MatMul", [t, f"{prefix}.lora_B"], [lo], name=f"{prefix}/lora/B"),
             helper.make_node("Add", [base, lo], [y], name=f"{prefix}/lora/Add")]
    return nodes, [_init(f"{prefix}.lora_A", a_cat), _init(f"{prefix}.lora_B", b_cat)]


def swap_in_codes(path: str, nbits: dict, num_layers: int, accuracy_level: int = 0, keep_float: tuple = ()) -> dict:
    """Replace the builder's float projections that the model holds as GPTQ / RTN codes by MatMulNBits nodes (and
    their LoRA branches); rewrites `path` (one file); returns a summary for the export's config. `keep_float`:
    projection names whose nodes keep accuracy level 0 (q, k and v share one node here: all three or none)."""
    import onnx

    model = onnx.load(path)
    graph = model.graph
    by_name = {n.name: i for i, n in enumerate(graph.node)}
    replace: dict = {}  # node index -> the nodes standing in for it
    drop, new_inits = set(), []
    nodes_n = side_n = 0
    levels = {}
    for proj, members in PROJECTIONS:
        floats = [m.rpartition(".")[2] in keep_float for m in members]
        if any(floats) and not all(floats):
            raise UserError(f"export: the 'genai' graph computes {', '.join(m.rpartition('.')[2] for m in members)} "
                            "in one MatMulNBits node: keep all of them float or none (or use --llm-graph dynamo)")
        levels[proj] = 0 if all(floats) else accuracy_level
    for i in range(num_layers):
        for proj, members in PROJECTIONS:
            keys = [f"model.layers.{i}.{m}" for m in members]
            held = [k in nbits for k in keys]
            if not any(held):
                continue
            if not all(held):
                raise UserError(f"export: layer {i} quantizes only some of {', '.join(members)}; the 'genai' graph "
                                "stacks them into one projection: quantize all or none (or use --llm-graph dynamo)")
            name = f"/model/layers.{i}/{proj}/MatMul"
            if name not in by_name:
                raise UserError(f"export: the builder's graph has no node {name!r}; use --llm-graph dynamo")
            node = graph.node[by_name[name]]
            x, w_name = node.input[0], node.input[1]
            y = node.output[0]
            ws = [nbits[k][0] for k in keys]
            loras = [nbits[k][1] for k in keys]
            prefix = f"/model/layers.{i}/{proj}"
            side = side_matrices(ws, loras)
            out = f"{prefix}/nbits/output_0" if side is not None else y
            new = []
            try:
                stacked = [concat_outputs(ws)]
            except ValueError:  # different column orders: one node each, outputs concatenated
                stacked = ws
            if len(stacked) == 1:
                n, ini = _nbits_nodes(prefix, x, out, stacked[0], levels[proj])
                new += n
                new_inits += ini
            else:
                from onnx import helper

                outs = []
                for j, w in enumerate(stacked):
                    n, ini = _nbits_nodes(f"{prefix}/{j}", x, f"{prefix}/{j}/output_0", w, levels[proj])
                    new += n
                    new_inits += ini
                    outs.append(f"{prefix}/{j}/output_0")
                new.append(helper.make_node("Concat", outs, [out], name=f"{prefix}/Concat", axis=-1))
            nodes_n += len(stacked)
            if side is not None:
                n, ini = _side_nodes(prefix, x, out, y, *side)
                new += n
                new_inits += ini
                side_n += 1
            replace[by_name[name]] = new
            drop.add(w_name)
    if not replace:
        return {"layers": 0}
    ordered = []
    for idx, node in enumerate(graph.node):
        ordered.extend(replace.get(idx, [node]))
    del graph.node[:]
    graph.node.extend(ordered)
    kept = [t for t in graph.initializer if t.name not in drop]
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    tmp = path + ".swap"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    any_w = next(iter(nbits.values()))[0]
    return {"method": "MatMulNBits nodes with the model's own GPTQ / RTN codes swapped into the builder's graph",
            "matmul_nbits_nodes": nodes_n, "side_branches": side_n, "bits": any_w.bits,
            "block_size": any_w.block_size, "accuracy_level": accuracy_level,
            "float_activations": sorted(p for p, lv in levels.items() if lv == 0 and accuracy_level),
            "float_offsets": any(w.offsets is not None for w, _ in nbits.values())}


def quantize_head(proto, bits: int, accuracy_level: int = 0, block: int = 32):
    """The output layer (49k x 576 for SmolLM2: the largest single read per token) as MatMulNBits through ONNX
    Runtime's own round-to-nearest quantizer (symmetric, `block` input columns per scale); not calibrated, unlike
    the model's GPTQ.
    8 bits run with int8 activations (accuracy level 4): ONNX Runtime's 8-bit kernel at float activations is not
    optimised on x86 (SmolLM2's head measured 106 ms per token against 11.8 with level 4, whole decode step)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    accuracy_level = 4 if bits == 8 else accuracy_level

    others = [n.name for n in proto.graph.node if n.op_type == "MatMul" and n.name != HEAD_NODE]
    q = MatMulNBitsQuantizer(proto, bits=bits, block_size=block, is_symmetric=True,
                             accuracy_level=accuracy_level or None, nodes_to_exclude=others)  # it takes every
    # MatMul that is not excluded, whatever nodes_to_include says
    q.process()
    out = q.model.model
    if not any(n.op_type == "MatMulNBits" and n.name.startswith(HEAD_NODE) for n in out.graph.node):
        raise UserError(f"export: ONNX Runtime's quantizer left the output layer ({HEAD_NODE}) unquantized")
    return out


# ------------------------------------------------------------------------------------ the whole graph
def export_llm_genai(model, path: str, *, accuracy_level: int = 0, head_bits: Optional[int] = None,
                     head_block: int = 32, keep_float: tuple = (), log=None) -> tuple:
    """Write the LLM decoder at `path` (llm.onnx) through the builder; returns (graph spec, embedding table).
    head_bits: 4 or 8 quantizes the output layer with ONNX Runtime's quantizer in blocks of `head_block` input
    columns (see quantize_head)."""
    from .nbits_op import has_gptq, nbits_llm
    from .wrappers import merged_llm

    version = require_builder()
    say = log or (lambda *a: None)
    cfg = dict(model.cfg.llm)
    if cfg.get("model_type") != "llama":
        raise UserError(f"the 'genai' LLM graph is written for Llama-family LLMs, not {cfg.get('model_type')!r}; "
                        "use --llm-graph dynamo")
    quantized = has_gptq(model)
    lm = nbits_llm(model, accuracy_level, keep_float) if quantized else merged_llm(model)
    state, nbits = split_llm(lm)
    emb = state["model.embed_tokens.weight"].numpy()
    out_dir = os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(prefix="hf-", dir=out_dir) as hf_dir:
        write_hf_folder(cfg, model.tokenizer, state, hf_dir)
        del state, lm
        with tempfile.TemporaryDirectory(prefix="genai-", dir=out_dir) as build_dir:
            say(f"building the LLM graph with onnxruntime-genai {version} ...")
            run_builder(hf_dir, build_dir, os.path.join(out_dir, "genai-builder.log"))
            built = os.path.join(build_dir, "llm.onnx")
            summary = None
            if nbits:
                say(f"swapping in the model's own codes ({len(nbits)} quantized projections) ...")
                summary = swap_in_codes(built, nbits, int(cfg["num_hidden_layers"]), accuracy_level, keep_float)
            import onnx

            proto = onnx.load(built)
            if head_bits:
                say(f"quantizing the output layer to {head_bits} bits (ONNX Runtime's quantizer) ...")
                proto = quantize_head(proto, head_bits, accuracy_level, head_block)
            # weights in a file beside the graph: ONNX Runtime maps it and, once a kernel has prepacked a weight,
            # holds the packed copy only; weights inside the graph stay resident twice (best-cpu's 147-MB graph:
            # 254 MiB resident after loading, 175 MiB from external data, measured in a bare process)
            onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data", size_threshold=1024)
    os.remove(os.path.join(out_dir, "genai-builder.log"))
    n_layers = int(cfg["num_hidden_layers"])
    kv_heads = int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    spec = {"file": os.path.basename(path), "graph": GRAPH, "builder": f"onnxruntime-genai {version}",
            "num_layers": n_layers, "kv_heads": kv_heads, "head_dim": head_dim, "hidden": int(cfg["hidden_size"]),
            "vocab": int(cfg["vocab_size"]), "weights_file": os.path.basename(path) + ".data",
            "past_inputs": [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")],
            "present_outputs": [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")],
            "position_ids": "from the attention mask (GroupQueryAttention): unpadded batches only",
            "logits": "last position only (prune_lm_head)",
            "lora": ("beside each quantized projection as two MatMuls (codes unchanged)" if quantized
                     else "merged into the base weights"),
            "matmul_nbits": summary,
            "lm_head": (f"MatMulNBits {head_bits}-bit, blocks of {head_block}, ONNX Runtime's round-to-nearest "
                        "quantizer (not calibrated)" + (", int8 activations" if head_bits == 8 else "")
                        if head_bits else "float32")}
    return spec, emb
