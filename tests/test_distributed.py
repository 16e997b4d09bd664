"""Distillation in two processes on CPU (gloo), as `accelerate launch` / torchrun would run it: both ranks end with
the same weights (gradients averaged across them) and only the main process writes the artifact."""

import json
import os
import socket
import time

import torch
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")
RECIPE = (f"name: kd2\nsteps:\n  - {{type: layer_drop, part: llm, layers: [1]}}\n"
          f"  - {{type: distill, data: {CALIB}, samples: 2, steps: 3, lr: 0.001}}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from compress.recipe import parse_recipe
    from compress.runner import run_recipe

    res = run_recipe(parse_recipe(RECIPE, "kd2", ROOT), "tiny", os.path.join(folder, "out"), progress=False,
                     bench=False, log=lambda *a: None)
    rep = res["steps"][1]
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump({"weights": rep["trained_weights_sha256"], "world": rep["world_size"], "steps": rep["steps"],
                   "artifact": res.get("artifact"), "loss": rep["loss_curve"]}, f)


def test_distill_in_two_processes_keeps_ranks_equal_and_writes_once(tmp_path):
    ctx = mp.start_processes(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 300
    try:
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "the two ranks did not finish in 300 s"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 3
    assert r0["weights"] == r1["weights"]  # one model, trained on both ranks' clips
    assert r0["loss"] != r1["loss"]  # ... each rank saw its own clip
    assert r0["artifact"] and r1["artifact"] is None
    assert sorted(os.listdir(tmp_path)) == ["out", "rank0.json", "rank1.json"]  # one artifact, no leftovers
    assert (tmp_path / "out" / "manifest.json").is_file()
