"""openpi's msgpack wire format for numpy arrays (the canonical copy; `latentvla.serve` re-exports it).

openpi (`packages/openpi-client/src/openpi_client/msgpack_numpy.py`) encodes through msgpack's `default` hook:

    np.ndarray  -> {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": arr.dtype.str, b"shape": arr.shape}
    np.generic  -> {b"__npgeneric__": True, b"data": x.item(), b"dtype": x.dtype.str}

The marker keys are *bytes* (msgpack bin), not str: a str "__ndarray__" key is not decoded by openpi-client.
Object, void (structured) and complex dtypes are refused on both sides: they are not plain numeric buffers and
`np.ndarray(buffer=...)` on an object dtype would be unsafe. Decoded arrays are read-only views onto the
message buffer (as in openpi); copy before editing in place.

Only numpy and msgpack are imported here, so a robot-side client never needs torch.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import numpy as np

_NDARRAY = b"__ndarray__"
_NPGENERIC = b"__npgeneric__"
_REFUSED_KINDS = ("V", "O", "c")


def _checked_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind in _REFUSED_KINDS:
        raise ValueError(f"Unsupported dtype {dtype.str!r}: object, void and complex arrays cannot be sent.")
    return dtype


def pack_array(obj: Any) -> Any:
    """msgpack `default` hook: numpy arrays and scalars to openpi's marker dicts; anything else passes."""
    if isinstance(obj, np.ndarray | np.generic):
        _checked_dtype(obj.dtype)
    if isinstance(obj, np.ndarray):
        return {
            _NDARRAY: True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {_NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def unpack_array(obj: dict) -> Any:
    """msgpack `object_hook`: openpi's marker dicts back to numpy (read-only arrays); other dicts pass."""
    if _NDARRAY in obj:
        dtype = _checked_dtype(obj[b"dtype"])
        shape = tuple(int(n) for n in obj[b"shape"])
        return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=shape)
    if _NPGENERIC in obj:
        return _checked_dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


Packer = functools.partial(msgpack.Packer, default=pack_array)


def packb(obj: Any) -> bytes:
    """Encode `obj` (dicts, lists, str, numbers, numpy arrays/scalars) as openpi does."""
    return msgpack.packb(obj, default=pack_array)


def unpackb(data: bytes) -> Any:
    """Decode bytes written by `packb` or by openpi-client. Malformed input raises (msgpack or ValueError)."""
    return msgpack.unpackb(data, object_hook=unpack_array)
