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

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("BUILD on an allowed global is not allowed")


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


class _Global(_Stub):
    """What `find_class` hands out for an allowed function or class: it calls it, and nothing more.

    BUILD (`obj.__setstate__(state)`, or else writes into `obj.__dict__` / sets attributes) runs on
    whatever the stack holds, globals included; on the bare function `_reconstruct` it would set its
    `__defaults__` or `__kwdefaults__` for every later load in the process. This wrapper has a
    `__setstate__` that refuses, no `__dict__`, and refuses attribute writes."""

    __slots__ = ("_name", "_target")

    def __init__(self, target: Any, name: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any) -> Any:
        return self._target(*args)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"BUILD on {self._name} is not allowed")

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickleError(f"setting {name} on {self._name} is not allowed")


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
_GLOBALS = {pair: value if value is _NDARRAY else _Global(value, ".".join(pair)) for pair, value in _GLOBALS.items()}


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


# Shared references: a pickle may use one object many times (its memo), and whoever turns the loaded
# data into arrays or files (np.asarray of nested lists, a .npz of strings) makes a copy per use. So each
# use after the first adds that object's decoded size to a running total, which may not pass
# SHARED_FLOOR or the file's own size, whichever is larger (docs/security.md).
SHARED_FLOOR = 64 * 2**20
SHARED_ENV = "AFFECTUS_PICKLE_SHARED_LIMIT"
_POINTER = 8  # a slot in a list / dict / object array (what np.asarray makes of it: 8 bytes an item)


def shared_limit(file_size: int) -> int:
    """Bytes that repeated uses of shared objects may add: $AFFECTUS_PICKLE_SHARED_LIMIT when set
    (a byte count, suffix K/M/G/T allowed), else max(SHARED_FLOOR, file_size)."""
    import os

    text = os.environ.get(SHARED_ENV, "").strip()
    if not text:
        return max(SHARED_FLOOR, int(file_size))
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
    if match is None:
        from affectus.errors import AffectusError

        raise AffectusError(f"{SHARED_ENV}={text!r}: expected a byte count such as 4G")
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2).upper() or "_")


class _Materialiser:
    """Replaces every stand-in by the checked real value; refuses anything that is not plain data.

    Shared references are converted once (a pickle can describe a DAG whose naive expansion is
    exponential), a container that contains itself is refused, and every use of a shared object after
    the first counts its decoded size against `limit` (see SHARED_FLOOR).
    """

    def __init__(self, limit: int) -> None:
        self.done: dict[int, tuple[Any, int]] = {}  # id -> (value, decoded bytes of one use)
        self.seen: set[int] = set()  # str / bytes objects met so far (the memo shares them too)
        self.active: set[int] = set()
        self.limit = limit
        self.repeated = 0

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        return self.visit(obj, depth)[0]

    def _repeat(self, size: int) -> None:
        self.repeated += size
        if self.repeated > self.limit:
            raise UnsafePickleError(
                f"shared references repeat more than {self.limit} bytes of data (each use of a shared "
                f"object counts as a copy; the limit is max(64 MiB, the file's size), or ${SHARED_ENV})")

    def visit(self, obj: Any, depth: int) -> tuple[Any, int]:
        """(the plain value, its decoded size in bytes: what one copy of it takes as data)."""
        if isinstance(obj, (str, bytes)):
            size = 4 * len(obj) if isinstance(obj, str) else len(obj)  # str: numpy's fixed-width UCS-4
            if id(obj) in self.seen:
                self._repeat(size)
            else:
                self.seen.add(id(obj))
            return obj, size
        if isinstance(obj, _PLAIN):
            return obj, 0
        key = id(obj)
        if key in self.done:
            value, size = self.done[key]
            self._repeat(size)
            return value, size
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

    def _items(self, values: Any, depth: int) -> tuple[list[Any], int]:
        out, total = [], 0
        for v in values:
            value, size = self.visit(v, depth)
            out.append(value)
            total += _POINTER + size
        return out, total

    def _convert(self, obj: Any, depth: int) -> tuple[Any, int]:
        if isinstance(obj, (_ArrayRecord, _FrombufferRecord, _ScalarRecord)):
            total = [0]

            def element(v: Any) -> Any:
                value, size = self.visit(v, depth)
                total[0] += _POINTER + size
                return value

            value = obj.resolve(element)
            numeric = isinstance(value, np.ndarray) and value.dtype.kind != "O"
            return value, value.nbytes if numeric else total[0] or _POINTER
        if isinstance(obj, _OrderedDict) or type(obj) is dict:
            keys, key_size = self._items(obj.keys(), depth)
            values, value_size = self._items(obj.values(), depth)
            kind = collections.OrderedDict if isinstance(obj, _OrderedDict) else dict
            return kind(zip(keys, values)), key_size + value_size
        if type(obj) is list:
            return self._items(obj, depth)
        if type(obj) is tuple:
            items, size = self._items(obj, depth)
            return tuple(items), size
        if type(obj) in (set, frozenset):
            if not all(isinstance(v, _PLAIN) for v in obj):
                raise UnsafePickleError("sets may hold only plain values")
            return obj, sum(_POINTER + self.visit(v, depth)[1] for v in obj)
        if type(obj) is bytearray:
            return self.visit(bytes(obj), depth)
        raise UnsafePickleError(f"a {type(obj).__name__} is not plain data")


def _size_of(f: BinaryIO) -> int:
    """The size of an open file (the shared-reference limit grows with it); 0 when it cannot be told."""
    import os

    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    try:
        here = f.tell()
        end = f.seek(0, io.SEEK_END)
        f.seek(here)
        return end
    except (AttributeError, OSError, ValueError):
        return 0


def load_untrusted(f: BinaryIO, shared_bytes: int | None = None) -> Any:
    """Unpickle data-only content from an open binary file; raise `UnsafePickleError` for anything else.

    `encoding='latin1'` lets numpy pickles written by Python 2 load (their array bytes are `str`).
    `shared_bytes`: how many bytes repeated uses of shared objects may add (default: `shared_limit`).
    """
    limit = shared_limit(_size_of(f)) if shared_bytes is None else shared_bytes
    raw = _DataUnpickler(f, encoding="latin1").load()
    return _Materialiser(limit)(raw)


def loads_untrusted(data: bytes, shared_bytes: int | None = None) -> Any:
    return load_untrusted(io.BytesIO(data), shared_bytes)
