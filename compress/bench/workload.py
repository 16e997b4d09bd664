"""The clean-process memory workload. Heavy libraries are imported at module level on purpose: the child's
baseline RSS is taken after this import, so the measured delta is the model and its workload, not the libraries."""

import logging

for _name in ("torchao", "bitsandbytes", "torch.utils._pytree"):  # optional-kernel probes, not user news
    logging.getLogger(_name).setLevel(logging.ERROR)

import peft  # noqa: E402,F401
import torch  # noqa: E402
import transformers  # noqa: E402,F401

from ..audio import load_audio  # noqa: E402
from ..loaders import load_model  # noqa: E402
from ..models import build  # noqa: E402,F401  (imports the model code before the baseline)


def memory_workload(spec: str, audio_path: str, task: str, n_tokens: int, threads=None, **model_kwargs) -> dict:
    """Load the model and generate once; the child's peak RSS is the model's peak memory."""
    if threads:
        torch.set_num_threads(threads)
    model = load_model(spec, **model_kwargs)
    out = model.generate([load_audio(audio_path)], task, num_beams=1, max_new_tokens=n_tokens, ignore_eos=True)
    return {"tokens": len(out[0].token_ids)}
