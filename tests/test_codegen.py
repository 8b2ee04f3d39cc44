"""C array export (TrainingModel.export_c, codegen.export_arrays) and the Arduino library.

* export_c writes an aligned const array that a C++ build reads back byte for byte, 16-byte
  aligned, and that the linker puts in read-only memory (flash) on a Cortex-M;
* arduino/ is an installable library: library.properties fields, src/ entry header, an example
  sketch, and src/tflm_ops/ identical to the repository's sources;
* the example's committed model and samples are a valid artifact and data set;
* with TFLM (TFLM_DIR and its cortex-m4 library): the example sketch, with the library's own
  copies of the sources, compiles for Cortex-M4 with arm-none-eabi-g++ against TFLM and runs
  under QEMU mps2-an386 (a stand-in board; a tiny Arduino core prints Serial to semihosting):
  its accuracies equal HostSimulator's running the same steps, and the checkpoint restores them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARDUINO = ROOT / "arduino"
EXAMPLE = ARDUINO / "examples" / "FineTuneDigits"
sys.path.insert(0, str(ROOT / "tflm_ops" / "cortex_m"))
sys.path.insert(0, str(ARDUINO / "extras"))

import cmbuild  # noqa: E402
import make_library  # noqa: E402

from tfmicro_train import codegen  # noqa: E402


def parse_c_bytes(source: Path, name: str = "g_model") -> bytes:
    """The bytes of `alignas(16) const unsigned char <name>[] = {...}` in a generated .cpp."""
    text = source.read_text()
    m = re.search(r"alignas\(16\) const unsigned char " + name + r"\[\] = \{(.*?)\};", text, re.S)
    assert m, f"no aligned const array {name} in {source}"
    data = bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", m[1]))
    n = re.search(r"const unsigned int " + name + r"_len = (\d+);", text)
    assert n and int(n[1]) == len(data)
    return data


def parse_c_array(source: Path, name: str) -> np.ndarray:
    m = re.search(r"const (\w+) " + name + r"\[(\d+)\] = \{(.*?)\};", source.read_text(), re.S)
    assert m, name
    dtype = {"int8_t": np.int8, "int32_t": np.int32, "uint8_t": np.uint8}[m[1]]
    vals = np.array([int(v) for v in m[3].replace("\n", " ").split(",") if v.strip()], dtype)
    assert vals.size == int(m[2])
    return vals


def test_export_c_round_trip(tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    header, source = codegen.export_c(data, tmp_path / "model_data.h", "g_model",
                                      comment="test model")
    assert Path(header).name == "model_data.h" and Path(source).name == "model_data.cpp"
    assert "extern const unsigned char g_model[];" in Path(header).read_text()
    assert parse_c_bytes(Path(source)) == data
    main = tmp_path / "main.cc"
    main.write_text('#include <cstdint>\n#include <cstdio>\n#include "model_data.h"\n'
                    '#include "tflm_ops/checkpoint/checkpoint.h"\n'
                    "int main() { std::printf(\"%u %u %08lx\\n\", g_model_len,"
                    " unsigned(reinterpret_cast<uintptr_t>(g_model) % 16), (unsigned long)"
                    "tfmicro_train::checkpoint::Crc32(g_model, g_model_len)); }\n")
    try:
        exe = cmbuild.build_host("export_c_test", [main, Path(source),
                                                    ROOT / "tflm_ops/checkpoint/checkpoint.cc"],
                                 [*cmbuild.DRIVER_FLAGS, f"-I{tmp_path}"])
    except FileNotFoundError:
        pytest.skip("no host C++ compiler")
    import zlib

    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(data)), "0", f"{zlib.crc32(data):08x}"]
    with pytest.raises(ValueError):
        codegen.export_c(data, tmp_path / "x.h", "not an identifier")


def test_export_c_goes_to_flash(tmp_path):
    """On a Cortex-M the array is in a read-only section (flash), not copied to RAM."""
    if cmbuild.missing_cross_tools():
        pytest.skip(cmbuild.missing_cross_tools())
    _, source = codegen.export_c(b"\x01\x02\x03" * 100, tmp_path / "m.h")
    obj = tmp_path / "m.o"
    subprocess.run([cmbuild.ARM_CXX, *cmbuild.CPUS["cortex-m4"].flags, "-O2", "-c", source, "-o",
                    str(obj)], check=True, capture_output=True)
    syms = subprocess.run(["arm-none-eabi-nm", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    assert re.search(r"^[0-9a-f]+ R g_model$", syms, re.M), syms


def test_export_arrays(tmp_path):
    arrays = {"kA": np.arange(-5, 5, dtype=np.int8), "kB": np.array([[1, -2], [3, 2**30]], np.int32)}
    header, source = codegen.export_arrays(arrays, tmp_path / "d.h", defines={"kN": 7})
    h = Path(header).read_text()
    assert "#define kN 7" in h and "extern const int8_t kA[10];" in h
    np.testing.assert_array_equal(parse_c_array(Path(source), "kA"), arrays["kA"])
    np.testing.assert_array_equal(parse_c_array(Path(source), "kB"), arrays["kB"].reshape(-1))


def test_training_model_export_c(residual_model, calib, tmp_path):
    import tfmicro_train as tmt

    art = tmt.convert(residual_model, calib, update="last")
    paths = art.export_c(tmp_path / "model_data.h")
    assert parse_c_bytes(Path(paths[1])) == art.flatbuffer


# ----------------------------------------------------------------------------- Arduino library


def test_arduino_library_layout():
    props = dict(line.split("=", 1) for line in (ARDUINO / "library.properties").read_text()
                 .splitlines() if "=" in line)
    for key in ("name", "version", "author", "maintainer", "sentence", "paragraph", "category",
                "url", "architectures"):
        assert props.get(key), f"library.properties lacks {key}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", props["version"])
    assert (ARDUINO / "src" / props.get("includes", "TfMicroTrain.h")).exists()
    sketches = list((ARDUINO / "examples").glob("*/*.ino"))
    assert sketches and all(s.stem == s.parent.name for s in sketches)


def test_arduino_sources_in_sync():
    bad = make_library.out_of_date()
    assert not bad, ("arduino/src differs from the repository's sources; run `python3 "
                     "arduino/extras/make_library.py sync`:\n  " + "\n  ".join(bad))


def _example():
    """The committed example: (artifact bytes, train x, train y, test x, test y, defines)."""
    model = parse_c_bytes(EXAMPLE / "model_data.cpp")
    src = EXAMPLE / "samples.cpp"
    defines = {k: int(v) for k, v in re.findall(r"#define (k\w+) (\d+)",
                                                (EXAMPLE / "samples.h").read_text())}
    n, t, b = defines["kNumTrain"], defines["kNumTest"], defines["kImageBytes"]
    return (model, parse_c_array(src, "kTrainImages").reshape(n, b),
            parse_c_array(src, "kTrainLabels"), parse_c_array(src, "kTestImages").reshape(t, b),
            parse_c_array(src, "kTestLabels"), defines)


def test_arduino_example_data_is_an_artifact():
    from tfmicro_train import HostSimulator
    from tfmicro_train.checkpoint import simulator_layout

    model, trx, try_, tex, tey, defines = _example()
    sim = HostSimulator(model)
    assert int(np.prod(sim.input_info.shape)) == defines["kImageBytes"]
    assert simulator_layout(sim)[0].region_bytes() <= defines["kCheckpointBytes"]
    assert trx.dtype == np.int8 and set(np.unique(try_)) <= set(range(10))


def test_arduino_sketch_on_cortex_m4(tmp_path):
    """The example sketch, built from arduino/src against TFLM for Cortex-M4, runs under QEMU
    mps2-an386 and reproduces HostSimulator's accuracies exactly (needs TFLM_DIR with the
    cortex-m4 library: make ... TARGET=cortex_m_generic TARGET_ARCH=cortex-m4 microlite)."""
    missing = cmbuild.missing_cross_tools()
    if missing:
        pytest.skip(missing)
    tflm = cmbuild.find_tflm("cortex-m4")
    if isinstance(tflm, str):
        pytest.skip(tflm)
    from tfmicro_train import HostSimulator

    sketch = tmp_path / "FineTuneDigits.ino.cpp"  # what the Arduino builder makes of a sketch
    sketch.write_text('#include <Arduino.h>\n#line 1 "FineTuneDigits.ino"\n'
                      + (EXAMPLE / "FineTuneDigits.ino").read_text())
    lib = sorted((ARDUINO / "src").rglob("*.cc")) + sorted((ARDUINO / "src").rglob("*.cpp"))
    stub = cmbuild.HERE / "arduino_stub"
    try:
        elf = cmbuild.build_arm(
            "FineTuneDigits", "cortex-m4-soft",
            [sketch, EXAMPLE / "model_data.cpp", EXAMPLE / "samples.cpp", stub / "arduino_main.cc"],
            [*cmbuild.KERNEL_FLAGS, "-Os"], lib, includes=[ARDUINO / "src", EXAMPLE, stub],
            extra_flags=list(tflm.flags), libs=[str(tflm.lib)], root_include=False)
    except cmbuild.BuildError as e:
        pytest.fail(str(e))
    size = cmbuild.elf_size(elf)
    res = cmbuild.run_qemu(elf, "cortex-m4-soft", [], timeout=900)
    print(f"\nsketch on mps2-an386 (flash {size['flash']} B, RAM {size['ram']} B):\n{res.stdout}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    got = {k: int(v) for k, v in re.findall(r"accuracy (\w+ \w+): (\d+) /", res.stdout)}

    model, trx, try_, tex, tey, d = _example()
    sim = HostSimulator(model)
    before = int(round(sim.evaluate(tex, tey) * d["kNumTest"]))
    make_library.example_training(sim, trx, try_, d["kEpochs"], make_library.LEARNING_RATE)
    after = int(round(sim.evaluate(tex, tey) * d["kNumTest"]))
    assert got == {"before training": before, "after training": after, "after reset": before,
                   "after restore": after}, got
    assert "done: the device keeps what it learned" in res.stdout
    assert after > before
