"""Bit-exact checks of the C++ side against the Python side, through golden files.

The C++ test programs are compiled here with g++ directly (no Bazel needed), cached in
a temp directory keyed by the hash of their sources and flags. Golden files are written
into pytest's tmp dirs and never committed.

What is checked:
  * the golden file format: golden.py -> golden_reader.h, value for value;
  * every TMT_* op: >= TMT_GOLDEN_CASES (default 1000) random + edge cases per op from the
    numpy reference (tests/golden/golden_cases.py), replayed by the C++ driver
    tflm_ops/tests/golden_test_main.cc against tflm_ops/core/ and compared bit for bit
    (ops with a dyn-quantized output are run with and without scratch memory);
  * likewise every op's fp32-backward variant (float32 gradients, docs/contract.md "fp32
    backward"), as the golden op `<op>_F32`, with its float weight-gradient sums and q16;
  * tflm_ops/core compiles with -fno-exceptions -fno-rtti and references no heap / EH symbols.

Environment:
  TMT_GOLDEN_CASES cases per op (default 1000)
  TMT_GOLDEN_SEED  random seed of the cases (default 0)
  TMT_GOLDEN_KEEP  if set, a directory to write the golden files to (kept afterwards)
  TMT_CXX          compiler to use (default: g++)
  TMT_CPP_CACHE    where compiled test programs are cached
                   (default: <tempdir>/tfmicro_train_cpp_cache)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tfmicro_train.kernels import golden  # noqa: E402

sys.path.insert(0, str(ROOT / "tests" / "golden"))
import golden_cases  # noqa: E402

CXX = os.environ.get("TMT_CXX", "g++")
# Same language/flags as the Bazel build (tools/bazel/copts.bzl).
CXXFLAGS = ["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]
# Sources every test program may include: hashing them all keeps the cache honest.
_HASHED_DIRS = [ROOT / "tflm_ops" / "core", ROOT / "tflm_ops" / "tests", ROOT / "tflm_ops" / "tflm"]


def _cache_dir() -> Path:
    d = os.environ.get("TMT_CPP_CACHE") or os.path.join(tempfile.gettempdir(),
                                                         "tfmicro_train_cpp_cache")
    return Path(d)


def _compiler_id() -> str:
    try:
        out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.stdout


def build_cpp(name: str, sources: list[Path], flags: list[str] | None = None,
              libs: list[str] | None = None, base_flags: list[str] | None = None) -> Path:
    """Compile `sources` into a cached executable; returns its path (skips without g++).

    `libs` go after the sources on the command line; libraries given as paths are hashed
    by size and mtime.
    """
    compiler = _compiler_id()
    if not compiler:
        pytest.skip(f"no C++ compiler ({CXX}); set TMT_CXX")
    flags = list(CXXFLAGS if base_flags is None else base_flags) + list(flags or [])
    libs = list(libs or [])
    h = hashlib.sha256()
    h.update(compiler.encode())
    h.update("\0".join(flags + libs).encode())
    for lib in libs:
        if os.path.isfile(lib):
            st = os.stat(lib)
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    files = set(sources)
    for d in _HASHED_DIRS:
        if d.is_dir():
            files.update(p for p in d.rglob("*") if p.suffix in (".h", ".cc", ".cpp", ".inc"))
    for p in sorted(files):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    out_dir = _cache_dir() / h.hexdigest()[:20]
    exe = out_dir / name
    if exe.exists():
        return exe
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.{os.getpid()}"
    cmd = [CXX, *flags, "-I", str(ROOT), *map(str, sources), *libs, "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        pytest.fail(f"compiling {name} failed:\n$ {' '.join(cmd)}\n{res.stderr[-6000:]}")
    os.replace(tmp, exe)
    return exe


# --------------------------------------------------------------------------- golden format


def _render_value(v) -> str:
    """The text golden_dump prints for one entry (after the key)."""
    if isinstance(v, np.ndarray):
        dims = ",".join(str(d) for d in v.shape)
        if v.dtype == np.float32:
            vals = [f"0x{x:08x}" for x in v.reshape(-1).view(np.uint32)]
        elif v.dtype == np.float64:
            vals = [f"0x{x:016x}" for x in v.reshape(-1).view(np.uint64)]
        else:
            vals = [str(int(x)) for x in v.reshape(-1)]
        return f"array {v.dtype.name} [{dims}]" + "".join(" " + s for s in vals)
    if isinstance(v, np.generic):
        return _render_value(np.asarray(v))
    if isinstance(v, (bool, int)):
        return f"int {int(v)}"
    if isinstance(v, float):
        return f"float 0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016x}"
    if isinstance(v, str):
        return f"string {len(v.encode())} {v}"
    raise TypeError(type(v))


def _render_cases(cases: list[dict]) -> str:
    lines = []
    for i, c in enumerate(cases):
        entries = [(k, v) for k, v in c.items() if k != "op"]
        lines.append(f"case {i} op={c['op']} entries={len(entries)}")
        lines += [f"  {k} {_render_value(v)}" for k, v in entries]
    return "\n".join(lines) + "\n"


def _format_cases() -> list[dict]:
    rng = np.random.default_rng(1234)
    cases: list[dict] = []
    for dt in golden.DTYPE_CODES:
        if dt == np.bool_:
            extremes = np.array([False, True])
        elif dt.kind == "f":
            fi = np.finfo(dt)
            extremes = np.array([0.0, -0.0, fi.max, fi.min, fi.tiny, fi.smallest_subnormal,
                                 np.inf, -np.inf, 1 / 3], dt)
        else:
            ii = np.iinfo(dt)
            extremes = np.array([ii.min, ii.max, 0, 1, -1 if ii.min < 0 else 2], dt)
        if dt.kind == "f":
            rand = rng.standard_normal((2, 3, 4)).astype(dt)
        elif dt == np.bool_:
            rand = rng.integers(0, 2, (2, 3, 4)).astype(dt)
        else:
            ii = np.iinfo(dt)
            rand = rng.integers(ii.min, ii.max, (2, 3, 4), dtype=dt, endpoint=True)
        cases.append({
            "op": f"FORMAT_{dt.name.upper()}",
            "extremes": extremes,
            "random": rand,
            "transposed": rand.transpose(2, 0, 1),  # non-contiguous input
            "scalar0d": np.asarray(extremes[1]),
            "numpy_scalar": extremes.reshape(-1)[1],  # np.generic -> 0-d array
            "empty": np.zeros((3, 0, 2), dt),
        })
    cases.append({
        "op": "FORMAT_SCALARS",
        "i_min": -(2**63), "i_max": 2**63 - 1, "zero": 0, "flag": True,
        "f": 0.1, "f_neg": -2.5e-300, "f_inf": float("inf"),
        "lr": np.float32(0.01), "s": "héllo wörld", "empty_s": "",
        "big_endian": np.array([1, -2, 300], ">i4"),
    })
    cases.append({"op": "FORMAT_EMPTY_CASE"})
    cases.append({"op": "FORMAT_6D", "x": np.arange(720, dtype=np.int16).reshape(1, 2, 3, 4, 5, 6)})
    return cases


def test_golden_format_python_roundtrip(tmp_path):
    cases = _format_cases()
    path = tmp_path / "format.tmtg"
    assert golden.write_golden(path, cases) == len(cases)
    back = golden.read_golden(path)
    assert len(back) == len(cases)
    for want, got in zip(cases, back):
        assert list(want) == list(got) or list(got) == ["op"] + [k for k in want if k != "op"]
        for k, v in want.items():
            g = got[k]
            if isinstance(v, (np.ndarray, np.generic)):
                v = np.asarray(v)
                assert g.dtype == v.dtype.newbyteorder("=") and g.shape == v.shape, k
                assert g.tobytes() == v.astype(g.dtype).tobytes(), k
            else:
                assert g == v and type(g) is type(v if not isinstance(v, bool) else 0), k


def test_golden_format_errors(tmp_path):
    with pytest.raises(golden.GoldenFormatError):
        golden.write_golden(tmp_path / "a", [{"x": np.zeros(2, np.int8)}])  # no op name
    with pytest.raises(golden.GoldenFormatError):
        golden.write_golden(tmp_path / "b", [{"op": "X", "c": np.zeros(2, np.complex64)}])
    with pytest.raises(golden.GoldenFormatError):
        golden.write_golden(tmp_path / "c", [{"op": "X", "big": 2**63}])
    assert golden.write_golden(tmp_path / "d", [{"x": 1}], op="DEFAULT_OP") == 1
    assert golden.read_golden(tmp_path / "d") == [{"op": "DEFAULT_OP", "x": 1}]
    data = (tmp_path / "d").read_bytes()
    (tmp_path / "e").write_bytes(data[:-3])
    with pytest.raises(golden.GoldenFormatError):
        golden.read_golden(tmp_path / "e")


def test_golden_format_cpp_reader(tmp_path):
    """golden_reader.h sees exactly the bytes/values golden.py wrote."""
    exe = build_cpp("golden_dump", [ROOT / "tflm_ops" / "tests" / "golden_dump.cc"])
    cases = _format_cases()
    path = tmp_path / "format.tmtg"
    golden.write_golden(path, cases)
    res = subprocess.run([str(exe), str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    want = _render_cases(cases)
    assert res.stdout == want
    print(f"golden format: {len(cases)} cases read identically by C++ and Python")

    # A truncated file is an error, not a silent partial read.
    (tmp_path / "bad.tmtg").write_bytes(path.read_bytes()[:-1])
    res = subprocess.run([str(exe), str(tmp_path / "bad.tmtg")], capture_output=True, text=True)
    assert res.returncode != 0 and "truncated" in res.stderr


# --------------------------------------------------------------------------- ops, bit for bit

N_CASES = int(os.environ.get("TMT_GOLDEN_CASES", "1000"))
SEED = int(os.environ.get("TMT_GOLDEN_SEED", "0"))
OPS = list(golden_cases.GENERATORS)
CORE_SOURCES = [ROOT / "tflm_ops" / "core" / "training_ops.cc",
                ROOT / "tflm_ops" / "core" / "training_ops_f32.cc",
                ROOT / "tflm_ops" / "core" / "fused_irb.cc",
                ROOT / "tflm_ops" / "core" / "conv_op.cc"]
# The TFLM glue (tflm_ops/tflm/BUILD :training_ops).
GLUE_SOURCES = [ROOT / "tflm_ops" / "tflm" / "training_ops.cc",
                ROOT / "tflm_ops" / "tflm" / "conv_op.cc"]
# Same as KERNEL_COPTS in tools/bazel/copts.bzl.
KERNEL_FLAGS = ["-std=c++17", "-O2", "-fno-exceptions", "-fno-rtti", "-ffp-contract=off",
                "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def golden_run(tmp_path_factory):
    """Writes every op's golden file, runs the C++ driver once; {op: (cases, mismatches)}."""
    exe = build_cpp("golden_test", [ROOT / "tflm_ops" / "tests" / "golden_test_main.cc",
                                    *CORE_SOURCES])
    keep = os.environ.get("TMT_GOLDEN_KEEP")
    out_dir = Path(keep) if keep else tmp_path_factory.mktemp("golden")
    written = golden_cases.write_all(out_dir, N_CASES, SEED)
    res = subprocess.run([str(exe), str(out_dir)], capture_output=True, text=True)
    counts: dict[str, tuple[int, int]] = {}
    for line in res.stdout.splitlines():
        if line.startswith("golden TMT_"):
            op, rest = line[len("golden "):].split(": ", 1)
            n, m = rest.replace(" cases,", "").replace(" mismatches", "").split()
            counts[op] = (int(n), int(m))
    print("\n" + res.stdout[-4000:])
    return {"written": written, "counts": counts, "stdout": res.stdout,
            "stderr": res.stderr, "returncode": res.returncode}


@pytest.mark.parametrize("op", OPS)
def test_op_bit_exact(golden_run, op):
    written = golden_run["written"][op]
    assert written >= N_CASES
    assert op in golden_run["counts"], (
        f"the C++ driver reported nothing for {op}:\n{golden_run['stdout'][-3000:]}"
        f"{golden_run['stderr'][-2000:]}")
    n, bad = golden_run["counts"][op]
    mism = [ln for ln in golden_run["stdout"].splitlines() if f"({op})" in ln]
    print(f"{op}: {n} cases, {bad} mismatches")
    assert n == written, f"{op}: C++ read {n} of {written} cases"
    assert bad == 0, f"{op}: {bad} of {n} cases differ from the numpy reference:\n" + "\n".join(mism)


def test_golden_driver_summary(golden_run):
    """The driver read every file, knew every op, and exited 0."""
    total = sum(golden_run["written"].values())
    print(f"golden cases: {total} over {len(golden_run['written'])} ops")
    assert golden_run["returncode"] == 0, golden_run["stdout"][-3000:] + golden_run["stderr"][-2000:]
    assert f"{total} passed, 0 failed" in golden_run["stdout"]


def test_every_contract_op_is_covered():
    """Each TMT_* op named in a heading of docs/contract.md has a golden generator."""
    import re

    contract = ROOT / "docs" / "contract.md"
    if not contract.exists():
        pytest.skip("docs/contract.md not present")
    named = set()
    for line in contract.read_text().splitlines():
        if line.startswith("#"):
            named.update(re.findall(r"TMT_[A-Z0-9_]+[A-Z0-9]", line))
    assert named, "no TMT_* headings in docs/contract.md"
    # TMT_INIT has no arithmetic (a byte copy in the TFLM glue): the glue test covers it;
    # the forward op TMT_FUSED_IRB's golden cases run in tests/test_fuse.py
    named.discard("TMT_INIT")
    covered = set(OPS) | set(golden_cases.FORWARD_GENERATORS)
    assert named <= covered, f"ops without golden tests: {sorted(named - covered)}"


def test_every_fp32_op_is_covered():
    """Each TMT_* op of the contract's "fp32 backward" table has an `<op>_F32` golden generator
    (and no generator names an op the table lacks)."""
    import re

    contract = ROOT / "docs" / "contract.md"
    if not contract.exists():
        pytest.skip("docs/contract.md not present")
    text = contract.read_text()
    start = text.find("## fp32 backward")
    if start < 0:
        pytest.skip("docs/contract.md has no fp32 backward section")
    section = text[start:text.find("\n## ", start + 1)]
    named = set()
    for line in section.splitlines():
        if line.startswith("| `TMT_"):
            named.update(re.findall(r"TMT_[A-Z0-9_]+[A-Z0-9]", line.split("|")[1]))
    assert named, "no TMT_* rows in the fp32 backward table"
    suffix = golden_cases.F32_SUFFIX
    f32_ops = {op[:-len(suffix)] for op in golden_cases.F32_GENERATORS}
    # TMT_MASK_PACK reads the int8 forward output: it has no fp32 variant.
    assert named == f32_ops, (f"fp32 ops without golden tests: {sorted(named - f32_ops)}; "
                              f"generators for ops not in the table: {sorted(f32_ops - named)}")
    assert set(golden_cases.F32_GENERATORS) <= set(OPS)


def test_core_is_freestanding(tmp_path):
    """tflm_ops/core builds with -fno-exceptions -fno-rtti and uses no heap or EH runtime."""
    if not _compiler_id():
        pytest.skip(f"no C++ compiler ({CXX})")
    nm = shutil.which("nm")
    for src in CORE_SOURCES:
        obj = tmp_path / (src.stem + ".o")
        cmd = [CXX, *KERNEL_FLAGS, "-I", str(ROOT), "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"$ {' '.join(cmd)}\n{res.stderr[-4000:]}"
        if nm:
            undefined = subprocess.run([nm, "-u", "-C", str(obj)], capture_output=True,
                                       text=True, check=True).stdout
            banned = [ln.strip() for ln in undefined.splitlines()
                      if any(b in ln for b in ("malloc", "calloc", "realloc", "free",
                                               "operator new", "operator delete",
                                               "__cxa_", "typeinfo", "std::"))]
            assert not banned, f"{src.name} references {banned}"


# --------------------------------------------------------------------------- TFLM glue

GLUE_CASES = int(os.environ.get("TMT_GLUE_CASES", "300"))
TFLM_SKIP = ("TFLM glue tests skipped: set TFLM_DIR=/path/to/tflite-micro (a checkout where "
             "`make -f tensorflow/lite/micro/tools/make/Makefile microlite` has run)")


def _tflm_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link inputs) for the TFLM checkout in $TFLM_DIR, as tools/bazel/tflm.bzl."""
    d = os.environ.get("TFLM_DIR")
    if not d:
        pytest.skip(TFLM_SKIP)
    root = Path(d).resolve()
    if not (root / "tensorflow/lite/micro/micro_interpreter.h").exists():
        pytest.fail(f"TFLM_DIR={d} is not a tflite-micro checkout")
    lib = os.environ.get("TFLM_LIB")
    if not lib:
        found = sorted(str(p) for p in root.glob("gen/*/lib/libtensorflow-microlite.a"))
        found += sorted(str(p) for p in
                        root.glob("tensorflow/lite/micro/tools/make/gen/*/lib/libtensorflow-microlite.a"))
        if not found:
            pytest.fail(f"no gen/*/lib/libtensorflow-microlite.a in {root}: run TFLM's make microlite")
        host = [f for f in found if f"/linux_{os.uname().machine}_" in f]
        lib = ([f for f in host if "_default_" in f] or host or found)[0]
    dl = root / "tensorflow/lite/micro/tools/make/downloads"
    flags = ["-DTF_LITE_STATIC_MEMORY", "-DTF_LITE_DISABLE_X86_NEON"]
    if "_compression" in lib:
        flags.append("-DUSE_TFLM_COMPRESSION")
    for inc in [root, dl, dl / "flatbuffers/include", dl / "gemmlowp", dl / "ruy", dl / "kissfft"]:
        flags += ["-isystem", str(inc)]
    return flags, [lib, "-lm"]


def test_tflm_glue(tmp_path):
    """Glue checks + every op's golden cases through TFLM's KernelRunner (needs TFLM_DIR)."""
    flags, libs = _tflm_flags()
    base = ["-std=c++17", "-O1", "-ffp-contract=off", "-Wall", "-Werror"]
    exe = build_cpp("glue_test", [ROOT / "tflm_ops/tflm/glue_test.cc", *GLUE_SOURCES,
                                  *CORE_SOURCES],
                    flags, libs, base_flags=base)
    written = golden_cases.write_all(tmp_path, GLUE_CASES, SEED)  # any counter: it goes in state[1]
    res = subprocess.run([str(exe), str(tmp_path)], capture_output=True, text=True)
    glue = [ln for ln in res.stdout.splitlines() if ln.startswith("glue ")]
    print("\n".join(glue + res.stdout.splitlines()[-1:]))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    seen = {ln.split()[1].rstrip(":") for ln in glue if ln.startswith("glue TMT_")}
    assert seen == set(written), f"ops not replayed through TFLM: {sorted(set(written) - seen)}"


def test_tflm_glue_compiles_freestanding(tmp_path):
    """The glue builds with the kernel flags (-fno-exceptions -fno-rtti) against TFLM."""
    flags, _ = _tflm_flags()
    for src in GLUE_SOURCES:
        obj = tmp_path / (src.stem + ".o")
        cmd = [CXX, *KERNEL_FLAGS, *flags, "-I", str(ROOT), "-c", str(src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"$ {' '.join(cmd)}\n{res.stderr[-4000:]}"
        nm = shutil.which("nm")
        if nm:
            undefined = subprocess.run([nm, "-u", "-C", str(obj)], capture_output=True, text=True,
                                       check=True).stdout
            banned = [ln.strip() for ln in undefined.splitlines()
                      if any(b in ln for b in ("malloc", "operator new", "operator delete",
                                               "__cxa_throw", "__cxa_guard", "typeinfo"))]
            assert not banned, f"{src.name} references {banned}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))
