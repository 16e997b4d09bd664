"""The block-by-block calibration driver: stopping each forward at the LLM's first layer changes nothing."""

import pytest
import torch

from compress.loaders import load_model
from compress.steps import calibration as cal


def llm_setup():
    torch.manual_seed(0)
    model = load_model("tiny").eval()
    layers = model.llm_base().model.layers
    g = torch.Generator().manual_seed(3)
    samples = [torch.randn(1, n, model.llm_base().config.hidden_size, generator=g) for n in (5, 9)]
    forwards = []

    def forward(x):
        forwards.append(x)
        model.llama_model(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long))

    return model, layers, samples, forward, forwards


def recording_visit(seen: dict):
    """A visit that keeps each block's outputs, then changes the block as pruning does (later blocks must see it)."""
    def visit(i, block, run):
        seen[i] = [o.clone() for o in run()]
        with torch.no_grad():
            for p in block.parameters():
                p.mul_(0.9)

    return visit


@pytest.mark.parametrize("shared", [False, True])
def test_shared_call_gives_the_same_block_inputs_and_outputs(shared):
    _, layers, samples, forward, _ = llm_setup()
    seen, ref_seen = {}, {}
    cal.sequential_blocks(layers, samples, forward, recording_visit(seen), shared_call=shared)
    _, ref_layers, _, ref_forward, _ = llm_setup()  # the reference: the plain driver on a fresh copy
    cal.sequential_blocks(ref_layers, samples, ref_forward, recording_visit(ref_seen), shared_call=False)
    assert list(seen) == list(range(len(layers)))
    for i in seen:
        for a, b in zip(seen[i], ref_seen[i]):
            assert torch.equal(a, b)


def test_shared_call_stops_the_forward_at_the_first_layer():
    _, layers, samples, forward, forwards = llm_setup()
    ran = []
    handles = [layers[-1].register_forward_pre_hook(lambda m, a: ran.append(1))]
    cal.run_hooked(handles, lambda: cal.sequential_blocks(layers, samples, forward, lambda i, b, run: None,
                                                          shared_call=True))
    # the last layer runs once per sample, in the driver's replay; the recording forwards never reach it
    assert len(ran) == len(samples) and len(forwards) == len(samples)
