"""The Q-Former's warm start from Whisper's decoder layers (demo_factory/train/qformer_init.py)."""

import pytest
import torch
from transformers import WhisperConfig, WhisperModel

from compress.errors import ConfigError
from compress.models.config import SalmonnConfig
from compress.models.qformer import QFormerConfig, SpeechQFormer
from demo_factory.train import settings as S
from demo_factory.train.qformer_init import qformer_from_whisper_decoder, start_query

D, HEADS, FFN, BEATS = 32, 2, 64, 16


def _decoder(layers=3, seed=0):
    torch.manual_seed(seed)
    cfg = WhisperConfig(d_model=D, encoder_layers=1, encoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                        decoder_layers=layers, decoder_attention_heads=HEADS, decoder_ffn_dim=FFN, num_mel_bins=8,
                        max_source_positions=16, vocab_size=40, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                        decoder_start_token_id=3)
    dec = WhisperModel(cfg).decoder.eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong copy shows
        for name, p in dec.named_parameters():
            if "layer_norm" in name or name.endswith("bias"):
                p.normal_(0.5, 0.3)
    return dec


def _qformer(hidden=D):
    torch.manual_seed(1)
    return SpeechQFormer(QFormerConfig(hidden_size=hidden, num_attention_heads=HEADS, intermediate_size=FFN,
                                       num_hidden_layers=2, encoder_width=D + BEATS)).eval()


def test_cross_attention_reads_whisper_frames_as_the_decoder_does():
    dec, qf = _decoder(), _qformer()
    fresh = qf.state_dict()
    qf.load_state_dict(qformer_from_whisper_decoder(dec.state_dict(), fresh, [1, 2]))
    torch.manual_seed(2)
    h, frames = torch.randn(3, 1, D), torch.randn(3, 10, D)
    with_beats = torch.cat([frames, torch.zeros(3, 10, BEATS)], dim=-1)  # BEATs columns see zeros
    for j, i in enumerate([1, 2]):
        mine = qf.bert.encoder.layer[j]
        for part, theirs, kv, kv_mine in (("crossattention", dec.layers[i].encoder_attn, frames, with_beats),
                                          ("attention", dec.layers[i].self_attn, None, None)):
            att = getattr(mine, part)
            got = att.output.dense(att.self(h, kv_mine))
            want = theirs(hidden_states=h, key_value_states=kv)[0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.output_query.dense(mine.intermediate_query(h)),
                                   dec.layers[i].fc2(torch.nn.functional.gelu(dec.layers[i].fc1(h))))


def test_norms_follow_the_sublayer_that_comes_next_and_beats_columns_stay_fresh():
    dec, qf = _decoder(), _qformer()
    fresh = qf.state_dict()
    sd = dec.state_dict()
    new = qformer_from_whisper_decoder(sd, fresh, [0, 2])
    L = "bert.encoder.layer."
    assert torch.equal(new[f"{L}0.attention.output.LayerNorm.weight"], sd["layers.0.encoder_attn_layer_norm.weight"])
    assert torch.equal(new[f"{L}0.crossattention.output.LayerNorm.bias"], sd["layers.0.final_layer_norm.bias"])
    assert torch.equal(new[f"{L}0.output_query.LayerNorm.weight"], sd["layers.1.self_attn_layer_norm.weight"])
    assert torch.equal(new[f"{L}1.output_query.LayerNorm.weight"], sd["layer_norm.weight"])  # last decoder layer
    assert torch.equal(new["bert.embeddings.LayerNorm.weight"], sd["layers.0.self_attn_layer_norm.weight"])
    key = new[f"{L}1.crossattention.self.key.weight"]
    assert torch.equal(key[:, :D], sd["layers.2.encoder_attn.k_proj.weight"])
    assert torch.equal(key[:, D:], fresh[f"{L}1.crossattention.self.key.weight"][:, D:])
    assert torch.count_nonzero(new[f"{L}1.crossattention.self.key.bias"]) == 0  # Whisper's k_proj has no bias
    assert torch.equal(fresh[f"{L}1.crossattention.self.key.weight"], qf.state_dict()[f"{L}1.crossattention.self.key.weight"])


def test_mismatched_shapes_and_layers_are_refused():
    dec = _decoder()
    with pytest.raises(ConfigError, match="cannot fill"):
        qformer_from_whisper_decoder(dec.state_dict(), _qformer(hidden=2 * D).state_dict(), [0, 1])
    with pytest.raises(ConfigError, match="do not exist"):
        qformer_from_whisper_decoder(dec.state_dict(), _qformer().state_dict(), [0, 3])
    with pytest.raises(ConfigError, match="Q-Former layer"):
        qformer_from_whisper_decoder(dec.state_dict(), _qformer().state_dict(), [0])


def test_start_query_is_the_decoders_first_input():
    dec = _decoder()
    q = start_query(dec.state_dict(), 3, 2)
    ids = torch.tensor([[3, 3]])
    want = dec.embed_tokens(ids) + dec.embed_positions.weight[:2]
    torch.testing.assert_close(q, want)


def test_settings_validate_the_init_and_flags():
    with pytest.raises(ConfigError, match="true or false"):
        S.preset("test").replace(instruction_first="False")
    cfg = S.salmonn_config(S.preset("test")).to_dict()
    with pytest.raises(ConfigError, match="instruction_first"):
        SalmonnConfig.from_dict({**cfg, "instruction_first": "yes"})
    assert SalmonnConfig.from_dict({k: v for k, v in cfg.items() if k != "instruction_first"}).instruction_first is False
    with pytest.raises(ConfigError, match="qformer_init"):
        S.preset("test").replace(qformer_init="bert")
    with pytest.raises(ConfigError, match="qformer_init_layers"):
        S.preset("test").replace(qformer_init="whisper-decoder", qformer_init_layers=[0])


def test_assemble_starts_the_qformer_from_the_decoder():
    from demo_factory.train.pipeline import assemble, stage_llm, whisper_decoder

    w = S.tiny_whisper()
    ts = S.preset("test").replace(qformer_hidden=w["d_model"], qformer_heads=w["decoder_attention_heads"],
                                  qformer_ffn=w["decoder_ffn_dim"], qformer_init="whisper-decoder",
                                  qformer_init_layers=[0, 0])
    tok, folder = stage_llm(ts, progress=False)
    model, _ = assemble(ts, S.salmonn_config(ts), tok, folder)
    dec = whisper_decoder(ts).state_dict()
    qf = model.speech_Qformer.state_dict()
    for j in (0, 1):
        assert torch.equal(qf[f"bert.encoder.layer.{j}.attention.self.query.weight"], dec["layers.0.self_attn.q_proj.weight"])
    first = dec["embed_tokens.weight"][w["decoder_start_token_id"]] + dec["embed_positions.weight"][0]
    torch.testing.assert_close(model.speech_query_tokens[0, 0], first)
