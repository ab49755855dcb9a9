"""WAV files of a microphone's raw output -> the 32-bit words an I2S microphone delivers.

Reads RIFF/WAVE itself (the standard library's `wave` rejects WAVE_FORMAT_EXTENSIBLE, which most
tools write for 24-bit audio): PCM 8/16/24/32-bit and IEEE float 32/64-bit, mono.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ...errors import FatalError

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


def read(path: Path) -> tuple[int, np.ndarray]:
    """(sample rate, samples as int32 words with the sample left-justified, full scale 2**31)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FatalError(f"{path}: {exc.strerror or exc}") from exc
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise FatalError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    fmt = body = None
    i = 12
    while i + 8 <= len(data):
        cid, size = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        chunk = data[i + 8:i + 8 + size]
        if cid == b"fmt ":
            fmt = chunk
        elif cid == b"data":
            body = chunk
        i += 8 + size + (size & 1)
    if fmt is None or body is None or len(fmt) < 16:
        raise FatalError(f"{path}: WAV without fmt or data chunk")
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID's first two bytes
    if channels != 1:
        raise FatalError(f"{path}: {channels} channels; give a mono WAV")
    width = align // channels if align else bits // 8
    body = body[:len(body) - len(body) % width]
    if tag == PCM and width in (1, 2, 3, 4):
        raw = np.frombuffer(body, np.uint8).reshape(-1, width)
        words = np.zeros((len(raw), 4), np.uint8)
        words[:, 4 - width:] = raw  # left-justify: the sample's bytes go to the top
        if width == 1:  # 8-bit WAV is unsigned
            words[:, 3] ^= 0x80
        return rate, words.reshape(-1).view("<i4")
    if tag == FLOAT and width in (4, 8):
        x = np.frombuffer(body, "<f4" if width == 4 else "<f8").astype(np.float64)
        return rate, np.clip(np.round(x * 2 ** 31), -2 ** 31, 2 ** 31 - 1).astype("<i4")
    raise FatalError(f"{path}: WAV format {tag} with {bits}-bit samples is not supported; "
                     "give PCM (8/16/24/32-bit) or float")
