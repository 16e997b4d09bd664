"""Our decode loop against transformers' generate() on a tiny random Llama fed with input embeddings."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from compress.generation import DecodeOptions, apply_repetition_penalty, decode


@pytest.fixture(scope="module")
def llm():
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64, vocab_size=50,
                               max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # sharpen the logits so beams differ from greedy in interesting ways
        m.lm_head.weight.mul_(8)
    return m


def _prompt(llm, b=2, s=7):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50, (b, s), generator=g)
    return llm.get_input_embeddings()(ids).detach()


def test_greedy_matches_transformers_generate(llm):
    emb = _prompt(llm)
    mask = torch.ones(emb.shape[:2], dtype=torch.long)
    ours = decode(llm, emb, mask, DecodeOptions(max_new_tokens=12, num_beams=1, min_length=0, eos_ids=[2]))
    ref = llm.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=12, do_sample=False,
                       num_beams=1, eos_token_id=2, pad_token_id=0)
    for o, r in zip(ours, ref.tolist()):
        assert o == (r[: r.index(2)] if 2 in r else r)


def test_beam_matches_transformers_generate(llm):
    emb = _prompt(llm, b=1)
    mask = torch.ones(emb.shape[:2], dtype=torch.long)
    opts = DecodeOptions(max_new_tokens=10, num_beams=4, min_length=0, eos_ids=[])
    ours = decode(llm, emb, mask, opts)
    ref = llm.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=10, do_sample=False,
                       num_beams=4, eos_token_id=None, pad_token_id=0, length_penalty=1.0)
    assert ours[0] == ref[0].tolist()


def test_ignore_eos_gives_exact_length_and_callback_per_step(llm):
    emb = _prompt(llm)
    mask = torch.ones(emb.shape[:2], dtype=torch.long)
    steps = []
    out = decode(llm, emb, mask, DecodeOptions(max_new_tokens=9, num_beams=1, eos_ids=[]), on_token=steps.append)
    assert steps == list(range(9))
    assert all(len(s) == 9 for s in out)


def test_left_padded_batch_equals_single(llm):
    e1 = _prompt(llm, b=1, s=5)
    e2 = _prompt(llm, b=1, s=8)
    pad = torch.zeros(1, 3, e1.shape[-1])
    emb = torch.cat([torch.cat([pad, e1], 1), e2], 0)
    mask = torch.tensor([[0] * 3 + [1] * 5, [1] * 8])
    opts = DecodeOptions(max_new_tokens=6, num_beams=1, eos_ids=[])
    both = decode(llm, emb, mask, opts)
    assert both[0] == decode(llm, e1, torch.ones(1, 5, dtype=torch.long), opts)[0]
    assert both[1] == decode(llm, e2, torch.ones(1, 8, dtype=torch.long), opts)[0]


def test_repetition_penalty_math():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    out = apply_repetition_penalty(logits, [[0, 1]], 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]
    assert apply_repetition_penalty(logits, [[0]], 1.0) is logits
