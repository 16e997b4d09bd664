"""The speech Q-Former: released key names, windowing as F.unfold, and numerics against transformers' BLIP-2 Q-Former."""

import pytest
import torch
import torch.nn.functional as F

from compress.errors import ConfigError
from compress.models.qformer import QFormerConfig, SpeechQFormer, window_frames

# The released SALMONN checkpoints' speech_Qformer keys for one layer (prefix speech_Qformer.bert.).
LAYER_KEYS = [
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "attention.output.LayerNorm",
    "crossattention.self.query", "crossattention.self.key", "crossattention.self.value",
    "crossattention.output.dense", "crossattention.output.LayerNorm",
    "intermediate_query.dense", "output_query.dense", "output_query.LayerNorm",
]


def test_key_names_and_shapes_match_release():
    q = SpeechQFormer(QFormerConfig(encoder_width=1280 + 768))
    keys = set(q.state_dict())
    expected = {"bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"}
    for i in range(2):
        for k in LAYER_KEYS:
            expected |= {f"bert.encoder.layer.{i}.{k}.weight", f"bert.encoder.layer.{i}.{k}.bias"}
    assert keys == expected
    sd = q.state_dict()
    assert sd["bert.encoder.layer.0.crossattention.self.key.weight"].shape == (768, 2048)
    assert sd["bert.encoder.layer.1.intermediate_query.dense.weight"].shape == (3072, 768)


def test_window_frames_equals_reference_unfold():
    x = torch.randn(2, 1500, 6)
    k = s = round(1500 * 0.333333 / 30)
    assert k == 17
    # The reference: transpose, unsqueeze, F.unfold, view, permute, reshape.
    ref = F.unfold(x.transpose(1, 2).unsqueeze(2), kernel_size=(1, k), stride=(1, s))
    L = ref.shape[-1]
    ref = ref.view(2, -1, k, L).permute(0, 3, 2, 1).reshape(-1, k, 6)
    ours = window_frames(x, k, s)
    assert L == 88 and torch.equal(ours, ref)


def test_matches_transformers_blip2_qformer():
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    torch.manual_seed(0)
    cfg = QFormerConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, encoder_width=24)
    ours = SpeechQFormer(cfg).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ref = Blip2QFormerModel(Blip2QFormerConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                               num_hidden_layers=2, encoder_hidden_size=24,
                                               cross_attention_frequency=1, layer_norm_eps=1e-12)).eval()
    mapped = {}
    for k, v in ours.state_dict().items():
        k = k.replace("bert.embeddings.LayerNorm", "layernorm").replace("bert.", "")
        mapped[k.replace(".self.", ".attention.")] = v
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not missing and not unexpected  # one-to-one correspondence of tensors
    qe = torch.randn(5, 1, 32)
    enc = torch.randn(5, 17, 24)
    mask = torch.ones(5, 17, dtype=torch.long)
    mask[1, 10:] = 0
    with torch.no_grad():
        a = ours(qe, enc, mask)
        b = ref(query_embeds=qe, encoder_hidden_states=enc, encoder_attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sdpa_path_equals_eager():
    torch.manual_seed(1)
    q = SpeechQFormer(QFormerConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, encoder_width=24)).eval()
    qe, enc = torch.randn(3, 1, 32), torch.randn(3, 17, 24)
    mask = torch.ones(3, 17, dtype=torch.long)
    with torch.no_grad():
        eager = q(qe, enc, mask)
        for m in q.modules():
            if hasattr(m, "use_sdpa"):
                m.use_sdpa = True
        sdpa = q(qe, enc, mask)
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-6)


def test_bad_config():
    with pytest.raises(ConfigError, match="divisible"):
        QFormerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="hidden_act"):
        QFormerConfig(hidden_act="swish")


@pytest.mark.parametrize("sdpa", [False, True])
def test_dropout_acts_in_train_mode_only(sdpa):
    torch.manual_seed(0)
    kw = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2, encoder_width=24)
    plain = SpeechQFormer(QFormerConfig(**kw))
    drop = SpeechQFormer(QFormerConfig(**kw, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    drop.load_state_dict(plain.state_dict())
    for m in (plain, drop):
        for mod in m.modules():
            if hasattr(mod, "use_sdpa"):
                mod.use_sdpa = sdpa
    q, frames = torch.randn(3, 1, 32), torch.randn(3, 10, 24)
    drop.train()
    a, b = drop(q, frames), drop(q, frames)
    assert not torch.allclose(a, b)  # a different mask each call
    drop.eval()
    plain.eval()
    torch.testing.assert_close(drop(q, frames), plain(q, frames))  # no dropout at inference
    with pytest.raises(ConfigError, match="hidden_dropout_prob"):
        QFormerConfig(**kw, hidden_dropout_prob=1.0)
