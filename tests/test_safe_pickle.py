"""The data-only pickle reader: every known way to make a pickle run code is refused, and real data loads.

Each attack tries to create a marker file; the tests assert the reader refused the file *and* that the
marker does not exist. The fuzzing test runs in a child process so that a crash of the interpreter (numpy
constructors dereference raw pointers when misused) is a failed test, not a lost test run.
"""

from __future__ import annotations

import collections
import copyreg
import functools
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from affectus.data.mmsa import load_dataset
from affectus.data.safe_pickle import UnsafePickleError, loads_untrusted
from affectus.errors import AffectusError
from affectus.evaluation.subsets import load_subset_ids

# ------------------------------------------------------------------------------------ pickle assembly


def _str(s: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4+) or BINUNICODE for a str."""
    b = s.encode()
    return (b"\x8c" + bytes([len(b)]) if len(b) < 256 else b"X" + len(b).to_bytes(4, "little")) + b


def _global(module: str, name: str, proto: int) -> bytes:
    if proto >= 4:
        return _str(module) + _str(name) + b"\x93"  # STACK_GLOBAL: dotted names resolve attribute-wise
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _call(fn: bytes, *args: bytes) -> bytes:
    """fn(*args) with REDUCE; args are already-encoded objects."""
    return fn + b"(" + b"".join(args) + b"tR"


def _frame(body: bytes, proto: int) -> bytes:
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    return head + body + b"."


def _code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


def _attacks(marker: Path) -> dict[str, bytes]:
    code = _str(_code(marker))
    out: dict[str, bytes] = {}
    for proto in range(6):
        p = max(proto, 4) if proto >= 4 else proto
        # The reported hole: a dotted name under an allowed numpy module reaches builtins.exec.
        get = _global("numpy.dtypes", "_add_dtype_helper.__builtins__.get", p)
        out[f"dotted-numpy.dtypes-p{proto}"] = _frame(_call(_call(get, _str("exec")), code), p)
        # Dotted names under each allowed global.
        for mod, name in [
            ("numpy", "ndarray.__init__.__globals__.get"),
            ("numpy", "dtype.__class__.__subclasses__"),
            ("numpy._core.multiarray", "_reconstruct.__self__.__builtins__"),
            ("collections", "OrderedDict.__init__"),
            ("_codecs", "encode.__self__.__loader__"),
            ("builtins", "set.__class__"),
        ]:
            out[f"dotted-{mod}.{name}-p{proto}"] = _frame(_call(_global(mod, name, p), code), p)
        # Classic globals.
        for mod, name in [
            ("builtins", "exec"),
            ("builtins", "eval"),
            ("__builtin__", "eval"),
            ("builtins", "getattr"),
            ("os", "system"),
            ("posix", "system"),
            ("subprocess", "getoutput"),
            ("numpy", "load"),
            ("numpy.dtypes", "Float64DType"),
            ("numpy.testing", "assert_"),
            ("copyreg", "_reconstructor"),
            ("functools", "partial"),
        ]:
            out[f"global-{mod}.{name}-p{proto}"] = _frame(_call(_global(mod, name, p), code), p)
    # functools / copyreg tricks, pickled by Python itself (objects whose reduce names them).
    evil = functools.partial(exec, _code(marker))
    out["functools.partial"] = pickle.dumps({"train": evil})
    out["functools.reduce"] = pickle.dumps(functools.partial(functools.reduce, exec, [_code(marker)]))
    out["copyreg._reconstructor"] = _frame(
        _call(_global("copyreg", "_reconstructor", 2), _global("os", "system", 2), b"N", code), 2
    )
    # Nested reduce calls: the inner call would produce the callable the outer one uses.
    inner = _call(_global("builtins", "getattr", 4), _global("builtins", "__import__", 4), _str("x"))
    out["nested-reduce"] = _frame(_call(_call(_global("numpy", "dtype", 4), inner), code), 4)
    out["nested-reduce-in-reconstruct"] = _frame(
        _call(_global("numpy._core.multiarray", "_reconstruct", 4), _global("builtins", "exec", 4), code, code),
        4,
    )
    # numpy's own constructors, misused: an object array over raw bytes dereferences the bytes.
    out["ndarray-object-over-buffer"] = _frame(
        _call(
            _global("numpy", "ndarray", 4),
            b"K\x01\x85",  # shape (1,)
            _str("O"),
            b"C\x08" + b"A" * 8,  # buffer: 8 bytes taken as a PyObject*
        ),
        4,
    )
    # copyreg's extension registry: EXT1 names a global by code.
    copyreg.add_extension("os", "system", 0xF0)
    try:
        out["ext-opcode"] = _frame(b"\x82\xf0" + b"(" + code + b"tR", 2)
    finally:
        copyreg.remove_extension("os", "system", 0xF0)
    out["persistent-id"] = _frame(code + b"Q", 2)  # BINPERSID
    return out


# ------------------------------------------------------------------------------------------- tests


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code_ran"


def test_every_attack_is_refused_and_runs_nothing(marker, tmp_path):
    attacks = _attacks(marker)
    assert len(attacks) > 100
    for name, payload in attacks.items():
        with pytest.raises((UnsafePickleError, pickle.UnpicklingError, EOFError, TypeError, ValueError)):
            loads_untrusted(payload)
        assert not marker.exists(), f"{name} ran code"
        path = tmp_path / "attack.pkl"
        path.write_bytes(payload)
        with pytest.raises(AffectusError):
            load_dataset(path)
        with pytest.raises(AffectusError):
            load_subset_ids(path)
        assert not marker.exists(), f"{name} ran code"


def test_the_reported_bypass_is_named_in_the_error(marker, tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(_attacks(marker)["dotted-numpy.dtypes-p4"])
    with pytest.raises(AffectusError, match="numpy.dtypes._add_dtype_helper.__builtins__.get") as err:
        load_dataset(path)
    assert str(path) in str(err.value) and "--trust-pickle" in str(err.value)
    assert not marker.exists()


def test_cli_refuses_attack_with_exit_2(cli, marker, tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(_attacks(marker)["dotted-numpy.dtypes-p4"])
    for cmd in (["inspect", path], ["convert", path, "--out", tmp_path / "o.npz"]):
        rc, _out, err = cli(*cmd)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error:")
    assert not marker.exists()


_PLAIN_DATA = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "big_endian": np.array([1, 2], ">i8"),
    "f16": np.array([1.5], np.float16),
    "complex": np.array([1 + 2j]),
    "bool": np.array([True, False]),
    "unicode": np.array(["ab", "c"]),
    "bytes_arr": np.array([b"ab"]),
    "object_ids": np.array(["vid_0", "vid_1"], dtype=object),
    "empty": np.zeros((0, 5)),
    "scalar": np.float64(1.5),
    "int_scalar": np.int32(3),
    "ordered": collections.OrderedDict(a=1),
    "set": {1, 2},
    "frozen": frozenset(),
    "tuple": (1, "a", b"x", None, b""),
    "list": [1.0, [2, 3]],
}


@pytest.mark.parametrize("proto", range(6))
def test_plain_data_round_trips_every_protocol(proto):
    out = loads_untrusted(pickle.dumps(_PLAIN_DATA, protocol=proto))
    for key, want in _PLAIN_DATA.items():
        got = out[key]
        assert type(got) is type(want), key
        if isinstance(want, np.ndarray):
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert np.array_equal(got, want) and got.flags.f_contiguous == want.flags.f_contiguous, key
        else:
            assert got == want, key


@pytest.mark.parametrize(
    "bad",
    [
        np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f4")]),  # structured
        np.array(["2020-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype="V4"),
        np.array([object()], dtype=object),
    ],
    ids=["structured", "datetime", "void", "foreign-object"],
)
def test_non_plain_arrays_are_refused(bad):
    with pytest.raises(UnsafePickleError):
        loads_untrusted(pickle.dumps(bad, protocol=4))


def test_self_referencing_and_exponential_containers():
    loop: list = []
    loop.append(loop)
    with pytest.raises(UnsafePickleError, match="contains itself"):
        loads_untrusted(pickle.dumps(loop))
    # 60 levels of [x, x]: 2**60 leaves when expanded, which whoever makes arrays of it would do:
    # refused (each use of a shared object counts as a copy), in one pass over 60 objects.
    x: list = [np.zeros(1)]
    for _ in range(60):
        x = [x, x]
    with pytest.raises(UnsafePickleError, match="shared references"):
        loads_untrusted(pickle.dumps(x, protocol=4))
    # modest sharing (10 levels: 1,024 leaves of 8 bytes) stays shared and loads
    y: list = [np.zeros(1)]
    for _ in range(10):
        y = [y, y]
    out = loads_untrusted(pickle.dumps(y, protocol=4))
    assert out[0] is out[1]


def test_mmsa_file_round_trips(make_raw, write_raw):
    raw = make_raw(unimodal=True, text_bert=True)
    path = write_raw(raw)
    ds = load_dataset(path)
    assert ds["train"].text.shape == raw["train"]["text"].shape


# ---------------------------------------------------------------------------------------------- fuzz

_FUZZ = textwrap.dedent(
    """
    import os, pickle, random, sys
    import numpy as np
    sys.path[:0] = [{tests!r}]
    from conftest import build_raw
    from test_safe_pickle import _attacks
    from affectus.data.mmsa import dataset_from_raw
    from affectus.data.safe_pickle import loads_untrusted
    from affectus.errors import AffectusError

    marker = {marker!r}
    rng = random.Random({seed})
    seeds = [pickle.dumps(build_raw(sizes={{"train": 3, "valid": 2}}, unimodal=True), protocol=p) for p in range(6)]
    gadgets = list(_attacks(__import__("pathlib").Path(marker)).values())
    outcomes = {{"dataset": 0, "refused": 0}}
    for i in range({n}):
        kind = rng.random()
        if kind < 0.1:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        else:
            data = bytearray(rng.choice(seeds + gadgets))
            for _ in range(rng.randrange(1, 6)):
                op = rng.random()
                pos = rng.randrange(len(data))
                if op < 0.4:
                    data[pos] = rng.randrange(256)
                elif op < 0.6:
                    del data[pos:pos + rng.randrange(1, 16)]
                elif op < 0.8:  # splice in part of an attack
                    g = rng.choice(gadgets)
                    a = rng.randrange(len(g))
                    data[pos:pos] = g[a:a + rng.randrange(1, 64)]
                else:
                    data = data[:pos]
                if not data:
                    data = bytearray(b".")
            data = bytes(data)
        try:
            dataset_from_raw(loads_untrusted(data))
            outcomes["dataset"] += 1
        except AffectusError:
            outcomes["refused"] += 1
        except Exception:  # any exception is a refusal to the CLI (it becomes one error line)
            outcomes["refused"] += 1
        if os.path.exists(marker):
            print("CODE RAN on case", i, data[:80])
            sys.exit(3)
    print(outcomes)
    """
)


@pytest.mark.slow
def test_fuzz_random_and_mutated_pickles(tmp_path):
    marker = tmp_path / "code_ran"
    script = _FUZZ.format(tests=str(Path(__file__).parent), marker=str(marker), seed=1234, n=1200)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not marker.exists()
    assert "'refused'" in proc.stdout


def test_trusted_reader_still_available(tmp_path, make_raw):
    # A pickle holding a non-numpy class (here a Fraction label list) loads only when trusted.
    import fractions

    raw = make_raw(sizes={"train": 3})
    raw["train"]["note"] = fractions.Fraction(1, 3)
    path = tmp_path / "trusted.pkl"
    path.write_bytes(pickle.dumps(raw))
    with pytest.raises(AffectusError, match="fractions.Fraction"):
        load_dataset(path)
    assert len(load_dataset(path, trust_pickle=True)["train"]) == 3


@pytest.mark.parametrize("command", ["inspect", "convert", "train", "evaluate", "experiment", "sweep", "report"])
def test_every_data_command_has_trust_pickle(cli, command):
    rc, out, _err = cli(command, "--help")
    assert rc == 0 and "--trust-pickle" in out


def test_trust_pickle_warns_naming_the_file(cli, make_raw, write_raw):
    path = write_raw(make_raw())
    rc, _out, err = cli("inspect", path, "--trust-pickle", "--json")
    assert rc == 0
    assert "--trust-pickle" in err and str(path) in err and "runs any code" in err
    rc, _out, err = cli("inspect", path, "--json")
    assert rc == 0 and "trust" not in err


# ---------------------------------------------------------------------------- property: plain data in

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

_PLAIN_DTYPES = st.sampled_from(["<f4", ">f8", "<f2", "|b1", "<i8", "|u1", ">i2", "<c8", "<U3", "|S2"])


def _arrays(dt: str):
    # no subnormal floats: the CLI flushes denormals process-wide (docs/model.md), which hypothesis detects
    d = np.dtype(dt)
    elements = hnp.from_dtype(d, allow_subnormal=False) if d.kind in "fc" else hnp.from_dtype(d)
    return hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=elements)


@settings(max_examples=60, deadline=None)
@given(array=_PLAIN_DTYPES.flatmap(_arrays),
       proto=st.integers(0, 5), fortran=st.booleans())
def test_any_plain_array_round_trips(array, proto, fortran):
    if fortran:
        array = np.asfortranarray(array)
    got = loads_untrusted(pickle.dumps({"x": array, "ids": list(map(str, range(3)))}, protocol=proto))["x"]
    assert got.dtype == array.dtype and got.shape == array.shape
    assert np.array_equal(got, array, equal_nan=array.dtype.kind in "fc")
