"""The one training loop (compress.trainloop): accumulation, resumption, schedules, trainable flags."""

import pytest
import torch

from compress import trainloop as tl


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w_true = torch.randn(16, 4, generator=g), torch.randn(4, 1, generator=g)
    return x, x @ w_true


def _run(cfg, micro_loss, seed=0, **kw):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(4, 1)
    named = dict(lin.named_parameters())
    rep = tl.train(named, lambda i: micro_loss(lin, i), cfg, **kw)
    return lin, rep


def test_accumulating_two_halves_equals_one_step_on_both():
    x, y = _problem()

    def half(lin, i):  # micro-batch i: rows of one half of the data
        rows = slice(0, 8) if i % 2 == 0 else slice(8, 16)
        return torch.nn.functional.mse_loss(lin(x[rows]), y[rows]), {}

    def whole(lin, i):
        return torch.nn.functional.mse_loss(lin(x), y), {}

    a, ra = _run(tl.LoopSettings(steps=5, lr=0.05, accumulate=2, grad_clip=None), half)
    b, rb = _run(tl.LoopSettings(steps=5, lr=0.05, grad_clip=None), whole)
    assert ra["steps"] == rb["steps"] == 5 and len(ra["curves"]["loss"]) == 5
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert ra["curves"]["loss"] == pytest.approx(rb["curves"]["loss"], rel=1e-5)


def test_a_stopped_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    x, y = _problem(1)

    def loss(lin, i):
        rows = tl.epoch_order(16, 3, i // 4)[(i % 4) * 4:(i % 4) * 4 + 4]
        return torch.nn.functional.mse_loss(lin(x[rows]), y[rows]), {"rows": float(sum(rows))}

    sched = lambda step: tl.warmup_cosine(step, 8, 2)  # noqa: E731
    whole, rw = _run(tl.LoopSettings(steps=8, lr=0.1, schedule=sched), loss)
    ck = str(tmp_path / "state.pt")
    cut = tl.LoopSettings(steps=8, lr=0.1, schedule=sched, checkpoint=ck, checkpoint_every=3, max_minutes=0.0)
    _, first = _run(cut, loss)
    assert first["stopped"] and first["steps"] == 0
    cut.max_minutes = None
    resumed, rr = _run(cut, loss, seed=5)  # another init: the checkpoint's weights must win
    assert rr["resumed_from_step"] == 0 and rr["steps"] == 8
    for p, q in zip(whole.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)
    assert rr["curves"]["loss"] == rw["curves"]["loss"] and len(rr["curves"]["rows"]) == 8
    # resuming from a mid-run checkpoint: step 6 of 8
    cfg = tl.LoopSettings(steps=6, lr=0.1, schedule=sched, checkpoint=str(tmp_path / "mid.pt"))
    _run(cfg, loss)
    cfg.steps = 8
    mid, rm = _run(cfg, loss, seed=9)
    assert rm["resumed_from_step"] == 6 and rm["steps_run_now"] == 2
    assert rm["curves"]["loss"][:6] == rw["curves"]["loss"][:6]


def test_a_checkpoint_of_other_tensors_is_refused(tmp_path):
    ck = str(tmp_path / "state.pt")
    x, y = _problem()
    _run(tl.LoopSettings(steps=1, lr=0.1, checkpoint=ck), lambda lin, i: (((lin(x) - y) ** 2).mean(), {}))
    other = torch.nn.Linear(4, 2)
    with pytest.raises(RuntimeError, match="other trained tensors"):
        tl.train({"w": other.weight}, lambda i: (other(x).sum(), {}), tl.LoopSettings(steps=2, lr=0.1, checkpoint=ck))


def test_finished_checkpoints_are_removed_unless_kept(tmp_path):
    x, y = _problem()
    f = lambda lin, i: (((lin(x) - y) ** 2).mean(), {})  # noqa: E731
    ck = tmp_path / "a.pt"
    _, r = _run(tl.LoopSettings(steps=4, lr=0.1, checkpoint=str(ck), checkpoint_every=2, keep_checkpoint=False), f)
    assert r["checkpoints_written"] == 1 and not ck.exists()
    _, r = _run(tl.LoopSettings(steps=4, lr=0.1, checkpoint=str(ck), checkpoint_every=2), f)
    assert ck.exists() and torch.load(ck, weights_only=True)["step"] == 4


def test_only_trainable_restores_flags_and_mode():
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1), torch.nn.Linear(2, 1))
    m.eval()
    m[2].bias.requires_grad_(False)
    before = [p.requires_grad for p in m.parameters()]
    with tl.only_trainable(m, [m[0].weight]):
        assert m.training and [p.requires_grad for p in m.parameters()] == [True, False, False, False]
    assert not m.training and [p.requires_grad for p in m.parameters()] == before


def test_schedule_and_epoch_order():
    assert tl.warmup_cosine(0, 10, 2) == 0.5 and tl.warmup_cosine(1, 10, 2) == 1.0
    assert tl.warmup_cosine(10, 10, 2) == pytest.approx(0.05)
    a = tl.epoch_order(10, seed=1, epoch=0)
    assert sorted(a) == list(range(10)) and a == tl.epoch_order(10, seed=1, epoch=0)
    assert a != tl.epoch_order(10, seed=1, epoch=1)
