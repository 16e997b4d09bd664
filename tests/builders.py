"""Small artifacts and helpers several test files build the same way."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "benchmarks", "data", "dev.json")


def load_tool(name: str):
    """A script of benchmarks/tools/ imported as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def random_lora(model, seed: int = 0) -> int:
    """Non-zero LoRA B matrices (a fresh LoRA's are zero, which would make its branch invisible); how many."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
                n += 1
    return n


def rtn_offset_tiny(out: str) -> str:
    """The tiny preset with RTN 4-bit on the float-offset grid (llama.cpp's Q4_1), groups of 32, on its LLM."""
    from compress.recipe import recipe_from_dict
    from compress.runner import run_recipe

    run_recipe(recipe_from_dict({"name": "q41", "steps": [
        {"type": "rtn", "bits": 4, "group_size": 32, "sym": False, "zero_point": "float",
         "targets": {"parts": ["llm"], "ignore": ["lm_head"]}}]}),
        "tiny", out, progress=False, bench=False, log=lambda *a: None)
    return out


def gptq_tiny(out: str, group_size: int = 32) -> str:
    """The tiny preset with GPTQ 4-bit act-order on its LLM (lm_head kept), calibrated on 2 dev clips."""
    from compress.recipe import recipe_from_dict
    from compress.runner import run_recipe

    run_recipe(recipe_from_dict({"name": "q", "calibration": {"data": DEV, "samples": 2},
                                 "steps": [{"type": "gptq", "bits": 4, "group_size": group_size, "act_order": True,
                                            "targets": {"parts": ["llm"], "ignore": ["lm_head"]}}]}),
               "tiny", out, progress=False, bench=False, log=lambda *a: None)
    return out


class SessionRecorder:
    """An ONNX Runtime session that records the length of every inputs_embeds it is fed."""

    def __init__(self, sess):
        self.sess, self.lengths = sess, []

    def __getattr__(self, name):  # everything else (providers, IO binding) is the session's
        return getattr(self.sess, name)

    def run(self, outputs, feeds):
        self.lengths.append(feeds["inputs_embeds"].shape[1])
        return self.sess.run(outputs, feeds)
