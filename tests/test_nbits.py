"""GPTQ / RTN codes in ONNX Runtime's MatMulNBits layout: exact conversion (act-order included) and the module that
carries them into the ONNX export."""

import pytest
import torch

from compress.quant.gptq_math import gptq_quantize
from compress.quant.nbits import dequantize, from_gptq, pack_low_first, unpack_low_first
from compress.quant.packing import dequantize_packed
from compress.quant.qlinear import GPTQLinear
from compress.quant.rtn import rtn_quantize


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_low_first_packing_round_trips(bits):
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (3, 5, 37), generator=g)
    packed = pack_low_first(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, -(-37 * bits // 8))
    assert torch.equal(unpack_low_first(packed, bits, 37), codes.to(torch.int32))
    if bits == 4:  # element 0 in the low nibble, element 1 in the high one
        assert int(pack_low_first(torch.tensor([[3, 10]]), 4)[0, 0]) == 3 | (10 << 4)


def _gptq_linear(out_f, in_f, bits, group, act_order, sym, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    x = torch.randn(256, in_f, generator=g) * torch.linspace(0.2, 3.0, in_f)  # uneven columns: act-order moves them
    if act_order:
        qw, _ = gptq_quantize(w, x.T @ x, bits, group, sym=sym, act_order=True)
    else:
        qw = rtn_quantize(w, bits, group, sym=sym)
    return GPTQLinear.from_quantized(qw, torch.randn(out_f, generator=g), sym=sym, act_order=act_order)


@pytest.mark.parametrize("bits,group,act_order,sym", [(4, 32, True, True), (4, 32, False, False), (8, 64, True, True),
                                                      (2, 16, False, True), (4, 32, True, False)])
def test_conversion_is_exact(bits, group, act_order, sym):
    m = _gptq_linear(24, 80, bits, group, act_order, sym)  # 80 = 2 whole groups of 32 + a last one of 16
    w = from_gptq(m.qweight, m.qzeros, m.scales, m.g_idx, bits, m.in_features)
    assert w.block_size == group and w.b.shape == (24, -(-80 // group), group * bits // 8)
    assert (w.perm is not None) == act_order  # act-order permutes the columns; a plain grid does not
    assert (w.zero_points is None) == sym  # the symmetric grid's zero is MatMulNBits' default
    ref = dequantize_packed(m.qweight, m.qzeros, m.scales, m.g_idx, bits)
    assert torch.equal(dequantize(w), ref)


def test_refuses_groups_that_are_not_power_of_two_blocks():
    m = _gptq_linear(8, 48, 4, -1, False, True)  # one group of 48 columns
    with pytest.raises(ValueError, match="power-of-two"):
        from_gptq(m.qweight, m.qzeros, m.scales, m.g_idx, 4, 48)
    m3 = _gptq_linear(8, 64, 3, 32, False, True)
    with pytest.raises(ValueError, match="bits"):
        from_gptq(m3.qweight, m3.qzeros, m3.scales, m3.g_idx, 3, 64)


def test_nbits_linear_computes_what_the_gptq_linear_does():
    from compress.export.nbits_op import NBitsLinear

    m = _gptq_linear(24, 80, 4, 32, True, True, seed=3)
    n = NBitsLinear.from_gptq(m)
    x = torch.randn(2, 5, 80, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(n(x), m(x), atol=1e-5)
    assert n.b.dtype == torch.uint8 and n.perm.numel() == 80 and n.zero_points.numel() == 0


def test_weights_sharing_an_input_stack_into_one():
    """q, k and v codes stacked along N: one weight whose dequantized rows are theirs, in order; a different column
    order is refused (it could not share one Gather)."""
    from compress.quant.nbits import NBitsWeight, concat_outputs, dequantize, pack_low_first

    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(64, generator=g)

    def weight(n, zp):
        codes = torch.randint(0, 16, (n, 2, 32), generator=g)
        z = pack_low_first(torch.randint(0, 16, (n, 2), generator=g), 4) if zp else None
        return NBitsWeight(b=pack_low_first(codes, 4), scales=torch.rand(n, 2, generator=g), zero_points=z,
                           perm=perm, k=64, n=n, bits=4, block_size=32)

    ws = [weight(8, True), weight(4, False), weight(4, True)]
    both = concat_outputs(ws)
    assert both.n == 16 and both.b.shape == (16, 2, 16)
    torch.testing.assert_close(dequantize(both), torch.cat([dequantize(w) for w in ws]))
    other = NBitsWeight(**{**ws[1].__dict__, "perm": None})
    with pytest.raises(ValueError, match="column order"):
        concat_outputs([ws[0], other])


def _q41_weight(out_f, in_f, seed=0):
    """A weight as llama.cpp's Q4_1 dequantizes it: per block of 32, d * q + m with float16 d and m, and codes that
    reach 0 and 15 in every block (Q4_1 takes d = (max - min) / 15 and m = min)."""
    g = torch.Generator().manual_seed(seed)
    blocks = in_f // 32
    d = (torch.rand(out_f, blocks, 1, generator=g) * 0.01 + 1e-3).half().float()
    m = (-torch.rand(out_f, blocks, 1, generator=g) * 0.08).half().float()
    q = torch.randint(0, 16, (out_f, blocks, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    return (d * q + m).reshape(out_f, in_f)


def test_float_offset_grid_recovers_q4_1_weights_exactly():
    w = _q41_weight(16, 96)
    qw = rtn_quantize(w, 4, 32, sym=False, zero_point="float")
    assert torch.equal(qw.dequantize(), w) and bool((qw.zeros == 0).all())
    # a weight that never was Q4_1 is only approximated, by at most half a step per block
    r = torch.randn(16, 96, generator=torch.Generator().manual_seed(1))
    qr = rtn_quantize(r, 4, 32, sym=False, zero_point="float")
    err = (qr.dequantize() - r).abs().reshape(16, 3, 32).amax(-1)
    assert 0 < float(err.max()) and bool((err <= qr.scales.T * 0.5 + 1e-3).all())
    # the integer grid cannot place the offset: the same Q4_1 weight does not come back
    assert not torch.equal(rtn_quantize(w, 4, 32, sym=False).dequantize(), w)


def test_float_offsets_survive_gptq_linear_nbits_and_side_branch():
    """GPTQLinear keeps the offsets (spec round trip), MatMulNBits' layout keeps them beside zero points of 0, and
    MatMulNBits(x) + block sums @ offsets^T is x W^T; the side matrices hold them with a LoRA (x A B)."""
    from compress.export.genai_graph import side_matrices
    from compress.export.nbits_op import NBitsLinear
    from compress.quant.nbits import block_sums, unpack_low_first

    w = _q41_weight(24, 64, seed=2)
    qw = rtn_quantize(w, 4, 32, sym=False, zero_point="float")
    bias = torch.randn(24, generator=torch.Generator().manual_seed(3))
    m = GPTQLinear.from_quantized(qw, bias, sym=False, method="rtn")
    assert m.spec()["offsets"] is True and torch.equal(m.dequantize(), w)
    again = GPTQLinear.from_spec(m.spec())
    again.load_state_dict(m.state_dict())
    assert torch.equal(again.dequantize(), w)
    again.to(torch.bfloat16)
    assert again.offsets.dtype == torch.float16  # like the scales, never cast
    nw = from_gptq(m.qweight, m.qzeros, m.scales, m.g_idx, 4, 64, offsets=m.offsets)
    assert nw.offsets.shape == (24, 2) and bool((unpack_low_first(nw.zero_points, 4, 2) == 0).all())
    assert torch.equal(dequantize(nw), w)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(4))
    n = NBitsLinear.from_gptq(m)
    assert torch.allclose(n(x), x @ w.T + bias, atol=1e-5)
    assert torch.allclose(block_sums(x, nw), x.reshape(3, 2, 32).sum(-1))
    a, b = torch.randn(4, 64), torch.randn(24, 4)
    a_cat, b_cat = side_matrices([nw], [(a, b, 0.5)])
    assert a_cat.shape == (64, 4 + 2) and b_cat.shape == (4 + 2, 24)
    side = x @ torch.from_numpy(a_cat) @ torch.from_numpy(b_cat)
    assert torch.allclose(side, 0.5 * (x @ a.T @ b.T) + block_sums(x, nw) @ nw.offsets.T, atol=1e-5)
