"""The wire codec: round trips (property-based) and rejection of everything else."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pmarl.runtime.codec import (
    ARRAY_EXT_CODE,
    CodecError,
    Message,
    decode,
    encode,
    require_array,
)

DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.bool_])
ARRAYS = DTYPES.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3)))
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(), st.booleans()
)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.text(min_size=1, max_size=20),
    sender=st.integers(-2, 1000),
    receiver=st.integers(-2, 1000),
    round_=st.integers(0, 2**31),
    sequence=st.integers(0, 2**40),
    scalars=st.dictionaries(st.text(max_size=10), SCALARS, max_size=4),
    arrays=st.dictionaries(st.text(min_size=1, max_size=10).map(lambda s: "a" + s), ARRAYS,
                           max_size=3),
)
def test_round_trip(kind, sender, receiver, round_, sequence, scalars, arrays):
    body = {**scalars, **arrays}
    message = Message(kind, sender, receiver, round_, sequence, body)
    decoded = decode(encode(message))
    assert (decoded.kind, decoded.sender, decoded.receiver, decoded.round, decoded.sequence) == (
        kind, sender, receiver, round_, sequence)
    assert set(decoded.body) == set(body)
    for key, value in body.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(decoded.body[key], value)
            assert decoded.body[key].dtype == value.dtype
            assert decoded.body[key].shape == value.shape
        else:
            assert decoded.body[key] == value


def _reference_frame(message: Message) -> bytes:
    """The wire format as its docstrings state it, written the slow way: a msgpack map of the
    header fields, each array an extension 42 of dtype (3 ASCII bytes), ndim (1 byte), shape
    (int64 LE each) and the little-endian C-order bytes."""

    def array(value: np.ndarray) -> msgpack.ExtType:
        little = value.astype(value.dtype.newbyteorder("<"))
        header = little.dtype.str.encode() + bytes([value.ndim])
        header += b"".join(struct.pack("<q", size) for size in value.shape)
        return msgpack.ExtType(ARRAY_EXT_CODE, header + np.ascontiguousarray(little).tobytes())

    body = {k: array(v) if isinstance(v, np.ndarray) else v for k, v in message.body.items()}
    return msgpack.packb({"v": 1, "kind": message.kind, "sender": message.sender,
                          "receiver": message.receiver, "round": message.round,
                          "seq": message.sequence, "body": body}, use_bin_type=True)


@settings(max_examples=100, deadline=None)
@given(arrays=st.dictionaries(st.text(min_size=1, max_size=5), ARRAYS, max_size=3),
       order=st.sampled_from(["C", "F", "strided", ">"]))
def test_frames_are_byte_identical_to_the_reference_encoding(arrays, order):
    """The fast encoder (compiled headers, no copies) writes exactly the documented bytes, for
    contiguous, Fortran-ordered, strided and big-endian arrays alike."""
    if order == "F":
        arrays = {k: np.asfortranarray(v) for k, v in arrays.items()}
    elif order == "strided":
        arrays = {k: v[::2] if v.ndim else v for k, v in arrays.items()}
    elif order == ">":
        arrays = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in arrays.items()}
    message = Message("step", -1, 3, 7, 2, {"t": 5, "last": False, **arrays})
    assert encode(message) == _reference_frame(message)


def test_big_endian_arrays_arrive_little_endian():
    array = np.arange(6, dtype=">f8").reshape(2, 3)
    decoded = decode(encode(Message("x", 0, 1, 0, 0, {"a": array})))
    np.testing.assert_array_equal(decoded.body["a"], array)
    assert decoded.body["a"].dtype == np.dtype("<f8")


def test_object_arrays_are_refused_on_encode():
    with pytest.raises(CodecError, match="dtype"):
        encode(Message("x", 0, 1, 0, 0, {"a": np.array([object()])}))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "garbage"),
        (b"\xc1\xc1\xc1", "garbage"),
        (b"\x93\x01\x02", "garbage"),  # truncated array
        (msgpack.packb([1, 2, 3]), "bad_schema"),
        (msgpack.packb({"v": 1, "kind": "x"}), "bad_schema"),
        (msgpack.packb({"v": 99, "kind": "x", "sender": 0, "receiver": 1, "round": 0, "seq": 0,
                        "body": {}}), "bad_version"),
        (msgpack.packb({"v": 1, "kind": 3, "sender": 0, "receiver": 1, "round": 0, "seq": 0,
                        "body": {}}), "bad_schema"),
        (msgpack.packb({"v": 1, "kind": "x", "sender": "0", "receiver": 1, "round": 0, "seq": 0,
                        "body": {}}), "bad_schema"),
        (msgpack.packb({"v": 1, "kind": "x", "sender": True, "receiver": 1, "round": 0, "seq": 0,
                        "body": {}}), "bad_schema"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(frame, reason):
    with pytest.raises(CodecError) as caught:
        decode(frame)
    assert caught.value.reason == reason


def _frame_with_array_ext(payload: bytes, code: int = ARRAY_EXT_CODE) -> bytes:
    header = {"v": 1, "kind": "x", "sender": 0, "receiver": 1, "round": 0, "seq": 0,
              "body": {"a": msgpack.ExtType(code, payload)}}
    return msgpack.packb(header)


@pytest.mark.parametrize(
    ("payload", "code", "reason"),
    [
        (struct.pack("<3sB2q", b"<f4", 2, 2, 2) + b"\0" * 15, ARRAY_EXT_CODE, "bad_array"),
        (struct.pack("<3sBq", b"|O8", 1, 1) + b"\0" * 8, ARRAY_EXT_CODE, "bad_dtype"),
        (struct.pack("<3sBq", b"<f4", 1, -1), ARRAY_EXT_CODE, "bad_array"),
        (struct.pack("<3sB", b"<f4", 3) + b"\0" * 5, ARRAY_EXT_CODE, "bad_array"),
        (struct.pack("<3sB", b"<f4", 200) + b"\0" * 5, ARRAY_EXT_CODE, "bad_array"),
        (b"\xff", ARRAY_EXT_CODE, "bad_array"),
        (b"", 7, "bad_extension"),
    ],
)
def test_malformed_arrays_are_rejected(payload, code, reason):
    with pytest.raises(CodecError) as caught:
        decode(_frame_with_array_ext(payload, code))
    assert caught.value.reason == reason


def test_pickle_payload_is_never_unpickled():
    import pickle

    with pytest.raises(CodecError):
        decode(pickle.dumps({"v": 1}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoder_never_crashes_on_random_bytes(frame):
    with contextlib.suppress(CodecError):
        decode(frame)


def test_require_array_checks_shape_dtype_and_finiteness():
    body = {"x": np.zeros((2, 3), np.float32), "bad": np.array([1.0, np.nan], np.float32)}
    assert require_array(body, "x", shape=(2, 3), dtype="<f4").shape == (2, 3)
    for kwargs, reason in [
        ({"shape": (3, 2)}, "bad_shape"),
        ({"dtype": "<f8"}, "bad_dtype"),
    ]:
        with pytest.raises(CodecError) as caught:
            require_array(body, "x", **kwargs)
        assert caught.value.reason == reason
    with pytest.raises(CodecError) as caught:
        require_array(body, "bad")
    assert caught.value.reason == "not_finite"
    with pytest.raises(CodecError) as caught:
        require_array(body, "missing")
    assert caught.value.reason == "bad_schema"
