"""The project's own speech + sound data: TTS sentences for ASR, procedural sounds for captioning
(``python -m demo_factory.data.build``). Annotation files are read and written by :mod:`compress.data.annotations`."""
