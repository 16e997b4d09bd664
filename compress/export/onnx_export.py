"""`export --format onnx`: the audio front and the KV-cache LLM decoder as two ONNX graphs (torch dynamo exporter).

Directory written (atomically, manifest last):
  audio_front.onnx   log-mel (B, n_mels, 3000) [+ wav (B, T), padding_mask (B, T) bool] -> speech_embeds (B, L, D);
                     BEATs' Kaldi fbank is inside the graph (torch.fft.rfft exports as ONNX DFT)
  llm.onnx           inputs_embeds (B, S, D), attention_mask (B, P+S), position_ids (B, S), past_key_{i} /
                     past_value_{i} (B, KV, P, hd) -> logits (B, 1, V) of the last position, present_key_{i} / ...
                     (LoRA merged into the base weights; P = 0 for prefill)
  embed_tokens.npy   the LLM's token embedding table (next-token embeddings are looked up on the host)
  mel_filters.npy    Whisper's mel filter bank (n_fft // 2 + 1, n_mels), for the torch-free runtime (lite.py)
  tokenizer/ (with tokenizer.json), config.json (model config, graph interface, prompt ids per task, tokenizer
  size), manifest.json (kind "onnx", sha256 of every file)
Large graphs (> 2 GB) and the onnxruntime-genai LLM graph keep their weights in a `<graph>.onnx.data` file beside
them (ONNX external data).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from ..outputs import atomic_directory, file_table, package_versions, write_manifest
from .wrappers import DecoderWithCache, example_audio, float32_front, full_mel_frames, merged_llm, require_exportable
from .layout import CONFIG, EMBED, FRONT, KIND, LLM  # noqa: F401  (re-exported)
from .lite import MEL_FILTERS
from .options import ExportOptions

EXPORTER = "torch.onnx.export(dynamo=True)"
INT8_OPS = ["MatMul"]
# Ranges the graphs are traced for; ONNX Runtime itself accepts any size.
MAX_BATCH, MAX_SAMPLES, MAX_SEQ = 256, 30 * 16000, 8192


def export_versions() -> dict:
    from importlib import metadata

    out = package_versions()
    for pkg in ("onnx", "onnxscript", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _require_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install -c constraints.txt "
                        "onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.31.1")


def _export(module, args: tuple, path: str, *, dynamic_shapes, input_names, output_names, opset: int,
            what: str, translations: Optional[dict] = None) -> None:
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "no torchvision"
    try:
        # The exporter prints its progress and warns about merged axis names: not user news.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                     input_names=input_names, output_names=output_names, opset_version=opset,
                                     verbose=False, custom_translation_table=translations)
            prog.save(path)  # external data only when the graph is over 2 GB
    except Exception as e:  # noqa: BLE001 - report which graph failed, in one line
        raise UserError(f"ONNX export of the {what} failed ({_reason(e)}); steps that replace modules with custom "
                        "kernels (bitsandbytes, torchao, GPTQ) or compile them are not exportable") from e


def _reason(e: Exception) -> str:
    """One line: the exporter's 'Exception summary' when it has one, else the message's first line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if "Exception summary" in str(e):
        after = lines[[i for i, ln in enumerate(lines) if "Exception summary" in ln][0] + 1:]
        lines = after + lines
    text = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(e).__name__}: {text[:300]}"


def export_front(model, path: str, opset: int) -> dict:
    from torch.export import Dim

    front = float32_front(model)
    inputs = example_audio(model)
    inputs["spectrogram"] = inputs["spectrogram"].float()
    batch = Dim("batch", min=1, max=MAX_BATCH)
    mel = None
    if front.dynamic_mel:  # real length: whole Q-Former windows of mel frames (see salmonn.real_mel_frames)
        k, st = model.cfg.window_kernel, model.cfg.window_stride
        windows = Dim("windows", min=1, max=(full_mel_frames(model) // 2 - k) // st + 1)
        mel = 2 * st * windows + 2 * (k - st)
        n = int(inputs["spectrogram"].shape[-1])
        inputs["spectrogram"] = inputs["spectrogram"][..., : 2 * st * max(2, (n // 2 - k) // st + 1) + 2 * (k - st)]
    names = ["spectrogram"]
    args = [inputs["spectrogram"]]
    shapes = {"spectrogram": {0: batch, **({2: mel} if mel is not None else {})}}
    if model.beats is not None:
        samples = Dim("samples", min=16000, max=MAX_SAMPLES)  # clips are padded to at least 1 s
        names += ["wav", "padding_mask"]
        args += [inputs["wav"], inputs["padding_mask"]]
        shapes.update(wav={0: batch, 1: samples}, padding_mask={0: batch, 1: samples})
    with torch.no_grad():
        _export(front, tuple(args), path, dynamic_shapes=shapes, input_names=names,
                output_names=["speech_embeds"], opset=opset,
                what="audio front (Whisper + BEATs + Q-Former + projection)")
    return {"file": FRONT, "inputs": names, "outputs": ["speech_embeds"],
            "mel_frames": None if front.dynamic_mel else full_mel_frames(model),
            "dynamic": {"batch": True, "samples": model.beats is not None, "mel_frames": front.dynamic_mel},
            "beats_fbank": ("in the graph (Kaldi fbank in torch, its rfft as matmuls with the DFT basis)"
                            if model.beats is not None else "no BEATs in this model")}


def export_llm(model, path: str, opset: int, *, accuracy_level: int = 0, keep_float: tuple = ()) -> dict:
    """The KV-cache decoder graph. GPTQ / RTN Linears become MatMulNBits nodes holding the model's own codes
    (nbits_op); LoRA is then left unmerged on them (merging would change the codes), else merged everywhere."""
    from torch.export import Dim

    from .nbits_op import has_gptq, nbits_llm, onnx_translation

    quantized = has_gptq(model)
    lm = nbits_llm(model, accuracy_level, keep_float) if quantized else merged_llm(model)
    dec = DecoderWithCache(lm).eval()
    hidden = lm.get_input_embeddings().embedding_dim
    b, s = 2, 5
    with torch.no_grad():  # one forward with an empty cache gives the cache's layout
        out = dec(torch.zeros(b, s, hidden), torch.ones(b, s, dtype=torch.long),
                  torch.arange(s).expand(b, -1))
    n_layers = (len(out) - 1) // 2
    kv_heads, head_dim = out[1].shape[1], out[1].shape[3]
    vocab = out[0].shape[-1]
    p = 3
    past = [torch.randn(b, kv_heads, p, head_dim) * 0.1 for _ in range(2 * n_layers)]
    names = [f"past_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]
    batch, seq = Dim("batch", min=1, max=MAX_BATCH), Dim("seq", min=1, max=MAX_SEQ)
    past_len, total = Dim("past", min=0, max=MAX_SEQ), Dim("total", min=1, max=2 * MAX_SEQ)
    shapes = {"inputs_embeds": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: total},
              "position_ids": {0: batch, 1: seq}, "past": tuple({0: batch, 2: past_len} for _ in past)}
    args = (torch.randn(b, s, hidden) * 0.1, torch.ones(b, p + s, dtype=torch.long),
            torch.arange(p, p + s).expand(b, -1).contiguous(), *past)
    with torch.no_grad():
        _export(dec, args, path, dynamic_shapes=shapes,
                input_names=["inputs_embeds", "attention_mask", "position_ids", *names],
                output_names=["logits", *[n.replace("past_", "present_") for n in names]], opset=opset,
                what="LLM decoder with KV cache", translations=onnx_translation() if quantized else None)
    emb = lm.get_input_embeddings().weight.detach().float().numpy()
    return {"file": LLM, "num_layers": n_layers, "kv_heads": kv_heads, "head_dim": head_dim, "hidden": hidden,
            "vocab": vocab, "past_inputs": names, "logits": "last position only (logits_to_keep=1)",
            "lora": ("unmerged (its base layers are MatMulNBits)" if quantized
                     else "merged into the base weights (peft merge_and_unload on a copy)"),
            "matmul_nbits": _nbits_summary(lm) if quantized else None}, emb


def _nbits_summary(lm) -> dict:
    from .nbits_op import NBitsLinear

    mods = [m for m in lm.modules() if isinstance(m, NBitsLinear)]
    return {"method": "com.microsoft MatMulNBits with the model's own GPTQ / RTN codes (compress.quant.nbits)",
            "layers": len(mods), "bits": sorted({m.bits for m in mods}),
            "block_sizes": sorted({m.block_size for m in mods}),
            "act_order_gathers": sum(m.perm.numel() > 0 for m in mods),
            "accuracy_levels": sorted({m.accuracy_level for m in mods})}


def _float_nodes(path: str, keep_float, llm_cfg) -> list:
    """Names of the LLM graph's MatMul nodes of the `keep_float` parts (checked by export_onnx), found by their
    weight's shape: down_proj is the only (intermediate, hidden) MatMul weight of a Llama decoder; one per layer, or
    an error."""
    if not keep_float:
        return []
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    want = (int(llm_cfg.intermediate_size), int(llm_cfg.hidden_size))
    nodes = [n.name for n in graph.node
             if n.op_type == "MatMul" and len(n.input) > 1 and shapes.get(n.input[1]) == want]
    if len(nodes) != int(llm_cfg.num_hidden_layers):
        raise UserError(f"found {len(nodes)} down_proj MatMuls of shape {want} in the LLM graph, expected "
                        f"{llm_cfg.num_hidden_layers} (one per layer): cannot keep them float")
    return nodes


def quantize_llm(path: str, keep_float=(), llm_cfg=None) -> dict:
    """Dynamic int8 of the LLM graph's MatMuls (ONNX Runtime's quantize_dynamic), except the `keep_float` parts
    (ExportOptions.int8_float; `llm_cfg` gives their shapes)."""
    exclude = _float_nodes(path, keep_float, llm_cfg)
    report = quantize_graph(path, exclude=exclude, per_channel=False)
    return {**report, "graph": LLM, "kept_float": list(keep_float), "nodes_kept_float": len(exclude),
            "note": "LLM MatMul weights int8, activations quantized per call at run time; the host embedding "
                    "table stays float32 (the audio front: see front_quantization)"}


def quantize_front(path: str) -> dict:
    """Dynamic int8 of the audio front graph's MatMuls (Whisper encoder, BEATs, Q-Former, projection), weights
    per output channel; the convolutions stay float."""
    return {**quantize_graph(path, per_channel=True), "graph": FRONT,
            "note": "audio front MatMul weights int8 per output channel, activations quantized per call at run time"}


def quantize_graph(path: str, *, exclude=(), per_channel: bool = False) -> dict:
    """Replace the ONNX graph at `path` by its dynamic-int8 form (ONNX Runtime's quantize_dynamic on INT8_OPS,
    int8 weights, `exclude`: node names left float)."""
    import shutil

    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder, name = os.path.split(path)
    external = os.path.exists(path + ".data")
    before = os.path.getsize(path) + (os.path.getsize(path + ".data") if external else 0)
    qdir = os.path.join(folder, ".int8")  # same file name, so an external-data reference stays valid after the move
    os.makedirs(qdir)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(path, os.path.join(qdir, name), op_types_to_quantize=INT8_OPS,
                         weight_type=QuantType.QInt8, per_channel=per_channel, use_external_data_format=external,
                         nodes_to_exclude=list(exclude))
    finally:
        root.setLevel(level)
    for f in (path, path + ".data"):
        if os.path.exists(f):
            os.remove(f)
    after = 0
    for f in os.listdir(qdir):
        os.replace(os.path.join(qdir, f), os.path.join(folder, f))
        after += os.path.getsize(os.path.join(folder, f))
    shutil.rmtree(qdir)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "op_types": INT8_OPS, "weight_type": "QInt8",
            "per_channel": per_channel, "bytes_before": before, "bytes_after": after}


def mel_filters(n_mels: int) -> np.ndarray:
    """Whisper's mel filter bank (n_fft // 2 + 1, n_mels) float32, as the feature extractor applies it: the torch-free
    runtime (lite.py) computes the log-mel with it rather than rebuilding the Slaney filters."""
    from ..audio import _feature_extractor

    return np.asarray(_feature_extractor(int(n_mels)).mel_filters, dtype=np.float32)


def task_prompts(model) -> dict:
    """Task -> {"before": ids, "after": ids}: the prompt token ids around the speech tokens for every instruction of
    the model, so that a runtime without the tokenizer's template logic splices the same prompt."""
    from ..models.salmonn import prompt_ids

    out = {}
    for task, instruction in model.cfg.instructions.items():
        before, after = prompt_ids(model.tokenizer, model.cfg, instruction)
        out[task] = {"before": [int(i) for i in before], "after": [int(i) for i in after]}
    return out


def save_tokenizer(tokenizer, folder: str) -> None:
    """save_pretrained, then check that tokenizer.json (what the torch-free runtime reads) was written."""
    tokenizer.save_pretrained(folder)
    if not os.path.isfile(os.path.join(folder, "tokenizer.json")):
        raise UserError(f"the model's tokenizer ({type(tokenizer).__name__}) wrote no tokenizer.json: export needs "
                        "a fast tokenizer (transformers' tokenizers backend)")


PREFILL = "llm_prefill.onnx"


def write_prefill_graph(folder: str, spec: dict, level: int) -> dict:
    """Beside the LLM graph spec["file"], a prefill graph: the same graph reading the same weights, with every
    MatMulNBits node's compute mode set to `level` (ONNX Runtime's accuracy_level: 4 = activations quantized to int8
    per block, its fastest CPU GEMM). Both graphs point at one external data file (the LLM graph's own, or a new
    one when its weights were inside it), so the weights are stored once. Returns the spec's new entries."""
    import onnx
    from onnx import helper

    path = os.path.join(folder, spec["file"])
    graph = onnx.load(path, load_external_data=False)
    if not any(n.op_type == "MatMulNBits" for n in graph.graph.node):
        raise UserError("prefill_accuracy_level sets the compute mode of MatMulNBits nodes; this LLM graph has none "
                        "(quantize the LLM with gptq or rtn before the export)")
    weights = spec["file"] + ".data"
    if not os.path.exists(os.path.join(folder, weights)):  # onnx appends to an existing data file: write it once
        onnx.save_model(onnx.load(path), path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=weights, size_threshold=1024)
        graph = onnx.load(path, load_external_data=False)
    for node in graph.graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("accuracy_level", int(level))])
    onnx.save_model(graph, os.path.join(folder, PREFILL))
    return {"prefill_file": PREFILL, "prefill_accuracy_level": int(level), "weights_file": weights}


def export_onnx(model, out_dir: str, options: ExportOptions, *, overwrite: bool = False,
                check: Optional[dict] = None, manifest_extra: Optional[dict] = None,
                step_report: Optional[dict] = None, log=None) -> str:
    """Export `model` (a Salmonn) to `out_dir` by `options` (format onnx); returns its absolute path.

    check: {"data": annotation file, "limit": clips per task, "max_new_tokens": n} runs the PyTorch / ONNX Runtime
    greedy parity check on the written graphs and stores the result in the manifest.
    step_report: when exporting as a recipe step, this dict (the step's report) is completed and appended to
    manifest_extra["steps"].
    """
    if options.format != "onnx":
        raise UserError(f"export_onnx writes format onnx, not {options.format!r}")
    require_exportable(model, nbits=True)
    _require_onnx()
    from .nbits_op import has_gptq

    if options.int8 and has_gptq(model):
        raise UserError("export --int8 quantizes the float MatMuls of the LLM graph; this model's LLM is already "
                        "GPTQ / RTN quantized (exported as MatMulNBits): drop --int8")
    if options.llm_graph == "genai":
        from .genai_graph import require_builder

        require_builder()
    opset = options.opset
    say = log or (lambda *a: None)
    t0 = time.perf_counter()

    def write(tmp: str) -> None:
        say("exporting the audio front ...")
        front = export_front(model, os.path.join(tmp, FRONT), opset)
        front_quant = None
        if options.int8_front:
            say("quantizing the audio front graph to int8 ...")
            front_quant = quantize_front(os.path.join(tmp, FRONT))
        say("exporting the LLM decoder ...")
        if options.llm_graph == "genai":
            from .genai_graph import export_llm_genai

            llm, emb = export_llm_genai(model, os.path.join(tmp, LLM), accuracy_level=options.nbits_accuracy_level,
                                        head_bits=options.lm_head_bits,
                                        head_block=options.lm_head_block, keep_float=tuple(options.nbits_float),
                                        log=say)
        else:
            llm, emb = export_llm(model, os.path.join(tmp, LLM), opset, accuracy_level=options.nbits_accuracy_level,
                                  keep_float=tuple(options.nbits_float))
        quant = None
        if options.int8:
            say("quantizing the LLM graph to int8 ...")
            quant = quantize_llm(os.path.join(tmp, LLM), tuple(options.int8_float), model.llm_base().config)
        if options.prefill_accuracy_level is not None:
            say(f"writing the prefill graph (MatMulNBits accuracy level {options.prefill_accuracy_level}) ...")
            llm.update(write_prefill_graph(tmp, llm, options.prefill_accuracy_level))
        np.save(os.path.join(tmp, EMBED), emb)
        np.save(os.path.join(tmp, MEL_FILTERS), mel_filters(model.n_mels))
        save_tokenizer(model.tokenizer, os.path.join(tmp, "tokenizer"))
        bos = model.tokenizer.bos_token_id
        with open(os.path.join(tmp, CONFIG), "w") as f:
            json.dump({"model": model.cfg.to_dict(), "real_length": bool(getattr(model, "real_length", False)),
                       "eos_ids": model.eos_ids(), "bos_id": bos, "n_mels": model.n_mels,
                       "has_beats": model.beats is not None, "audio_front": front, "llm": llm,
                       "prompts": task_prompts(model), "tokenizer_size": len(model.tokenizer)}, f, indent=1,
                      default=str)
        result = None
        if check is not None:
            from .parity import parity_check

            say("parity check: PyTorch vs ONNX Runtime greedy ...")
            result = parity_check(model, tmp, **check)
        export = {"format": KIND, "exporter": EXPORTER, "llm_graph": llm.get("builder") or EXPORTER,
                  "opset": opset, "dtype": "float32",
                  "graphs": {"audio_front": front, "llm": llm}, "embedding_table": EMBED,
                  "quantization": quant or llm.get("matmul_nbits") or "none (float32 weights)",
                  "front_quantization": front_quant or "none (float32 weights)",
                  "seconds": round(time.perf_counter() - t0, 3)}
        extra = dict(manifest_extra or {})
        files = file_table(tmp)
        if step_report is not None:
            step_report.update(seconds=export["seconds"], files=sorted(files),
                               quantization=quant["method"] if quant else (llm.get("matmul_nbits") or {}).get("method"),
                               parity=None if result is None else {k: result[k] for k in ("clips", "identical")})
            extra["steps"] = list(extra.get("steps", [])) + [step_report]
        write_manifest(tmp, {"kind": KIND, "export": export,
                             "check": result if result is not None else "not run (export --check DATA)", **extra},
                       packages=export_versions(), files=files)

    return atomic_directory(out_dir, write, overwrite=overwrite)
