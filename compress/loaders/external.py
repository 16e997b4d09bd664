"""Frozen parts an artifact names instead of storing: which state-dict keys they cover, and filling them in.

An artifact's config.json may hold `external: {part: entry}` where each entry names an installed weight source
(compress.models.sources: package, version, file, sha256). Saving leaves those tensors out of model.safetensors;
loading takes them from the installed source after checking its hash. LoRA tensors inside the LLM are trained,
so they are always stored.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import CheckpointError, choices

PREFIXES = {"speech_encoder": "speech_encoder.", "llm": "llama_model."}
_PEFT = "base_model.model."


def source_key(part: str, key: str) -> Optional[str]:
    """The source's name of model state key `key` of `part`, or None when the key is not the source's
    (another part, or a LoRA tensor)."""
    prefix = PREFIXES[part]
    if not key.startswith(prefix) or "lora_" in key:
        return None
    rest = key[len(prefix):]
    if rest.startswith(_PEFT):
        rest = rest[len(_PEFT):]
    return rest.replace(".base_layer.", ".")


def covered_keys(model, external: dict) -> set:
    """Model state keys that the external parts provide."""
    out = set()
    for part in external:
        if part not in PREFIXES:
            raise CheckpointError(f"external part {part!r} is not supported; valid: {choices(PREFIXES)}")
        out.update(k for k in model.state_dict() if source_key(part, k) is not None)
    return out


@torch.no_grad()
def load_external(model, external: dict, log=None) -> set:
    """Copy each external part's source weights into `model` (hashes checked); returns the keys filled."""
    from ..models.sources import source_state

    filled = set()
    state = model.state_dict()  # tensors sharing the parameters' storage: copied into one at a time
    for part, entry in external.items():
        src = source_state(entry)  # may be lazy (read per tensor): no second anonymous copy of the source
        pairs, missing = {}, []
        for k in state:
            sk = source_key(part, k)
            if sk is None:
                continue
            if sk in src:
                pairs[k] = sk
            elif sk == "lm_head.weight" and "model.embed_tokens.weight" in src:  # tied output layer
                pairs[k] = "model.embed_tokens.weight"
            else:
                missing.append(sk)
        if missing:
            raise CheckpointError(f"frozen part {part!r}: source {entry.get('source')!r} lacks {len(missing)} tensors "
                                  f"the model needs, e.g. {missing[:3]}")
        done: dict = {}  # tied tensors (one storage under two names) are copied once
        for k, sk in pairs.items():
            dst = state[k]
            if done.get(dst.data_ptr()) == sk:
                continue
            v = src[sk]
            if tuple(dst.shape) != tuple(v.shape):
                raise CheckpointError(f"frozen part {part!r}: {k} is {tuple(v.shape)} in source "
                                      f"{entry.get('source')!r} but {tuple(dst.shape)} in the model")
            dst.copy_(v)
            done[dst.data_ptr()] = sk
            del v
        filled.update(pairs)
        if log:
            log(f"{part}: {len(pairs)} tensors from {entry.get('package')} {entry.get('version')}")
    return filled
