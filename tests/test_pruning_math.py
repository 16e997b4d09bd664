"""Pruning math on tiny Linear layers: masks, Wanda scores, N:M, global thresholds, block influence."""

import pytest
import torch

from compress import sparsity as sp


@pytest.fixture
def lin():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 6, bias=False)


def test_mask_rows_prunes_lowest_per_row(lin):
    scores = sp.magnitude_scores(lin.weight)
    keep = sp.mask_rows(scores, 0.5)
    assert keep.sum(1).tolist() == [4] * 6
    for r in range(6):  # every kept score in a row >= every pruned score in that row
        assert scores[r][keep[r]].min() >= scores[r][~keep[r]].max()


def test_mask_layer_exact_count(lin):
    keep = sp.mask_layer(sp.magnitude_scores(lin.weight), 0.25)
    assert int((~keep).sum()) == 12


def test_wanda_scores_use_activation_norms():
    w = torch.tensor([[1.0, 1.0], [2.0, -0.5]])
    sq = torch.tensor([4.0, 100.0])  # ||x_0|| = 2, ||x_1|| = 10
    s = sp.wanda_scores(w, sq)
    assert torch.allclose(s, torch.tensor([[2.0, 10.0], [4.0, 5.0]]))
    keep = sp.mask_rows(s, 0.5)
    # Row 1: magnitude alone would prune the -0.5; Wanda prunes the 2.0 whose input is small.
    assert keep.tolist() == [[False, True], [False, True]]


def test_n_m(lin):
    keep = sp.mask_n_m(sp.magnitude_scores(lin.weight), 2, 4)
    w = lin.weight.detach() * keep
    assert sp.is_n_m(w, 2, 4) and not sp.is_n_m(lin.weight.detach(), 2, 4)
    assert sp.zero_fraction(w) == 0.5
    with pytest.raises(ValueError):
        sp.mask_n_m(torch.rand(2, 6), 2, 4)


def test_global_threshold():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0, 7.0])
    thr = sp.global_threshold([a, b], 3 / 7)
    assert thr == 3.0  # the three smallest of all seven are pruned (<= thr)
    assert sp.global_threshold([a], 0.1) == float("-inf")


def test_apply_mask_and_zero_fraction(lin):
    keep = sp.mask_layer(sp.magnitude_scores(lin.weight), 0.5)
    sp.apply_mask(lin.weight, keep)
    assert sp.zero_fraction(lin.weight) == 0.5


def test_block_influence_and_schedule():
    x = torch.randn(3, 5, 4)
    assert torch.allclose(sp.block_influence(x, x), torch.zeros(3, 5), atol=1e-6)
    assert torch.allclose(sp.block_influence(x, -x), torch.full((3, 5), 2.0), atol=1e-6)
    s = sp.round_sparsities(0.5, 3)
    assert len(s) == 3 and s[-1] == pytest.approx(0.5) and s[0] < s[1] < s[2]
    assert (1 - s[0]) ** 3 == pytest.approx(0.5)


def test_outlier_ratio_counts_scores_above_m_times_the_mean():
    scores = [torch.tensor([[1.0, 1.0], [1.0, 1.0]]), torch.tensor([10.0])]  # mean 2.8, threshold 8.4 at m=3
    assert sp.outlier_ratio(scores, 3.0) == pytest.approx(0.2)
    assert sp.outlier_ratio(scores, 4.0) == 0.0  # threshold 11.2
    assert sp.outlier_ratio([torch.zeros(4)], 5.0) == 0.0  # an input no token reached: no outliers


def test_owl_sparsities_shift_by_outliers_and_keep_the_mean():
    s = sp.owl_sparsities([0.0, 0.5, 1.0], target=0.5, lam=0.1)
    assert s == pytest.approx([0.6, 0.5, 0.4])  # most outliers: fewest zeros
    s = sp.owl_sparsities([0.02, 0.01, 0.05, 0.03], target=0.5, lam=0.08)
    assert sum(s) / 4 == pytest.approx(0.5) and max(s) - min(s) == pytest.approx(0.16)
    assert s.index(min(s)) == 2 and s.index(max(s)) == 1
    assert sp.owl_sparsities([0.3, 0.3], 0.5, 0.08) == [0.5, 0.5]


@pytest.mark.parametrize("ties", [False, True])
def test_masks_equal_a_stable_sort_of_the_scores(ties):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(12, 40, generator=g)
    if ties:  # few distinct values, and whole rows of zeros (inputs no token reached)
        scores = (scores * 4).floor()
        scores[3] = 0.0
    for sparsity in (0.1, 0.5, 0.77):
        k = int(40 * sparsity)
        ref = torch.ones_like(scores, dtype=torch.bool).scatter_(
            1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
        assert torch.equal(sp.mask_rows(scores, sparsity), ref)
        k = int(scores.numel() * sparsity)
        ref = torch.ones(scores.numel(), dtype=torch.bool)
        ref[torch.argsort(scores.flatten(), stable=True)[:k]] = False
        assert torch.equal(sp.mask_layer(scores, sparsity), ref.view_as(scores))
