"""Annotation files (the audio clips a benchmark or a calibration runs on): reading, checking, writing."""

from .annotations import Sample, read_annotations, write_annotations

__all__ = ["Sample", "read_annotations", "write_annotations"]
