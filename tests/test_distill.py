"""Distillation: the loss math on small tensors, the teacher snapshot, checkpoints and resume."""

import os

import pytest
import torch
import torch.nn.functional as F

from compress.errors import ConfigError
from compress.recipe import parse_recipe
from compress.runner import run_recipe
from compress.loaders import checkpoint
from compress.steps.distill import distill_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALIB = os.path.join(ROOT, "benchmarks", "data", "calib.json")


def _logits(seed=0, n=5, v=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g), torch.randn(n, v, generator=g), torch.randint(0, v, (n,), generator=g)


def test_alpha_one_is_cross_entropy():
    s, t, y = _logits()
    total, ce, _ = distill_loss(s, t, y, alpha=1.0, temperature=2.0)
    torch.testing.assert_close(total, F.cross_entropy(s, y))
    torch.testing.assert_close(ce, F.cross_entropy(s, y))


def test_kl_direction_and_t_squared_scaling():
    s, t, y = _logits(1)
    for temp in (1.0, 2.0, 4.0):
        total, _, kd = distill_loss(s, t, y, alpha=0.0, temperature=temp)
        p_t = F.softmax(t / temp, -1)
        want = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean()  # KL(teacher || student)
        torch.testing.assert_close(kd, want)
        torch.testing.assert_close(total, temp * temp * want)
        # torch's kl_div(input=log q, target=p) is KL(p || q): the same direction
        torch.testing.assert_close(kd, F.kl_div(F.log_softmax(s / temp, -1), p_t, reduction="batchmean"))
        reverse = (F.softmax(s / temp, -1) * (F.log_softmax(s / temp, -1) - p_t.log())).sum(-1).mean()
        assert not torch.allclose(kd, reverse)


def test_student_equal_to_teacher_has_zero_kd_and_mix():
    s, _, y = _logits(2)
    total, ce, kd = distill_loss(s, s.clone(), y, alpha=0.5, temperature=2.0)
    assert abs(kd.item()) < 1e-6
    torch.testing.assert_close(total, 0.5 * ce + 0.5 * 4.0 * kd)


def test_kd_gradient_moves_student_towards_teacher():
    s, t, y = _logits(3)
    s = s.clone().requires_grad_(True)
    _, _, kd = distill_loss(s, t, y, alpha=0.0)
    kd.backward()
    with torch.no_grad():
        _, _, kd2 = distill_loss(s - 0.5 * s.grad, t, y, alpha=0.0)
    assert kd2 < kd


def _recipe(extra: str = "", steps: int = 4):
    return parse_recipe(
        f"name: kd\nsteps:\n  - {{type: layer_drop, part: llm, layers: [1]}}\n"
        f"  - {{type: distill, data: {CALIB}, samples: 2, steps: {steps}, lr: 0.001, checkpoint_every: 2{extra}}}",
        "kd", ROOT)


def test_distill_trains_against_the_undropped_teacher(tmp_path):
    res = run_recipe(_recipe(", feature_loss: proj"), "tiny", str(tmp_path / "a"), progress=False, bench=False,
                     log=lambda *a: None)
    rep = res["steps"][1]
    assert rep["steps"] == 4 and len(rep["loss_curve"]) == 4 and rep["resumed_from_step"] == 0
    assert rep["kd_curve"][0] > 0  # the teacher has all 4 layers, the student 3: they differ
    assert len(rep["feature_curve"]) == 4 and rep["checkpoints_written"] == 1
    assert not os.path.exists(rep["checkpoint_path"])  # removed once the run finished


def test_distill_resumes_after_interruption(tmp_path, monkeypatch):
    ck = str(tmp_path / "ck")
    r = _recipe(f", checkpoint_dir: {ck}")
    done = run_recipe(r, "tiny", str(tmp_path / "full"), progress=False, bench=False, log=lambda *a: None)

    real_save = checkpoint.atomic_torch_save

    def save_then_die(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt  # the machine goes away right after the step-2 checkpoint

    monkeypatch.setattr(checkpoint, "atomic_torch_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(r, "tiny", str(tmp_path / "b"), progress=False, bench=False, log=lambda *a: None)
    monkeypatch.setattr(checkpoint, "atomic_torch_save", real_save)
    assert len(os.listdir(ck)) == 1
    res = run_recipe(r, "tiny", str(tmp_path / "b"), progress=False, bench=False, log=lambda *a: None)
    rep = res["steps"][1]
    assert rep["resumed_from_step"] == 2 and rep["steps_run_now"] == 2
    assert rep["loss_curve"][:2] == done["steps"][1]["loss_curve"][:2]
    assert rep["loss_curve"][2:] == pytest.approx(done["steps"][1]["loss_curve"][2:], rel=1e-4, abs=1e-5)


def test_distill_needs_a_data_file():
    with pytest.raises(ConfigError, match="data"):
        parse_recipe("name: kd\nsteps:\n  - {type: distill, steps: 2}", "kd", ROOT)

