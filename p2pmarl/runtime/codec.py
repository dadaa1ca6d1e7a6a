"""The wire format: a typed message with a versioned header, encoded with msgpack.

Numpy arrays travel as dtype + shape + raw bytes inside a msgpack extension; nothing is ever
pickled, so a hostile peer can at worst make :func:`decode` raise :class:`CodecError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

WIRE_VERSION = 1
"""Bumped whenever the header or the array encoding changes."""
ARRAY_EXT_CODE = 42
"""msgpack extension type that carries one numpy array."""
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|u1", "|b1", "<u8"})
"""Little-endian dtypes accepted off the wire; anything else is rejected."""
MAX_ARRAY_DIMENSIONS = 8
"""Arrays with more dimensions are rejected."""
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""Frames larger than this are rejected before decoding."""
WORLD = -1
"""Sender/receiver id of the world process."""
LAUNCHER = -2
"""Sender/receiver id of the launcher."""

_HEADER_FIELDS = ("v", "kind", "sender", "receiver", "round", "seq", "body")
_HEADER_KEYS = frozenset(_HEADER_FIELDS)
_DTYPES = {name.encode(): np.dtype(name) for name in ALLOWED_DTYPES}
"""Allowed dtypes by their 3 wire bytes (a dict lookup instead of parsing per array)."""
_SHAPES = [struct.Struct(f"<3sB{ndim}q") for ndim in range(MAX_ARRAY_DIMENSIONS + 1)]
"""Compiled array headers by number of dimensions: dtype, ndim, shape."""


class CodecError(ValueError):
    """A frame that is not a valid p2pmarl message; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    """One message: who sent it to whom, in which training round, and its payload."""

    kind: str
    sender: int
    receiver: int
    round: int
    sequence: int = 0
    body: Mapping[str, Any] = field(default_factory=dict)


def _encode_array(array: np.ndarray) -> msgpack.ExtType:
    """Extension payload: dtype string (3 ASCII bytes), ndim (1 byte), shape (ndim × int64 LE),
    then the raw little-endian data."""
    dtype = array.dtype
    if dtype.byteorder == ">":
        dtype = dtype.newbyteorder("<")
        array = array.astype(dtype)
    name = dtype.str
    if name not in ALLOWED_DTYPES:
        raise CodecError("bad_dtype", f"cannot send arrays of dtype {array.dtype}")
    if array.ndim > MAX_ARRAY_DIMENSIONS:
        raise CodecError("bad_array", f"cannot send arrays of {array.ndim} dimensions")
    header = _SHAPES[array.ndim].pack(name.encode(), array.ndim, *array.shape)
    return msgpack.ExtType(ARRAY_EXT_CODE, header + array.tobytes())  # tobytes: C order


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return _encode_array(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")


def _decode_array(code: int, data: bytes) -> np.ndarray:
    if code != ARRAY_EXT_CODE:
        raise CodecError("bad_extension", f"unknown msgpack extension {code}")
    if len(data) < 4:
        raise CodecError("bad_array", "array header is truncated")
    dtype = _DTYPES.get(data[:3])
    if dtype is None:
        dtype_str = data[:3].decode("ascii", errors="replace")
        raise CodecError("bad_dtype", f"dtype {dtype_str!r} is not allowed")
    ndim = data[3]
    offset = 4 + 8 * ndim
    if ndim > MAX_ARRAY_DIMENSIONS or len(data) < offset:
        raise CodecError("bad_array", f"array header with {ndim} dimensions is malformed")
    shape = _SHAPES[ndim].unpack_from(data)[2:]
    if any(size < 0 for size in shape):
        raise CodecError("bad_array", f"shape {list(shape)} has a negative size")
    dtype_str = dtype.str
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - offset != expected:
        raise CodecError(
            "bad_array",
            f"shape {list(shape)} of {dtype_str} needs {expected} bytes, got {len(data) - offset}",
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def encode(message: Message) -> bytes:
    """Message → bytes (eq. of the header: v, kind, sender, receiver, round, seq, body)."""
    frame = {
        "v": WIRE_VERSION,
        "kind": message.kind,
        "sender": message.sender,
        "receiver": message.receiver,
        "round": message.round,
        "seq": message.sequence,
        "body": dict(message.body),
    }
    try:
        return msgpack.packb(frame, default=_default, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise CodecError("unencodable", str(error)) from error


def decode(frame: bytes) -> Message:
    """Bytes → Message, or :class:`CodecError` naming why the frame was rejected."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise CodecError("too_large", f"{len(frame)} bytes")
    try:
        raw = msgpack.unpackb(
            frame, raw=False, ext_hook=_decode_array, strict_map_key=True, use_list=True
        )
    except CodecError:
        raise
    except Exception as error:  # msgpack raises many unrelated types on garbage
        raise CodecError("garbage", f"{type(error).__name__}: {error}") from error
    return _validate_header(raw)


def _validate_header(raw: Any) -> Message:
    # type(...) is int: msgpack decodes integers as int and booleans as bool, never subclasses
    if type(raw) is not dict or raw.keys() != _HEADER_KEYS:
        raise CodecError("bad_schema", "frame is not a message header map")
    version = raw["v"]
    if type(version) is not int or version != WIRE_VERSION:
        raise CodecError("bad_version", f"wire version {version!r}, expected {WIRE_VERSION}")
    if type(raw["kind"]) is not str or type(raw["body"]) is not dict:
        raise CodecError("bad_schema", "kind must be a string and body a map")
    for name in ("sender", "receiver", "round", "seq"):
        if type(raw[name]) is not int:
            raise CodecError("bad_schema", f"header field {name!r} must be an integer")
    for key in raw["body"]:
        if type(key) is not str:
            raise CodecError("bad_schema", "body keys must be strings")
    return Message(
        kind=raw["kind"],
        sender=raw["sender"],
        receiver=raw["receiver"],
        round=raw["round"],
        sequence=raw["seq"],
        body=raw["body"],
    )


def require_array(
    body: Mapping[str, Any],
    key: str,
    *,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    finite: bool = True,
) -> np.ndarray:
    """Fetch ``body[key]`` as an array of the expected shape/dtype or raise :class:`CodecError`.

    Receivers call this on every array they are about to use, so wrong shapes, dtypes and
    NaN/Inf are rejected before any state is touched.
    """
    value = body.get(key)
    if not isinstance(value, np.ndarray):
        raise CodecError("bad_schema", f"field {key!r} is missing or not an array")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise CodecError("bad_shape", f"field {key!r} has shape {value.shape}, expected {shape}")
    if dtype is not None and value.dtype != np.dtype(dtype):
        raise CodecError("bad_dtype", f"field {key!r} has dtype {value.dtype}, expected {dtype}")
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise CodecError("not_finite", f"field {key!r} contains NaN or Inf")
    return value
