"""Training the embedded demo SALMONN from scratch on this project's own data (``python -m compress.train.demo``).

Stages: train split (TTS + procedural sounds) -> BPE tokenizer -> text LM pretraining of a small Llama ->
frozen Whisper tiny.en features cached once -> SALMONN's audio stage (BEATs from scratch, Q-Former,
projection and LoRA trained with teacher forcing on ASR + captioning) -> artifact.

Modules: :mod:`.recipe` (hyper-parameters and the model shape), :mod:`.text` (tokenizer and LM
pretraining), :mod:`.features` (cached encoder inputs), :mod:`.audio_stage` (the SALMONN stage),
:mod:`.optim` (seeding, AdamW, schedule), :mod:`.demo` (the command and its stages).
"""
