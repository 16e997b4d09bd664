"""Atomic writes (compress.fileio): a failed write leaves the old file and no temporary behind."""

import json
import os

import pytest

from compress.fileio import atomic_path, write_json, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write('{"a": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["result.json"]


def test_writes_replace_and_follow_the_umask(tmp_path):
    target = tmp_path / "sub" / "t.txt"
    write_text(target, "one")
    write_text(target, "two")
    assert target.read_text() == "two" and os.listdir(tmp_path / "sub") == ["t.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask


def test_suffix_for_writers_that_append_an_extension(tmp_path):
    import numpy as np

    target = tmp_path / "x.npy"
    with atomic_path(target, suffix=".npy") as tmp:
        np.save(tmp, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2] and os.listdir(tmp_path) == ["x.npy"]
