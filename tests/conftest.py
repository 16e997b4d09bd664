"""Test-wide settings: deterministic, quiet, few threads, tests/ importable for shared builders."""

import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.manual_seed(0)
torch.set_num_threads(min(2, torch.get_num_threads()))
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
