"""Warm start of the window-level Q-Former from Whisper's own decoder layers.

Whisper tiny.en's decoder layers have the Q-Former's shape (hidden 384, 6 heads, FFN 1536, self-attention,
cross-attention to the encoder's frames, FFN) and were trained to read those very frames into text. The Q-Former's
BERT layers put the LayerNorm after each residual add (post-LN) where Whisper puts it before each sublayer (pre-LN),
so the copy is a warm start, not the same function: each post-LN LayerNorm takes the pre-LN norm of the sublayer
that follows it in Whisper (the last one: the next decoder layer's, or the decoder's final norm). The cross-attention
keys and values read [Whisper ; BEATs] frames: Whisper's columns are copied, BEATs' keep their fresh initialisation.
"""

from __future__ import annotations

import torch

from compress.errors import ConfigError


def _dec(sd: dict, i: int, name: str) -> torch.Tensor:
    return sd[f"layers.{i}.{name}"]


def _post_norm(sd: dict, i: int, n_dec: int) -> tuple:
    """(weight, bias) of the norm that follows decoder layer i's FFN: the next layer's first norm, else the final."""
    if i + 1 < n_dec:
        return _dec(sd, i + 1, "self_attn_layer_norm.weight"), _dec(sd, i + 1, "self_attn_layer_norm.bias")
    return sd["layer_norm.weight"], sd["layer_norm.bias"]


def qformer_from_whisper_decoder(decoder_state: dict, qformer_state: dict, layers: list) -> dict:
    """New Q-Former tensors (names of `SpeechQFormer.state_dict()`) from a Whisper decoder's state dict
    (names of `WhisperDecoder.state_dict()`): Q-Former layer j takes decoder layer layers[j].

    Pure function: `qformer_state` gives the current (fresh) tensors, which are returned for every name not taken
    from Whisper. Raises ConfigError when the shapes do not match."""
    n_dec = 1 + max(int(k.split(".")[1]) for k in decoder_state if k.startswith("layers."))
    out = {k: v.clone() for k, v in qformer_state.items()}
    n_q = 1 + max(int(k.split(".")[3]) for k in qformer_state if k.startswith("bert.encoder.layer."))
    if len(layers) != n_q:
        raise ConfigError(f"qformer_init: {len(layers)} decoder layer(s) {layers} for {n_q} Q-Former layer(s)")
    bad = [i for i in layers if not 0 <= i < n_dec]
    if bad:
        raise ConfigError(f"qformer_init: decoder layer(s) {bad} do not exist; the decoder has layers 0..{n_dec - 1}")

    def put(name: str, src: torch.Tensor, leading_columns: bool = False):
        """Copy src into out[name]; with leading_columns, into its first src.shape[1] input columns only."""
        dst = out[name]
        fits = (src.shape[0] == dst.shape[0] and src.shape[1] <= dst.shape[1]) if leading_columns and src.dim() == 2 \
            else tuple(src.shape) == tuple(dst.shape)
        if not fits:
            raise ConfigError(f"qformer_init: Whisper tensor of shape {tuple(src.shape)} cannot fill {name} "
                              f"{tuple(dst.shape)} (the Q-Former's hidden, heads and FFN must match the decoder's)")
        if leading_columns:
            out[name][:, :src.shape[1]] = src.detach().to(dst.dtype)
        else:
            out[name] = src.detach().clone().to(dst.dtype)

    for j, i in enumerate(layers):
        q = f"bert.encoder.layer.{j}."
        if f"{q}crossattention.self.query.weight" not in out:
            raise ConfigError(f"qformer_init: Q-Former layer {j} has no cross-attention (cross_attention_freq > 1)")
        for part, src in (("attention", "self_attn"), ("crossattention", "encoder_attn")):
            for mine, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
                w = _dec(decoder_state, i, f"{src}.{theirs}.weight")
                cross_kv = part == "crossattention" and mine != "query"
                put(f"{q}{part}.self.{mine}.weight", w, leading_columns=cross_kv)
                bias = decoder_state.get(f"layers.{i}.{src}.{theirs}.bias")
                put(f"{q}{part}.self.{mine}.bias", bias if bias is not None else torch.zeros_like(out[
                    f"{q}{part}.self.{mine}.bias"]))
            put(f"{q}{part}.output.dense.weight", _dec(decoder_state, i, f"{src}.out_proj.weight"))
            put(f"{q}{part}.output.dense.bias", _dec(decoder_state, i, f"{src}.out_proj.bias"))
        # post-LN norms: the pre-LN norm of the sublayer that follows in Whisper
        for dst, src in (("attention", "encoder_attn_layer_norm"), ("crossattention", "final_layer_norm")):
            put(f"{q}{dst}.output.LayerNorm.weight", _dec(decoder_state, i, f"{src}.weight"))
            put(f"{q}{dst}.output.LayerNorm.bias", _dec(decoder_state, i, f"{src}.bias"))
        w, b = _post_norm(decoder_state, i, n_dec)
        put(f"{q}output_query.LayerNorm.weight", w)
        put(f"{q}output_query.LayerNorm.bias", b)
        put(f"{q}intermediate_query.dense.weight", _dec(decoder_state, i, "fc1.weight"))
        put(f"{q}intermediate_query.dense.bias", _dec(decoder_state, i, "fc1.bias"))
        put(f"{q}output_query.dense.weight", _dec(decoder_state, i, "fc2.weight"))
        put(f"{q}output_query.dense.bias", _dec(decoder_state, i, "fc2.bias"))
    # the embeddings' norm sees the queries first, as the first layer's self-attention norm does in Whisper
    put("bert.embeddings.LayerNorm.weight", _dec(decoder_state, layers[0], "self_attn_layer_norm.weight"))
    put("bert.embeddings.LayerNorm.bias", _dec(decoder_state, layers[0], "self_attn_layer_norm.bias"))
    return out


def start_query(decoder_state: dict, token_id: int, queries: int) -> torch.Tensor:
    """(1, queries, hidden) query tokens: the decoder's input for `token_id` at positions 0..queries-1."""
    emb = decoder_state["embed_tokens.weight"][token_id]
    pos = decoder_state["embed_positions.weight"][:queries]
    return (emb[None] + pos)[None].detach().clone()


def apply(model, decoder, layers: list) -> dict:
    """Fill `model.speech_Qformer` and `model.speech_query_tokens` from a Whisper decoder module (in place).
    Returns a summary for the training manifest."""
    sd = decoder.state_dict()
    qf = model.speech_Qformer
    new = qformer_from_whisper_decoder(sd, qf.state_dict(), list(layers))
    qf.load_state_dict(new)
    queries = start_query(sd, int(decoder.config.decoder_start_token_id), model.speech_query_tokens.shape[1])
    if queries.shape != model.speech_query_tokens.shape:
        raise ConfigError(f"qformer_init: Whisper's token embedding {tuple(queries.shape[-1:])} does not fit the "
                          f"query tokens {tuple(model.speech_query_tokens.shape)}")
    with torch.no_grad():
        model.speech_query_tokens.copy_(queries.to(model.speech_query_tokens.dtype))
    return {"from": "whisper decoder", "layers": list(layers)}
