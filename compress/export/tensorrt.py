"""`export --format tensorrt`: Torch-TensorRT (dynamo IR) engines for the audio front and the LLM decoder.

CUDA only. Not run in this project's CI or on its CPU machines: it needs an NVIDIA GPU and `pip install
torch-tensorrt` built for the installed torch. Without them the command fails with one line saying so, and no
TensorRT number is ever reported. There is no TensorRT backend for `bench` yet: the engines are written with
`torch_tensorrt.save` (ExportedProgram), loadable with `torch_tensorrt.load(path).module()`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Optional

import torch

from ..errors import UserError
from ..outputs import atomic_directory, file_table, write_manifest
from .wrappers import DecoderWithCache, example_audio, float32_front, full_mel_frames, merged_llm, require_exportable

KIND = "tensorrt"
FRONT = "audio_front.ep"
LLM = "llm.ep"


def tensorrt_unavailable() -> Optional[str]:
    """Why TensorRT export cannot run here, or None when it can."""
    if not torch.cuda.is_available():
        return (f"TensorRT export needs an NVIDIA GPU with CUDA, and torch.cuda.is_available() is False here "
                f"(torch {torch.__version__}); run it on an NVIDIA GPU machine after `pip install torch-tensorrt` "
                f"(the release built for torch {torch.__version__.split('+')[0]})")
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError as e:
        return (f"TensorRT export needs torch-tensorrt, which is not importable ({e}); on this NVIDIA GPU machine: "
                f"pip install torch-tensorrt (the release built for torch {torch.__version__.split('+')[0]})")
    return None


def require_tensorrt() -> None:
    why = tensorrt_unavailable()
    if why:
        raise UserError(why)


def _inputs(specs: list):
    import torch_tensorrt

    return [torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=dt) for lo, opt, hi, dt in specs]


def _compile_and_save(module, specs: list, path: str, what: str) -> None:
    import torch_tensorrt

    try:
        inputs = _inputs(specs)
        trt = torch_tensorrt.compile(module, ir="dynamo", arg_inputs=inputs, min_block_size=1,
                                     use_explicit_typing=True)
        torch_tensorrt.save(trt, path, output_format="exported_program", arg_inputs=inputs)
    except Exception as e:  # noqa: BLE001 - one line naming the graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"TensorRT compilation of the {what} failed ({type(e).__name__}: {first[:300]})") from e


def export_tensorrt(model, out_dir: str, *, llm: bool = True, overwrite: bool = False, max_batch: int = 8,
                    max_seq: int = 1024, manifest_extra: Optional[dict] = None, step_report: Optional[dict] = None,
                    log=None) -> str:
    require_exportable(model)
    require_tensorrt()
    say = log or (lambda *a: None)
    t0 = time.perf_counter()

    def write(tmp: str) -> None:
        front = copy.deepcopy(float32_front(model)).cuda()  # copies: the caller's model stays where it is
        ex = example_audio(model)
        mel = ex["spectrogram"].shape[1:]
        frames = full_mel_frames(model)
        specs = [((1, mel[0], 2 if front.dynamic_mel else frames), (1, mel[0], frames), (max_batch, mel[0], frames),
                  torch.float32)]
        if model.beats is not None:
            specs += [((1, 16000), (1, 30 * 16000), (max_batch, 30 * 16000), torch.float32),
                      ((1, 16000), (1, 30 * 16000), (max_batch, 30 * 16000), torch.bool)]
        say("compiling the audio front with Torch-TensorRT ...")
        _compile_and_save(front, specs, os.path.join(tmp, FRONT), "audio front")
        graphs = {"audio_front": {"file": FRONT, "max_batch": max_batch}}
        if llm:
            lm = merged_llm(model).cuda()
            dec = DecoderWithCache(lm).eval()
            cfg = lm.config
            hidden = lm.get_input_embeddings().embedding_dim
            kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            n = cfg.num_hidden_layers
            specs = [((1, 1, hidden), (1, 128, hidden), (max_batch, max_seq, hidden), torch.float32),
                     ((1, 1), (1, 256), (max_batch, 2 * max_seq), torch.long),
                     ((1, 1), (1, 128), (max_batch, max_seq), torch.long)]
            specs += [((1, kv, 0, hd), (1, kv, 128, hd), (max_batch, kv, max_seq, hd), torch.float32)] * (2 * n)
            say("compiling the LLM decoder with Torch-TensorRT ...")
            _compile_and_save(dec, specs, os.path.join(tmp, LLM), "LLM decoder")
            graphs["llm"] = {"file": LLM, "num_layers": n, "kv_heads": kv, "head_dim": hd, "max_seq": max_seq}
            torch.save(lm.get_input_embeddings().weight.detach().float().cpu(), os.path.join(tmp, "embed_tokens.pt"))
        model.tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({"model": model.cfg.to_dict(), "graphs": graphs}, f, indent=1, default=str)
        files = file_table(tmp)
        import torch_tensorrt

        extra = dict(manifest_extra or {})
        export = {"format": KIND, "compiler": "torch_tensorrt.compile(ir='dynamo')",
                  "saved_with": "torch_tensorrt.save",
                  "torch_tensorrt": torch_tensorrt.__version__, "graphs": graphs,
                  "seconds": round(time.perf_counter() - t0, 3)}
        if step_report is not None:
            step_report.update(seconds=export["seconds"], files=sorted(files))
            extra["steps"] = list(extra.get("steps", [])) + [step_report]
        write_manifest(tmp, {"kind": KIND, "export": export, **extra}, files=files)

    return atomic_directory(out_dir, write, overwrite=overwrite)
