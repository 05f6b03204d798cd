"""The IDX format MNIST ships in: a 4-byte magic, big-endian uint32 dimensions, then raw bytes.

Only unsigned-byte data (type 0x08) is handled: it is all MNIST uses.
"""

import math

import numpy as np

from stages.errors import PipelineError

UBYTE = 0x08


def encode(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array of any rank from 1 to 255."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX encoding takes uint8 arrays, got {array.dtype}")
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + np.ascontiguousarray(array).tobytes()


def decode(data: bytes, name: str) -> np.ndarray:
    """The array held in IDX bytes; `name` is what the error message calls the file."""
    if len(data) < 4:
        raise PipelineError(f"{name}: not an IDX file: {len(data)} bytes, shorter than a header")
    if data[0:2] != b"\x00\x00":
        raise PipelineError(f"{name}: not an IDX file: magic {data[:4].hex()} does not start 0000")
    if data[2] != UBYTE:
        raise PipelineError(f"{name}: IDX data type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    header_size = 4 + 4 * ndim
    if not 1 <= ndim <= 3:
        raise PipelineError(f"{name}: IDX with {ndim} dimensions, expected 1 to 3")
    if len(data) < header_size:
        raise PipelineError(f"{name}: IDX header truncated: {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header_size + math.prod(shape)
    if len(data) != expected:
        raise PipelineError(
            f"{name}: IDX shape {shape} needs {expected} bytes, file has {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
