"""Checkpoints load with weights_only; code-executing, truncated and garbage files give clear errors."""

import os

import pytest
import torch

from compress.errors import CheckpointError
from compress.loaders.checkpoint import load_tensor_file, state_dict_of

MARKER = "salmonn_compress_pwned_marker"


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):  # unpickling this would create a file: proof that code ran
        return (open, (self.path, "w"))


def test_good_checkpoint_loads(tmp_path):
    p = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, p)
    sd = state_dict_of(load_tensor_file(str(p)), str(p))
    assert torch.equal(sd["w"], torch.ones(2))


def test_code_executing_checkpoint_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / MARKER
    p = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "x": _Evil(str(target))}, p)
    with pytest.raises(CheckpointError, match="arbitrary unpickling.*--allow-unsafe-pickle"):
        load_tensor_file(str(p))
    assert not target.exists()
    # With explicit permission the file is unpickled (and its code runs: the user allowed it).
    load_tensor_file(str(p), allow_unsafe_pickle=True)
    assert target.exists()


@pytest.mark.parametrize("kind", ["truncated", "random", "empty", "missing", "directory"])
def test_broken_files_give_clear_errors(tmp_path, kind):
    p = tmp_path / "bad.pth"
    if kind == "truncated":
        torch.save({"model": {"w": torch.randn(1000)}}, p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        p.write_bytes(os.urandom(4096))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "directory":
        p.mkdir()
    with pytest.raises(CheckpointError, match="bad.pth") as e:
        load_tensor_file(str(p))
    assert "Traceback" not in str(e.value)


def test_non_tensor_entries_rejected(tmp_path):
    p = tmp_path / "odd.pth"
    torch.save({"model": {"w": [1, 2]}}, p)
    with pytest.raises(CheckpointError, match="not tensors"):
        state_dict_of(load_tensor_file(str(p)), str(p))


def test_safetensors_garbage(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_tensor_file(str(p))
