"""Write dataset clips as 16 kHz mono FLAC or Ogg Vorbis, byte-for-byte reproducible.

libsndfile gives every Ogg stream a random serial number, so two runs would write different bytes
for the same samples; :func:`write_audio` sets the serial from the file name and recomputes the
page checksums, so the same seed gives identical files.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

from compress.errors import ConfigError, choices
from compress.fileio import write_bytes
from .signals import SR

FORMATS = {"ogg": ("OGG", "VORBIS"), "flac": ("FLAC", "PCM_16")}
OGG_QUALITY = 0.5  # libsndfile compression_level for Vorbis: 0 = best quality, 1 = smallest


def _crc_table():
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_CRC = _crc_table()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    table = _CRC
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ b) & 0xFF]
    return crc


def set_ogg_serial(data: bytes, serial: int) -> bytes:
    """The same Ogg stream with every page's serial number set to ``serial`` (checksums redone)."""
    out, pos = bytearray(data), 0
    while pos < len(out):
        if out[pos:pos + 4] != b"OggS":
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_seg = out[pos + 26]
        size = 27 + n_seg + sum(out[pos + 27:pos + 27 + n_seg])
        struct.pack_into("<I", out, pos + 14, serial)
        struct.pack_into("<I", out, pos + 22, 0)
        struct.pack_into("<I", out, pos + 22, _ogg_crc(bytes(out[pos:pos + size])))
        pos += size
    return bytes(out)


def write_audio(path, wav: np.ndarray, fmt: str = "ogg") -> int:
    """Write a 16 kHz mono clip; returns the file size in bytes."""
    import soundfile as sf

    if fmt not in FORMATS:
        raise ConfigError(f"unknown audio format {fmt!r}; valid: {choices(FORMATS)}")
    container, subtype = FORMATS[fmt]
    wav = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    kwargs = {"compression_level": OGG_QUALITY} if fmt == "ogg" else {}
    sf.write(buf, wav, SR, format=container, subtype=subtype, **kwargs)
    data = buf.getvalue()
    if fmt == "ogg":
        data = set_ogg_serial(data, zlib.crc32(Path(path).name.encode()))
    write_bytes(path, data)
    return len(data)
