"""Training the embedded demo SALMONN on this project's own data (``python -m demo_factory.train``).

Frozen: Whisper tiny.en's encoder and SmolLM2-135M-Instruct (both from PyPI wheels, see
compress.models.sources). Trained: BEATs (from scratch), the window-level Q-Former, the projection and LoRA.

Modules: :mod:`.settings` (hyper-parameters and the model shape), :mod:`.featcache` (cached encoder inputs,
one file per clip), :mod:`.loop` (the losses and the two stages, on compress.trainloop),
:mod:`.pipeline` (the command and its stages), :mod:`.ablation` (does BEATs carry information).
"""
