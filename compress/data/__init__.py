"""The project's own speech + sound data: TTS sentences for ASR, procedural sounds for captioning, annotation I/O."""

from .annotations import Sample, read_annotations, write_annotations

__all__ = ["Sample", "read_annotations", "write_annotations"]
