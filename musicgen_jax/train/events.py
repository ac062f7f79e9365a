"""A dependency-free TensorBoard scalar writer (event files that `tensorboard --logdir` reads).

tensorboardX would do, but it imports torch on start-up (seconds) and would be one more runtime
dependency for three protobuf fields. An event file is a TFRecord stream of `Event` protos:
    record  = uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
    Event   = {1: double wall_time, 2: int64 step, 3: string file_version | 5: Summary summary}
    Summary = {1: repeated Value value};  Value = {1: string tag, 2: float simple_value}
"""
from __future__ import annotations

import os
import socket
import struct
import time

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1  # CRC-32C (Castagnoli), reflected
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint((number << 3) | wire)
    if wire == 2:  # length-delimited
        return key + _varint(len(payload)) + payload
    return key + payload


def encode_event(step: int, wall_time: float, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(int(step)))
    if file_version is not None:
        out += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(_field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", float(v))))
                          for tag, v in scalars.items())
        out += _field(5, 2, values)
    return out


def frame_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def read_records(path: str) -> list[bytes]:
    """The payloads of a TFRecord file, checking both CRCs (tests and tools)."""
    out = []
    with open(path, "rb") as f:
        while header := f.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
                raise ValueError(f"{path}: corrupt record length")
            data = f.read(length)
            if struct.unpack("<I", f.read(4))[0] != _masked_crc(data):
                raise ValueError(f"{path}: corrupt record")
            out.append(data)
    return out


class EventWriter:
    """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>`."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        now = time.time()
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(now)}.{socket.gethostname()}")
        self._file = open(self.path, "ab")
        self._file.write(frame_record(encode_event(0, now, file_version="brain.Event:2")))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._file.write(frame_record(encode_event(step, time.time(), values)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
