"""Q-Former window arithmetic (torch-free): how many windows cover a clip and how many mel frames they need.

Shared by the PyTorch model (compress.models.salmonn) and the torch-free runtime of an ONNX export
(compress.export.lite), so both cut a clip's features at the same frame.
"""

from __future__ import annotations

ENCODER_FRAMES_PER_30S = 1500  # Whisper's encoder frames for its 30 s input (50 per second)


def encoder_frames(seconds: float) -> int:
    """Whisper encoder frames in `seconds` of audio (how second_per_window / second_stride become window sizes)."""
    return round(ENCODER_FRAMES_PER_30S * seconds / 30.0)


def window_count(frames: int, kernel: int, stride: int) -> int:
    """Q-Former windows over `frames` encoder frames (whole windows only, as the unfold takes them)."""
    return (frames - kernel) // stride + 1


def real_mel_frames(num_samples: int, kernel: int, stride: int, full: int = 3000) -> int:
    """Mel frames to keep for a clip of num_samples at 16 kHz: its frames rounded up to whole
    Q-Former windows (the encoder halves the frame rate), at least one window, at most `full`."""
    enc = (num_samples // 160 + 1) // 2  # encoder frames covering the clip
    windows = max(1, -(-max(enc - kernel, 0) // stride) + 1)
    return min(full, 2 * ((windows - 1) * stride + kernel))
