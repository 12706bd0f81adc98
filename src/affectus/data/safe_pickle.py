"""The one reader of untrusted pickles in affectus: numbers, strings and plain containers, no code.

A pickle is a small program; its GLOBAL / STACK_GLOBAL opcodes name any importable object and REDUCE
calls it. Checking names is not enough: with protocol 4 a dotted name is resolved attribute by
attribute, and even numpy's own constructors dereference raw pointers when told to build an object
array over a byte buffer (`numpy.ndarray((1,), 'O', buffer=...)` crashes the interpreter and can do
worse). So this reader never hands a numpy (or any other) callable to the pickle machine:

* `find_class` accepts an **exact** (module, name) pair from `_GLOBALS` (no prefix match, no dotted
  names) and returns one of our own inert stand-ins, never the real object;
* the stand-ins only *record* their arguments (shape, dtype spec, raw bytes);
* after `load()` returns, `_materialise` checks each record (a plain numeric, bool, bytes, str or object
  dtype; byte counts matching the shape; object arrays built from Python lists of plain values only)
  and only then asks numpy to copy the bytes into an array.

What gets through: dict / list / tuple / set / str / bytes / int / float / bool / None, OrderedDict,
numpy arrays and scalars of plain dtypes, and object arrays of those. Everything else is an
`UnsafePickleError`. See `docs/security.md` for the guarantee and what `--trust-pickle` gives up.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafePickleError", "load_untrusted", "loads_untrusted"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something outside the data-only subset (or describes it inconsistently)."""


# Plain dtypes only: bool, integers, IEEE floats / complex, fixed bytes / unicode, and object (whose
# elements are checked one by one). No structured, void, datetime or platform long-double types.
_DTYPE_SPEC = re.compile(r"^(b1|[iu][1248]|f[248]|c(8|16)|[US]\d*|O[48]?)$")
_BYTEORDERS = {"<", ">", "|", "="}
_PLAIN = (str, bytes, int, float, bool, complex, type(None))
_MAX_DEPTH = 64


class _Stub:
    """Base of the inert stand-ins: they hold arguments and never call anything."""

    __slots__ = ()

    def __reduce__(self):  # pragma: no cover - stubs never leave this module
        raise UnsafePickleError("internal stand-in cannot be pickled")


class _DtypeRecord(_Stub):
    __slots__ = ("spec", "state")

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str):
            raise UnsafePickleError(f"dtype spec {type(spec).__name__} is not a string")
        self.spec = spec
        self.state: tuple | None = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self) -> np.dtype:
        spec = self.spec
        if not _DTYPE_SPEC.match(spec):
            raise UnsafePickleError(f"dtype {spec!r} is not a plain numeric, string or object dtype")
        order = "|"
        if self.state is not None:
            st = self.state
            # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
            if not isinstance(st, tuple) or len(st) not in (8, 9) or st[0] not in (3, 4):
                raise UnsafePickleError("unexpected dtype state")
            if st[2] is not None or st[3] is not None or st[4] is not None:
                raise UnsafePickleError("structured / sub-array dtypes are not allowed")
            if len(st) == 9 and st[8] is not None:
                raise UnsafePickleError("dtypes with metadata are not allowed")
            if st[1] not in _BYTEORDERS:
                raise UnsafePickleError(f"dtype byte order {st[1]!r}")
            order = st[1]
            elsize = st[5]
            if not isinstance(elsize, int) or isinstance(elsize, bool):
                raise UnsafePickleError("dtype item size is not an integer")
            if spec[0] in "US" and elsize > 0:  # flexible types carry their size in the state
                spec = f"{spec[0]}{elsize // 4 if spec[0] == 'U' else elsize}"
        if spec[0] == "O":
            return np.dtype(object)
        dt = np.dtype(spec)
        return dt.newbyteorder(order) if order in "<>" else dt


def _dtype_of(x: Any) -> np.dtype:
    if not isinstance(x, _DtypeRecord):
        raise UnsafePickleError(f"expected a dtype, got {type(x).__name__}")
    return x.resolve()


def _as_bytes(raw: Any) -> bytes:
    if isinstance(raw, str):  # Python-2 era pickles, read with encoding='latin1'
        return raw.encode("latin1")
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw)
    if isinstance(raw, pickle.PickleBuffer):
        return bytes(raw.raw())
    raise UnsafePickleError(f"array data is a {type(raw).__name__}, not bytes")


def _shape_of(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > 32:
        raise UnsafePickleError("array shape is not a tuple of at most 32 sizes")
    for s in shape:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise UnsafePickleError(f"array shape {shape!r} is not non-negative integers")
    return shape


def _array_from(shape: Any, dtype: np.dtype, raw: Any, fortran: bool, convert) -> np.ndarray:
    shape = _shape_of(shape)
    count = 1
    for s in shape:
        count *= s
    order = "F" if fortran else "C"
    if dtype.kind == "O":
        if not isinstance(raw, list) or len(raw) != count:
            raise UnsafePickleError("object array data is not a list of the array's length")
        out = np.empty(count, dtype=object)
        for i, v in enumerate(raw):
            out[i] = convert(v)
        return out.reshape(shape, order=order)
    data = _as_bytes(raw)
    if len(data) != count * dtype.itemsize:
        raise UnsafePickleError(
            f"array of shape {shape} and dtype {dtype} needs {count * dtype.itemsize} bytes, has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy(order=order)


class _NdarrayClass(_Stub):
    """Stands for `numpy.ndarray` as the sub-type argument of `_reconstruct`; calling it is refused."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError("calling numpy.ndarray directly is not allowed")


_NDARRAY = _NdarrayClass()


class _ArrayRecord(_Stub):
    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: tuple | None = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def resolve(self, convert) -> np.ndarray:
        st = self.state
        if not isinstance(st, tuple):
            raise UnsafePickleError("array without state")
        if len(st) == 5:
            _version, shape, dt, fortran, raw = st
        elif len(st) == 4:  # numpy pickles from Python 2 omit the version
            shape, dt, fortran, raw = st
        else:
            raise UnsafePickleError("unexpected array state")
        return _array_from(shape, _dtype_of(dt), raw, bool(fortran), convert)


class _FrombufferRecord(_Stub):
    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("unexpected state on an array")

    def resolve(self, convert) -> np.ndarray:
        if len(self.args) != 4:
            raise UnsafePickleError("unexpected _frombuffer call")
        buf, dt, shape, order = self.args
        if order not in ("C", "F"):
            raise UnsafePickleError(f"array order {order!r}")
        dtype = _dtype_of(dt)
        if dtype.kind == "O":
            raise UnsafePickleError("object arrays cannot come from a byte buffer")
        return _array_from(shape, dtype, buf, order == "F", convert)


class _ScalarRecord(_Stub):
    __slots__ = ("dt", "raw")

    def __init__(self, dt: Any, raw: Any = None) -> None:
        self.dt = dt
        self.raw = raw

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("unexpected state on a scalar")

    def resolve(self, convert) -> Any:
        dtype = _dtype_of(self.dt)
        if dtype.kind == "O":
            return convert(self.raw)
        return _array_from((), dtype, self.raw, False, convert)[()]


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _ArrayRecord:
    # numpy's `_reconstruct(ndarray, (0,), b'b')` makes an empty array that BUILD then fills in.
    if subtype is not _NDARRAY:
        raise UnsafePickleError("only plain numpy arrays may be reconstructed")
    return _ArrayRecord()


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # Protocol 0-2 pickles write bytes as `_codecs.encode(str, 'latin1')`; nothing else is needed.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only as str -> latin1 bytes")
    return text.encode("latin1")


class _OrderedDict(collections.OrderedDict):
    """An OrderedDict that takes items only through SETITEMS, never through BUILD state."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("unexpected state on an OrderedDict")


def _builtin(name: str):
    """set / frozenset / bytes / bytearray, each callable only with the plain arguments pickle uses."""

    def call(*args: Any) -> Any:
        if len(args) > 1:
            raise UnsafePickleError(f"{name}() with {len(args)} arguments is not allowed")
        if name in ("set", "frozenset"):
            # set([plain values]) in protocols 0-3; stand-ins may not hide inside a hash table.
            items = args[0] if args else []
            if not isinstance(items, list) or not all(isinstance(v, _PLAIN) for v in items):
                raise UnsafePickleError(f"{name}() of anything but a list of plain values is not allowed")
            return set(items) if name == "set" else frozenset(items)
        # bytes() is b''; bytearray(b'...') copies bytes. An integer argument (a size) is refused.
        if args and not isinstance(args[0], bytes):
            raise UnsafePickleError(f"{name}() of a {type(args[0]).__name__} is not allowed")
        return bytes(*args) if name == "bytes" else bytearray(*args)

    return call


# The complete list of globals a data pickle may name. Exact pairs; `numpy.core` is numpy < 2's name.
_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeRecord,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _ScalarRecord,
    ("numpy.core.multiarray", "scalar"): _ScalarRecord,
    ("numpy._core.numeric", "_frombuffer"): _FrombufferRecord,
    ("numpy.core.numeric", "_frombuffer"): _FrombufferRecord,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): _OrderedDict,
}
for _name in ("set", "frozenset", "bytes", "bytearray"):
    # Protocols 0-2 spell the module `__builtin__` (Python 2's name); protocol 3+ `builtins`.
    _GLOBALS[("builtins", _name)] = _GLOBALS[("__builtin__", _name)] = _builtin(_name)


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"the pickle names {module}.{name}, which is not numpy data or a plain container"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed")


class _Materialiser:
    """Replaces every stand-in by the checked real value; refuses anything that is not plain data.

    Shared references are converted once (a pickle can describe a DAG whose naive expansion is
    exponential) and a container that contains itself is refused.
    """

    def __init__(self) -> None:
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        if isinstance(obj, _PLAIN):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise UnsafePickleError("a container that contains itself is not data")
        if depth > _MAX_DEPTH:
            raise UnsafePickleError(f"containers nested deeper than {_MAX_DEPTH}")
        self.active.add(key)
        try:
            out = self._convert(obj, depth + 1)
        finally:
            self.active.discard(key)
        self.done[key] = out
        return out

    def _convert(self, obj: Any, depth: int) -> Any:
        if isinstance(obj, (_ArrayRecord, _FrombufferRecord, _ScalarRecord)):
            return obj.resolve(lambda v: self(v, depth))
        if isinstance(obj, _OrderedDict):
            return collections.OrderedDict((self(k, depth), self(v, depth)) for k, v in obj.items())
        if type(obj) is dict:
            return {self(k, depth): self(v, depth) for k, v in obj.items()}
        if type(obj) is list:
            return [self(v, depth) for v in obj]
        if type(obj) is tuple:
            return tuple(self(v, depth) for v in obj)
        if type(obj) in (set, frozenset):
            if not all(isinstance(v, _PLAIN) for v in obj):
                raise UnsafePickleError("sets may hold only plain values")
            return obj
        if type(obj) is bytearray:
            return bytes(obj)
        raise UnsafePickleError(f"a {type(obj).__name__} is not plain data")


def load_untrusted(f: BinaryIO) -> Any:
    """Unpickle data-only content from an open binary file; raise `UnsafePickleError` for anything else.

    `encoding='latin1'` lets numpy pickles written by Python 2 load (their array bytes are `str`).
    """
    raw = _DataUnpickler(f, encoding="latin1").load()
    return _Materialiser()(raw)


def loads_untrusted(data: bytes) -> Any:
    return load_untrusted(io.BytesIO(data))
