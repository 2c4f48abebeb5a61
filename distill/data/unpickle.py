"""A restricted unpickler for CIFAR batches: it rebuilds only builtin containers, strings,
numbers and numpy arrays of plain dtypes no larger than the file, and never imports or calls
anything else."""

from __future__ import annotations

import io
import pickle

import numpy as np


def _latin1_encode(text: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin-1")


_ARRAY_KINDS = "biufSU"  # numbers, booleans, byte and text strings: nothing that holds objects


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` inside a pickle: it may be rebuilt through ``_reconstruct``
    (how numpy pickles arrays) but not called to allocate an array of any shape."""

    def __new__(cls, *args: object, **kw: object) -> _NdarrayToken:
        raise pickle.UnpicklingError("numpy.ndarray may only be rebuilt from its bytes, not called")


def _bounded_array(shape: object, dtype: np.dtype, limit: int) -> tuple[int, ...]:
    """``shape`` as a tuple, if an array of that shape and ``dtype`` fits in ``limit`` bytes."""
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > 32 or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise pickle.UnpicklingError(f"array shape {shape!r} is not a tuple of sizes")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > limit:
        raise pickle.UnpicklingError(
            f"array of shape {shape} ({nbytes} bytes) is larger than the {limit} bytes of the file"
        )
    return shape


def _plain_dtype(*args: object, **kw: object) -> np.dtype:
    d = np.dtype(*args, **kw)  # type: ignore[call-overload]
    if d.kind not in _ARRAY_KINDS or d.fields is not None or d.subdtype is not None:
        raise pickle.UnpicklingError(f"array dtype {d} is not a plain numeric or string dtype")
    return d


def _numpy_constructors() -> tuple[object, object, object]:
    probe = np.zeros(1, dtype=np.uint8)
    return probe.__reduce__()[0], probe.__reduce_ex__(5)[0], np.uint8(0).__reduce__()[0]


_RECONSTRUCT, _FROMBUFFER, _SCALAR = _numpy_constructors()


def _allowed_globals(limit: int) -> dict[tuple[str, str], object]:
    """The globals a CIFAR pickle of ``limit`` bytes may name; array constructors are wrapped so that
    no array larger than the bytes present, and none of an object-holding dtype, can be made."""

    def reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
        if subtype is not _NdarrayToken:
            raise pickle.UnpicklingError("_reconstruct may only rebuild numpy.ndarray")
        d = _plain_dtype(dtype)
        return _RECONSTRUCT(np.ndarray, _bounded_array(shape, d, limit), d)  # type: ignore[operator]

    def frombuffer(buf: object, dtype: object, shape: object, order: str) -> np.ndarray:
        d = _plain_dtype(dtype)
        shape = _bounded_array(shape, d, min(limit, memoryview(buf).nbytes))  # type: ignore[arg-type]
        return _FROMBUFFER(buf, d, shape, order)  # type: ignore[operator]

    def scalar(dtype: object, *args: object) -> object:
        return _SCALAR(_plain_dtype(dtype), *args)  # type: ignore[operator]

    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): _NdarrayToken,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Builds only builtin containers, strings, numbers and numpy arrays of plain dtypes no larger
    than the file: every other global (functions, classes) is refused before it is imported or called."""

    def __init__(self, blob: bytes):
        super().__init__(io.BytesIO(blob), encoding="latin1")
        self._allowed = _allowed_globals(len(blob))

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}") from None


def _check_arrays(obj: object, limit: int, depth: int = 0) -> None:
    """After loading: every array holds a plain dtype and no more bytes than the file."""
    if depth > 20:
        raise pickle.UnpicklingError("containers nest too deeply")
    if isinstance(obj, np.ndarray):
        _plain_dtype(obj.dtype)
        _bounded_array(tuple(obj.shape), obj.dtype, limit)
    elif isinstance(obj, dict):
        for v in obj.values():
            _check_arrays(v, limit, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_arrays(v, limit, depth + 1)


def unpickle_restricted(blob: bytes, where: str = "<bytes>") -> dict:
    """Unpickle a CIFAR batch (a dict of numpy arrays, lists, bytes) without running foreign code.

    Accepts Python 2 (latin-1) and Python 3 pickles of any protocol; keys come back as str.
    """
    try:
        obj = _ArrayOnlyUnpickler(blob).load()
        _check_arrays(obj, len(blob))
    except Exception as err:  # noqa: BLE001 - any failure means the file is not a CIFAR batch
        raise ValueError(
            f"{where}: not a CIFAR batch pickle ({type(err).__name__}: {err}); only numpy arrays, "
            "lists, dicts, bytes and numbers may appear in it"
        ) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a dict in the CIFAR batch pickle, found {type(obj).__name__}")
    return {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
