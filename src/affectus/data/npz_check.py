"""Check an .npz held in memory (an upload) before any array in it is read.

A zip member's compressed size says nothing about its decompressed size: a 1.5 MB upload can hold a
4 GB array of zeros. Python's zip reader stops each member at the size the zip's central directory
declares (and fails the CRC check if the data goes on), so the declared sizes bound what reading can
produce. This module reads only the zip's directory and each member's .npy header (a few hundred
bytes, decompressed with a bounded output size) and refuses, before anything large is allocated:

* a zip with more members, or a larger central directory, than an affectus .npz ever has;
* a member compressed with anything but stored / deflate (bzip2 and LZMA output is not bounded
  per read in Python's zip reader);
* a member that is not a .npy array, has an object dtype, or whose header disagrees with its
  declared size;
* declared sizes adding up to more than `max_bytes`;
* more samples than `max_samples` (the first axis, added over the splits), or a feature or token
  sequence longer than `max_seq_len` steps (a model's attention grows with its square).

`read_checked_npz` does the same checks and, in the same pass, reads each member's data once its header
has passed (the service's path: numpy's own loader would open every member and parse every header a
second time, most of an upload's cost). `check_npz` only checks.
"""

from __future__ import annotations

import ast
import io
import math
import re
import struct
import zipfile
from typing import Any

import numpy as np

from affectus.errors import AffectusError

MAX_MEMBERS = 256  # an affectus .npz has __meta__ plus at most ~16 keys for each of 3 splits
MAX_DIRECTORY_BYTES = 1 << 20  # the central directory's size: 256 entries with long names fit many times over
_EOCD = b"PK\x05\x06"
_EOCD_SIZE = 22  # the end-of-central-directory record without its comment
_ZIP64_LOCATOR = b"PK\x06\x07"  # the zip64 end-record locator, 20 bytes right before the end record
# the axis of each (3-d) sequence array that counts steps: (N, L, D) features, (N, 3, L) BERT token ids
_SEQUENCE_KEYS = {"text": 1, "audio": 1, "vision": 1, "text_bert": 2}


class NpzTooLarge(AffectusError):
    """The upload asks for more than the limits allow (a 413, not a malformed file)."""


def _bad(source: str, what: str) -> AffectusError:
    return AffectusError(f"file {source}: not a readable affectus .npz ({' '.join(what.split())})")


def _directory(data: bytes, source: str) -> None:
    """The entry count and size of the zip's central directory, from its end record, are small.

    Read by hand because `zipfile.ZipFile` parses the whole directory into Python objects as it opens
    the file: a 50 MB directory of tiny entries would cost hundreds of MB before any check could run."""
    start = data.rfind(_EOCD, max(0, len(data) - _EOCD_SIZE - 0xFFFF))  # the record, then <= 64 KiB comment
    if start < 0 or len(data) - start < _EOCD_SIZE:
        raise _bad(source, "no zip end-of-directory record; truncated or not a zip")
    _sig, _disk, _first, _here, entries, size, _offset, _comment = struct.unpack("<4s4H2LH", data[start:start + _EOCD_SIZE])
    if start >= 20 and data[start - 20:start - 16] == _ZIP64_LOCATOR:
        # zip64 end records (whose counts override the ones checked here) are for archives over 4 GB or
        # 65,535 members; numpy writes them only then
        raise NpzTooLarge(f"file {source}: a zip64 archive; an affectus .npz upload never needs one")
    if entries > MAX_MEMBERS or size > MAX_DIRECTORY_BYTES:
        raise NpzTooLarge(f"file {source}: a zip directory of {entries} entries / {size} bytes; an affectus .npz "
                          f"has at most {MAX_MEMBERS} entries")


_MAGIC = b"\x93NUMPY"
# numpy's header for a plain array, as `np.save` writes it: {'descr': '<f4', 'fortran_order': False, 'shape': (1, 6),}
_PLAIN_HEADER = re.compile(r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), *\} *\n?$")


def _read_header(f: Any, where: str, source: str) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran order) of one .npy stream, leaving `f` at its first data byte.

    The header numpy writes for a plain array is read with one regular expression; anything else (a
    structured dtype, other spacing) goes through `ast.literal_eval` (safe: literals only) and the
    same checks numpy makes."""
    lead = f.read(8)
    if len(lead) < 8 or lead[:6] != _MAGIC:
        raise _bad(source, f"{where}: not a .npy array (no magic string)")
    major = lead[6]
    if major not in (1, 2, 3):
        raise _bad(source, f"{where}: .npy format version {major}.{lead[7]} (expected 1.0, 2.0 or 3.0)")
    size_bytes = f.read(2 if major == 1 else 4)
    length = struct.unpack("<H" if major == 1 else "<I", size_bytes)[0]
    if length > 1 << 16:
        raise _bad(source, f"{where}: a .npy header of {length} bytes")
    text = f.read(length).decode("latin1" if major < 3 else "utf-8")
    m = _PLAIN_HEADER.match(text)
    if m is not None:
        descr, fortran, dims = m.groups()
        shape = tuple(int(n) for n in dims.replace(" ", "").split(",") if n)
        return np.dtype(descr), shape, fortran == "True"
    try:
        d = ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        shape, fortran = tuple(int(n) for n in d["shape"]), bool(d["fortran_order"])
    except Exception as err:  # noqa: BLE001 - any malformed header: one line
        raise _bad(source, f"{where}: malformed .npy header ({type(err).__name__})") from None
    return dtype, shape, fortran


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> tuple[np.dtype, tuple[int, ...]]:
    """(dtype, shape) of one member's .npy header, read without touching its data."""
    with zf.open(info) as f:
        dtype, shape, _ = _read_header(f, f"member {info.filename}", source)
        return dtype, shape


def _checked_size(dtype: np.dtype, shape: tuple[int, ...], info: zipfile.ZipInfo, where: str, source: str) -> int:
    """The data bytes a header declares, refused for an object dtype or more than the member holds."""
    if dtype.hasobject:
        raise _bad(source, f"{where}: an object array (never loaded: it would need a pickle)")
    count = math.prod(shape)
    if dtype.itemsize == 0 and count:
        raise _bad(source, f"{where}: {count} elements of a zero-size dtype {dtype}")
    size = count * dtype.itemsize
    # numpy allocates the header's size before it reads the data: it must fit in the declared size
    if size > info.file_size:
        raise _bad(source, f"{where}: its header declares {size} bytes of data, the zip only {info.file_size}")
    return size


def check_npz(data: bytes, source: str, *, max_bytes: int, max_samples: int, max_seq_len: int) -> None:
    """Refuse `data` (an .npz's bytes) unless every member is a plain .npy array and the declared sizes,
    sample count and sequence lengths are within the limits. Raises `NpzTooLarge` for a limit and
    `AffectusError` for a malformed file; reads no array data."""
    _checked(data, source, max_bytes, max_samples, max_seq_len, read=False)


def read_checked_npz(data: bytes, source: str, *, max_bytes: int, max_samples: int,
                     max_seq_len: int) -> dict[str, np.ndarray]:
    """`check_npz`'s checks, and each member's array read in the same pass: {member name: array}. A
    member's data is read only after its header passed, and all of them together are at most `max_bytes`
    (the declared sizes, checked first); the sample limit, which adds up over members, is checked once
    every header has been read, before anything uses the arrays."""
    return _checked(data, source, max_bytes, max_samples, max_seq_len, read=True)


def _checked(data: bytes, source: str, max_bytes: int, max_samples: int, max_seq_len: int,
             read: bool) -> dict[str, np.ndarray]:
    _directory(data, source)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as err:
        raise _bad(source, f"{type(err).__name__}: {err}") from None
    arrays: dict[str, np.ndarray] = {}
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise NpzTooLarge(f"file {source}: {len(infos)} zip members; an affectus .npz has at most {MAX_MEMBERS}")
        declared = sum(i.file_size for i in infos)
        if declared > max_bytes:
            raise NpzTooLarge(f"file {source}: {declared / 2**20:.1f} MB once decompressed, over the "
                              f"{max_bytes / 2**20:g} MB limit")
        samples: dict[str, int] = {}
        for info in infos:
            where = f"member {info.filename}"
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _bad(source, f"{where}: compression method {info.compress_type} (numpy writes stored or deflate)")
            if info.flag_bits & 0x1:
                raise _bad(source, f"{where}: encrypted")
            if not info.filename.endswith(".npy"):
                raise _bad(source, f"{where}: not a .npy array")
            name = info.filename[:-4]
            split, _, key = name.partition(".")
            try:
                with zf.open(info) as f:
                    dtype, shape, fortran = _read_header(f, where, source)
                    size = _checked_size(dtype, shape, info, where, source)
                    steps = shape[_SEQUENCE_KEYS[key]] if key in _SEQUENCE_KEYS and len(shape) == 3 else 0
                    if steps > max_seq_len:
                        raise NpzTooLarge(f"file {source}: {split} {key} sequences of {steps} steps, over the "
                                          f"{max_seq_len} step limit")
                    # the data, once its header passed: at most the declared size (the zip reader stops
                    # there), and the declared sizes add up to at most max_bytes (checked above)
                    payload = f.read(size) if read else b""
            except AffectusError:
                raise
            except Exception as err:  # noqa: BLE001 - a bad header, a corrupt deflate stream, a bad CRC ...
                raise _bad(source, f"{where}: {type(err).__name__}: {err}") from None
            if read:
                if len(payload) != size:
                    raise _bad(source, f"{where}: {len(payload)} bytes of data, its header declares {size}")
                array = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                arrays[name] = array.copy()  # writable, and free of the bytes object
            if key and shape:
                samples[split] = max(samples.get(split, 0), shape[0])
        total = sum(samples.values())
        if total > max_samples:
            raise NpzTooLarge(f"file {source}: {total} samples, over the {max_samples} sample limit")
    return arrays
