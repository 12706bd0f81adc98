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

The zip is read here rather than by `zipfile`: an upload is already in memory, and `zipfile` builds a
Python object per member, a file object per open and a read loop per member, which for a one-sample
upload (12 small members) cost more than everything else the service does for it (issue 20). What is
read is the layout numpy writes: the central directory (which alone gives each member's sizes, as
`zipfile` reads them), each member's local header (only to find where its data starts; its name must
match the directory's), then stored or deflated data, never past the declared size, CRC-checked when read
whole. A zip with data before it, zip64 fields, or a directory that does not end where the end record
says is refused: an affectus .npz never has them.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import struct
import zipfile
import zlib
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


def _directory(data: bytes, source: str) -> tuple[int, int, int]:
    """(entries, offset, size) of the zip's central directory, from its end record, once they are small
    and the directory ends where the end record starts.

    Read by hand because `zipfile.ZipFile` parses the whole directory into Python objects as it opens
    the file: a 50 MB directory of tiny entries would cost hundreds of MB before any check could run."""
    start = data.rfind(_EOCD, max(0, len(data) - _EOCD_SIZE - 0xFFFF))  # the record, then <= 64 KiB comment
    if start < 0 or len(data) - start < _EOCD_SIZE:
        raise _bad(source, "no zip end-of-directory record; truncated or not a zip")
    _sig, disk, first, here, entries, size, offset, _comment = struct.unpack("<4s4H2LH", data[start:start + _EOCD_SIZE])
    if start >= 20 and data[start - 20:start - 16] == _ZIP64_LOCATOR:
        # zip64 end records (whose counts override the ones checked here) are for archives over 4 GB or
        # 65,535 members; numpy writes them only then
        raise NpzTooLarge(f"file {source}: a zip64 archive; an affectus .npz upload never needs one")
    if entries > MAX_MEMBERS or size > MAX_DIRECTORY_BYTES:
        raise NpzTooLarge(f"file {source}: a zip directory of {entries} entries / {size} bytes; an affectus .npz "
                          f"has at most {MAX_MEMBERS} entries")
    if disk or first or here != entries:
        raise _bad(source, "a zip split over several disks")
    if offset + size != start:  # data before the zip, or a directory that is not where it says
        raise _bad(source, f"the zip directory ({size} bytes at {offset}) does not end at its end record ({start})")
    return entries, offset, size


_CENTRAL = struct.Struct("<4s6H3L5H2L")  # a central directory entry, without its name, extra field, comment
_LOCAL = struct.Struct("<4s5H3L2H")  # a member's local header, without its name and extra field
_ZIP64_VALUE = 0xFFFFFFFF  # a size or offset that lives in a zip64 extra field instead


class _Entry:
    """One member as the central directory declares it."""

    __slots__ = ("compressed", "crc", "flags", "local", "method", "name", "raw_name", "size")

    def __init__(self, name: str, raw_name: bytes, method: int, flags: int, crc: int, compressed: int, size: int,
                 local: int) -> None:
        self.name, self.raw_name, self.method, self.flags = name, raw_name, method, flags
        self.crc, self.compressed, self.size, self.local = crc, compressed, size, local


def _entries(data: bytes, source: str, count: int, offset: int, size: int) -> list[_Entry]:
    out = []
    pos, end = offset, offset + size
    for _ in range(count):
        if pos + _CENTRAL.size > end:
            raise _bad(source, "a truncated zip directory")
        (sig, _made, _needed, flags, method, _time, _date, crc, compressed, full, name_len, extra_len,
         comment_len, _disk, _internal, _external, local) = _CENTRAL.unpack_from(data, pos)
        if sig != b"PK\x01\x02":
            raise _bad(source, "a damaged zip directory")
        raw_name = data[pos + _CENTRAL.size: pos + _CENTRAL.size + name_len]
        pos += _CENTRAL.size + name_len + extra_len + comment_len
        if pos > end:
            raise _bad(source, "a truncated zip directory")
        if _ZIP64_VALUE in (compressed, full, local):
            raise NpzTooLarge(f"file {source}: a zip64 member; an affectus .npz upload never needs one")
        try:  # an ASCII name reads the same either way (and decodes fastest)
            name = raw_name.decode("ascii")
        except UnicodeDecodeError:
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
        out.append(_Entry(name, raw_name, method, flags, crc, compressed, full, local))
    return out


_HEADER_MAX = 12 + (1 << 16)  # the .npy lead and the longest header accepted


def _member_bytes(data: bytes, entry: _Entry, directory: int, source: str, where: str, whole: bool) -> Any:
    """A member's bytes, uncompressed (a view of the upload when stored), never more than its declared
    size; only the first `_HEADER_MAX` of a deflated one unless `whole`. Whole data is checked against
    the directory's size and CRC."""
    local = entry.local
    if local + _LOCAL.size > directory:
        raise _bad(source, f"{where}: its local header lies outside the zip")
    sig, _needed, _flags, _method, _time, _date, _crc, _csize, _size, name_len, extra_len = \
        _LOCAL.unpack_from(data, local)
    if sig != b"PK\x03\x04":
        raise _bad(source, f"{where}: no local header where the directory says")
    if data[local + _LOCAL.size: local + _LOCAL.size + name_len] != entry.raw_name:
        raise _bad(source, f"{where}: its names in the directory and the local header differ")
    begin = local + _LOCAL.size + name_len + extra_len
    if begin + entry.compressed > directory:
        raise _bad(source, f"{where}: its data runs past the zip directory")
    stream = memoryview(data)[begin: begin + entry.compressed]
    if entry.method == zipfile.ZIP_STORED:
        if entry.compressed != entry.size:
            raise _bad(source, f"{where}: stored with {entry.compressed} bytes, declared {entry.size}")
        out: Any = stream
        ended = True
    else:
        inflate = zlib.decompressobj(-15)
        try:
            # at most the declared size: what the directory declares is what was checked against the limits
            # (a bound of 0 would mean none at all to zlib: a member declaring 0 bytes is read with 1, and
            # anything it gives is more than declared)
            out = inflate.decompress(stream, max(1, entry.size if whole else min(entry.size, _HEADER_MAX)))
            if len(out) > entry.size:
                raise _bad(source, f"{where}: more data than its declared {entry.size} bytes")
            # the stream must end right there: one more byte asked for must come back empty
            ended = inflate.eof or (not inflate.decompress(inflate.unconsumed_tail, 1) and inflate.eof)
        except zlib.error as err:
            raise _bad(source, f"{where}: a damaged deflate stream ({err})") from None
    if whole and not (ended and len(out) == entry.size and zlib.crc32(out) == entry.crc):
        raise _bad(source, f"{where}: its data does not match the zip's size and CRC (damaged)")
    return out


_MAGIC = b"\x93NUMPY"
# numpy's header for a plain array, as `np.save` writes it: {'descr': '<f4', 'fortran_order': False, 'shape': (1, 6),}
_PLAIN_HEADER = re.compile(r"\{'descr': '([^']+)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), *\} *\n?$")


@functools.lru_cache(maxsize=512)
def _plain_header(text: str) -> tuple[np.dtype, tuple[int, ...], bool] | None:
    """(dtype, shape, fortran order) of a header as numpy writes it for a plain array; None for any other.
    Cached: the uploads a server sees repeat the same few headers (one per array shape and dtype)."""
    m = _PLAIN_HEADER.match(text)
    if m is None:
        return None
    descr, fortran, dims = m.groups()
    return np.dtype(descr), tuple(int(n) for n in dims.split(",") if n.strip()), fortran == "True"


def _read_header(buf: Any, where: str, source: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran order, offset of the first data byte) of one .npy's bytes.

    The header numpy writes for a plain array is read with one regular expression; anything else (a
    structured dtype, other spacing) goes through `ast.literal_eval` (safe: literals only) and the
    same checks numpy makes."""
    lead = bytes(buf[:12])
    if len(lead) < 8 or lead[:6] != _MAGIC:
        raise _bad(source, f"{where}: not a .npy array (no magic string)")
    major = lead[6]
    if major not in (1, 2, 3):
        raise _bad(source, f"{where}: .npy format version {major}.{lead[7]} (expected 1.0, 2.0 or 3.0)")
    start = 10 if major == 1 else 12
    if len(lead) < start:
        raise _bad(source, f"{where}: a truncated .npy header")
    length = struct.unpack_from("<H" if major == 1 else "<I", lead, 8)[0]
    if length > 1 << 16:
        raise _bad(source, f"{where}: a .npy header of {length} bytes")
    text = bytes(buf[start: start + length]).decode("latin1" if major < 3 else "utf-8")
    plain = _plain_header(text)
    if plain is not None:
        return (*plain, start + length)
    try:
        d = ast.literal_eval(text)
        dtype = np.lib.format.descr_to_dtype(d["descr"])
        shape, fortran = tuple(int(n) for n in d["shape"]), bool(d["fortran_order"])
    except Exception as err:  # noqa: BLE001 - any malformed header: one line
        raise _bad(source, f"{where}: malformed .npy header ({type(err).__name__})") from None
    return dtype, shape, fortran, start + length


def _checked_size(dtype: np.dtype, shape: tuple[int, ...], info: _Entry, where: str, source: str) -> int:
    """The data bytes a header declares, refused for an object dtype or more than the member holds."""
    if dtype.hasobject:
        raise _bad(source, f"{where}: an object array (never loaded: it would need a pickle)")
    count = math.prod(shape)
    if dtype.itemsize == 0 and count:
        raise _bad(source, f"{where}: {count} elements of a zero-size dtype {dtype}")
    size = count * dtype.itemsize
    # numpy allocates the header's size before it reads the data: it must fit in the declared size
    if size > info.size:
        raise _bad(source, f"{where}: its header declares {size} bytes of data, the zip only {info.size}")
    return size


class Directory:
    """An .npz's zip directory, read (and its size limits checked) once: `declared` is the bytes its members
    declare once decompressed. Pass it to `read_checked_npz` to read the same bytes without reading the
    directory again."""

    def __init__(self, data: bytes, source: str) -> None:
        self.count, self.offset, self.size = _directory(data, source)
        self.entries = _entries(data, source, self.count, self.offset, self.size)
        self.declared = sum(e.size for e in self.entries)


def check_npz(data: bytes, source: str, *, max_bytes: int, max_samples: int, max_seq_len: int) -> None:
    """Refuse `data` (an .npz's bytes) unless every member is a plain .npy array and the declared sizes,
    sample count and sequence lengths are within the limits. Raises `NpzTooLarge` for a limit and
    `AffectusError` for a malformed file; reads no array data."""
    _checked(data, source, max_bytes, max_samples, max_seq_len, read=False)


def read_checked_npz(data: bytes, source: str, *, max_bytes: int, max_samples: int,
                     max_seq_len: int, directory: Directory | None = None) -> dict[str, np.ndarray]:
    """`check_npz`'s checks, and each member's array read in the same pass: {member name: array}. A
    member's data is read only after its header passed, and all of them together are at most `max_bytes`
    (the declared sizes, checked first); the sample limit, which adds up over members, is checked once
    every header has been read, before anything uses the arrays."""
    return _checked(data, source, max_bytes, max_samples, max_seq_len, read=True, directory=directory)


def _checked(data: bytes, source: str, max_bytes: int, max_samples: int, max_seq_len: int,
             read: bool, directory: Directory | None = None) -> dict[str, np.ndarray]:
    if directory is None:
        directory = Directory(data, source)
    infos, offset, declared = directory.entries, directory.offset, directory.declared
    if declared > max_bytes:
        raise NpzTooLarge(f"file {source}: {declared / 2**20:.1f} MB once decompressed, over the "
                          f"{max_bytes / 2**20:g} MB limit")
    arrays: dict[str, np.ndarray] = {}
    samples: dict[str, int] = {}
    seen: set[str] = set()
    for info in infos:
        where = f"member {info.name}"
        if info.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _bad(source, f"{where}: compression method {info.method} (numpy writes stored or deflate)")
        if info.flags & 0x1:
            raise _bad(source, f"{where}: encrypted")
        if not info.name.endswith(".npy"):
            raise _bad(source, f"{where}: not a .npy array")
        name = info.name[:-4]
        if name in seen:
            raise _bad(source, f"{where}: twice in the zip")
        seen.add(name)
        split, _, key = name.partition(".")
        try:
            # the member's bytes: at most its declared size (and the declared sizes add up to at most
            # max_bytes, checked above); only its header's worth of a deflated one when just checking
            raw = _member_bytes(data, info, offset, source, where, whole=read)
            dtype, shape, fortran, begin = _read_header(raw, where, source)
            size = _checked_size(dtype, shape, info, where, source)
            steps = shape[_SEQUENCE_KEYS[key]] if key in _SEQUENCE_KEYS and len(shape) == 3 else 0
            if steps > max_seq_len:
                raise NpzTooLarge(f"file {source}: {split} {key} sequences of {steps} steps, over the "
                                  f"{max_seq_len} step limit")
            if read:
                payload = raw[begin: begin + size]
                if len(payload) != size:
                    raise _bad(source, f"{where}: {len(payload)} bytes of data, its header declares {size}")
                array = np.frombuffer(payload, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                arrays[name] = array.copy()  # writable, aligned, and free of the upload's bytes
        except AffectusError:
            raise
        except Exception as err:  # noqa: BLE001 - a bad header, a corrupt deflate stream ...
            raise _bad(source, f"{where}: {type(err).__name__}: {err}") from None
        if key and shape:
            samples[split] = max(samples.get(split, 0), shape[0])
    total = sum(samples.values())
    if total > max_samples:
        raise NpzTooLarge(f"file {source}: {total} samples, over the {max_samples} sample limit")
    return arrays
