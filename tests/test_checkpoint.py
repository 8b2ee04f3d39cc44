"""Power-safe checkpoints: format, A/B slots, torn and corrupt slots, C++ == Python byte for byte.

* tfmicro_train/checkpoint.py alone: round trip, slot alternation, a save cut short at every
  byte, every corrupted byte, truncated regions, other layouts, sequence wrap-around;
* tflm_ops/checkpoint/checkpoint.cc compiled with g++ (tool: checkpoint_tool.cc): the same
  scenarios give byte-identical regions and the same restore decisions;
* HostSimulator.save_checkpoint / load_checkpoint on a converted artifact: a "reboot" continues
  training bit for bit (same weights and the same stochastic-rounding counter).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tflm_ops" / "cortex_m"))

import cmbuild  # noqa: E402

from tfmicro_train import checkpoint as ck  # noqa: E402

LAYOUT = ck.Layout(("tmt/state", "tmt/conv/weights", "tmt/conv/bias", "tmt/fc/weights"),
                   (8, 72, 32, 41))


def _payloads(rng, layout: ck.Layout) -> list[bytes]:
    return [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in layout.sizes]


def _fresh(layout: ck.Layout = LAYOUT, extra: int = 0) -> bytearray:
    return bytearray(b"\xff" * (layout.region_bytes() + extra))


# ----------------------------------------------------------------------------- Python format


def test_crc_and_fingerprint():
    import zlib

    data = bytes(range(256)) * 3
    assert ck.crc32(data) == zlib.crc32(data)
    assert ck.crc32(data[100:], ck.crc32(data[:100])) == zlib.crc32(data)
    other = ck.Layout(LAYOUT.names, (8, 72, 32, 40))
    renamed = ck.Layout(("tmt/state", "tmt/conv/weights", "tmt/conv/bias", "tmt/fc/weightz"),
                        LAYOUT.sizes)
    assert len({LAYOUT.fingerprint, other.fingerprint, renamed.fingerprint}) == 3


def test_round_trip_and_ab_alternation():
    rng = np.random.default_rng(0)
    region = _fresh()
    with pytest.raises(ck.CheckpointError) as e:
        ck.restore(region, LAYOUT)
    assert e.value.reason == "no checkpoint"
    history = []
    for i in range(5):
        p = _payloads(rng, LAYOUT)
        slot, seq = ck.save(region, LAYOUT, p)
        assert (slot, seq) == (i % 2, i + 1)
        history.append(p)
        got, rslot, rseq = ck.restore(region, LAYOUT)
        assert got == p and (rslot, rseq) == (slot, seq)
    # The other slot still holds the previous checkpoint.
    size = ck.slot_size(region)
    assert region[0:4] == b"TMTC" and region[size:size + 4] == b"TMTC"
    assert ck.inspect_slot(region, 1, LAYOUT).sequence == 4


def test_torn_save_keeps_previous_state():
    """Cut the third save short after every possible number of bytes: restore gives the second
    checkpoint until the header is complete, then the third; never anything else."""
    rng = np.random.default_rng(1)
    region = _fresh()
    p1, p2, p3 = (_payloads(rng, LAYOUT) for _ in range(3))
    ck.save(region, LAYOUT, p1)
    ck.save(region, LAYOUT, p2)
    writes, slot, seq = ck.save_writes(region, LAYOUT, p3)
    total = sum(len(d) for _, d in writes)
    assert slot == 0 and seq == 3
    for cut in range(total + 1):
        r = bytearray(region)
        ck.apply_writes(r, writes, cut)
        got, _, rseq = ck.restore(r, LAYOUT)
        if cut == total:
            assert (got, rseq) == (p3, 3)
        else:
            assert (got, rseq) == (p2, 2), f"cut at byte {cut} of {total}"


def test_corrupt_bytes_are_rejected():
    rng = np.random.default_rng(2)
    region = _fresh()
    p1, p2 = _payloads(rng, LAYOUT), _payloads(rng, LAYOUT)
    ck.save(region, LAYOUT, p1)
    ck.save(region, LAYOUT, p2)  # newest, in slot 1
    size = ck.slot_size(region)
    for i in range(LAYOUT.slot_bytes):
        for flip in (0x01, 0x80):
            r = bytearray(region)
            r[size + i] ^= flip
            got, slot, seq = ck.restore(r, LAYOUT)
            assert (got, slot, seq) == (p1, 0, 1), f"byte {i} ^ {flip:#x} accepted"
    r = bytearray(region)
    r[5] ^= 1  # version of slot 0
    r[size + 40] ^= 1  # payload of slot 1
    with pytest.raises(ck.CheckpointError) as e:
        ck.restore(r, LAYOUT)
    assert e.value.reason == "no checkpoint"


def test_truncated_region_is_rejected():
    """A region cut short (e.g. a partial copy of the flash pages) keeps no half checkpoint."""
    rng = np.random.default_rng(3)
    region = _fresh()
    p1 = _payloads(rng, LAYOUT)
    ck.save(region, LAYOUT, p1)
    size = ck.slot_size(region)
    for n in range(0, len(region)):
        cut = bytes(region[:n])
        try:
            got, _, _ = ck.restore(cut, LAYOUT, size)
        except ck.CheckpointError as e:
            assert n < LAYOUT.slot_bytes and e.reason == "no checkpoint"
        else:
            assert n >= LAYOUT.slot_bytes and got == p1


def test_other_layout_is_rejected():
    rng = np.random.default_rng(4)
    region = _fresh()
    ck.save(region, LAYOUT, _payloads(rng, LAYOUT))
    for other in (ck.Layout(LAYOUT.names[:3], LAYOUT.sizes[:3]),
                  ck.Layout(LAYOUT.names, (8, 72, 32, 40)),
                  ck.Layout(("tmt/state", "a", "b", "c"), LAYOUT.sizes)):
        with pytest.raises(ck.CheckpointError) as e:
            ck.restore(region, other)
        assert e.value.reason == "layout mismatch"
    # A save of another layout keeps the foreign checkpoint if a slot is free.
    other = ck.Layout(("x",), (16,))
    slot, seq = ck.save(region, other, [bytes(16)])
    assert (slot, seq) == (1, 1)
    assert ck.restore(region, LAYOUT)[2] == 1
    with pytest.raises(ck.CheckpointError):
        ck.save(bytearray(b"\xff" * 64), LAYOUT, _payloads(rng, LAYOUT))  # slot too small


def test_sequence_wraps():
    rng = np.random.default_rng(5)
    region = _fresh()
    p = [_payloads(rng, LAYOUT) for _ in range(3)]
    ck.apply_writes(region, [(ck.HEADER_SIZE, b"".join(p[0])),
                             (0, ck.encode_header(LAYOUT, p[0], 0xFFFFFFFE))])
    assert ck.restore(region, LAYOUT)[2] == 0xFFFFFFFE
    assert ck.save(region, LAYOUT, p[1]) == (1, 0xFFFFFFFF)
    assert ck.save(region, LAYOUT, p[2]) == (0, 0)
    got, slot, seq = ck.restore(region, LAYOUT)
    assert (got, slot, seq) == (p[2], 0, 0)


# ----------------------------------------------------------------------------- C++ == Python


@pytest.fixture(scope="module")
def tool():
    if shutil.which("g++") is None:
        pytest.skip("no g++")
    src = ROOT / "tflm_ops" / "checkpoint"
    return cmbuild.build_host("checkpoint_tool", [src / "checkpoint_tool.cc", src / "checkpoint.cc"])


class _Cpp:
    """Runs checkpoint_tool (host, or a Cortex-M build under QEMU) on files in a directory."""

    def __init__(self, exe: Path, work: Path, layout: ck.Layout, cpu: str | None = None):
        self.exe, self.work, self.cpu = exe, work, cpu
        self.layout_file = work / f"layout_{layout.fingerprint:08x}.txt"
        self.layout_file.write_text("".join(f"{s} {n}\n" for n, s in
                                                 zip(layout.names, layout.sizes)))

    def _run(self, *args: str) -> str:
        if self.cpu:
            res = cmbuild.run_qemu(self.exe, self.cpu, list(args), timeout=60)
        else:
            res = subprocess.run([str(self.exe), *args], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout.strip().splitlines()[-1]

    def save(self, region: bytearray, payloads: list[bytes], limit: int | None = None) -> str:
        (self.work / "data.bin").write_bytes(b"".join(payloads))
        (self.work / "region.bin").write_bytes(bytes(region))
        extra = [str(limit)] if limit is not None else []
        out = self._run("save", str(self.layout_file), str(self.work / "data.bin"),
                        str(self.work / "region.bin"), *extra)
        region[:] = (self.work / "region.bin").read_bytes()
        return out

    def restore(self, region: bytes) -> tuple[str, bytes]:
        (self.work / "region.bin").write_bytes(bytes(region))
        out = self._run("restore", str(self.layout_file), str(self.work / "region.bin"),
                        str(self.work / "out.bin"))
        return out, (self.work / "out.bin").read_bytes()


def _py_restore(region, layout) -> tuple[str, bytes]:
    try:
        got, slot, seq = ck.restore(region, layout)
    except ck.CheckpointError as e:
        code = {"no checkpoint": 1, "layout mismatch": 2}[e.reason]
        return f"restore {code} slot -1 seq 0", b"\xa5" * layout.payload_bytes
    return f"restore 0 slot {slot} seq {seq}", b"".join(got)


def check_cpp_matches_python(cpp: _Cpp, layout: ck.Layout, seed: int, cuts: int) -> int:
    """Saves, torn saves, corruptions and restores through C++ and Python; returns #checks."""
    rng = np.random.default_rng(seed)
    py = bytearray(b"\xff" * (layout.region_bytes() + int(rng.integers(0, 9))))
    cc = bytearray(py)
    checks = 0
    for _ in range(4):
        p = _payloads(rng, layout)
        slot, seq = ck.save(py, layout, p)
        assert cpp.save(cc, p) == f"save 0 slot {slot} seq {seq}"
        assert cc == py, "C++ and Python wrote different bytes"
        assert cpp.restore(cc) == _py_restore(py, layout)
        checks += 2
    p = _payloads(rng, layout)
    writes, _, _ = ck.save_writes(py, layout, p)
    total = sum(len(d) for _, d in writes)
    for cut in sorted(set(rng.integers(0, total + 1, cuts).tolist()) | {0, total - 1, total}):
        tp, tc = bytearray(py), bytearray(cc)
        ck.apply_writes(tp, writes, cut)
        status = cpp.save(tc, p, cut)
        assert tc == tp, f"torn save at {cut}: regions differ"
        assert status.startswith("save 0" if cut >= total else "save 4")
        assert cpp.restore(tc) == _py_restore(tp, layout)
        checks += 2
    size = ck.slot_size(py)
    for i in rng.integers(0, 2 * size, cuts).tolist():
        bad = bytearray(py)
        bad[i] ^= 1 << int(rng.integers(0, 8))
        assert cpp.restore(bad) == _py_restore(bad, layout), f"corrupt byte {i}"
        checks += 1
    other = ck.Layout(layout.names[:-1] + ("renamed",), layout.sizes)
    other_cpp = _Cpp(cpp.exe, cpp.work, other, cpp.cpu)
    assert other_cpp.restore(py)[0] == "restore 2 slot -1 seq 0"
    return checks + 1


def test_cpp_core_matches_python(tool, tmp_path):
    crc_file = tmp_path / "crc.bin"
    crc_file.write_bytes(np.random.default_rng(9).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    out = subprocess.run([str(tool), "crc", str(crc_file)], capture_output=True, text=True).stdout
    assert out.strip() == f"crc {ck.crc32(crc_file.read_bytes()):08x}"
    layouts = [LAYOUT, ck.Layout(("tmt/state",), (8,)),
               ck.Layout(("tmt/state", "w", "empty", "b"), (8, 300, 0, 40))]
    n = sum(check_cpp_matches_python(_Cpp(tool, tmp_path, lay, None), lay, seed, 40)
            for seed, lay in enumerate(layouts))
    print(f"checkpoint C++ == Python: {n} checks")


# ----------------------------------------------------------------------------- HostSimulator


@pytest.fixture(scope="module")
def artifacts(residual_model, calib):
    import tfmicro_train as tmt

    full = tmt.convert(residual_model, calib, update=tmt.SparseUpdate(2, {2: 0.5, 3: 1}))
    last = tmt.convert(residual_model, calib, update="last")
    return full, last


def test_simulator_reboot_continues_bit_exact(artifacts, tool, tmp_path):
    import tfmicro_train as tmt

    art, other = artifacts
    rng = np.random.default_rng(0)
    xs = rng.random((12, 12, 12, 1)).astype(np.float32)
    ys = rng.integers(0, 10, 12)
    dev = tmt.HostSimulator(art, learning_rate=0.05)
    for i in range(4):
        dev.train_step(xs[i], ys[i])
    region = dev.save_checkpoint()
    assert dev.step == 4
    for i in range(4, 8):
        dev.train_step(xs[i], ys[i])
    region = dev.save_checkpoint(region)  # second checkpoint, other slot
    after8 = dev.weights()

    # Reboot: a fresh device restores and continues exactly like the one that kept running.
    rebooted = tmt.HostSimulator(art, learning_rate=0.05)
    assert rebooted.load_checkpoint(region) == 2
    assert rebooted.step == 8
    for k, v in after8.items():
        np.testing.assert_array_equal(rebooted.weights()[k], v)
    for i in range(8, 12):
        assert dev.train_step(xs[i], ys[i]) == rebooted.train_step(xs[i], ys[i])
    for k, v in dev.weights().items():
        np.testing.assert_array_equal(rebooted.weights()[k], v)

    # Power loss during the next save: the restore gives the 8-step state.
    layout, tensors = ck.simulator_layout(dev)
    payloads = [dev.variables[t].tobytes() for t in tensors]
    writes, _, _ = ck.save_writes(region, layout, payloads)
    torn = bytearray(region)
    ck.apply_writes(torn, writes, sum(len(d) for _, d in writes) - 3)
    again = tmt.HostSimulator(art, learning_rate=0.05)
    assert again.load_checkpoint(torn) == 2
    for k, v in after8.items():
        np.testing.assert_array_equal(again.weights()[k], v)

    # The device's C++ core reads the simulator's checkpoint identically.
    cpp = _Cpp(tool, tmp_path, layout)
    status, data = cpp.restore(region)
    assert status == "restore 0 slot 1 seq 2"
    assert data == b"".join(ck.restore(region, layout)[0])

    # Another artifact rejects it and keeps its state.
    sim_other = tmt.HostSimulator(other)
    before = {k: v.copy() for k, v in sim_other.variables.items()}
    with pytest.raises(ck.CheckpointError) as e:
        sim_other.load_checkpoint(region)
    assert e.value.reason == "layout mismatch"
    for k, v in before.items():
        np.testing.assert_array_equal(sim_other.variables[k], v)


# ----------------------------------------------------------------------------- TFLM (TFLM_DIR)


def tflm_train_sources() -> list[Path]:
    """The sources of the TFLM training driver (tflm_ops/cortex_m/tflm_train_main.cc)."""
    return [ROOT / "tflm_ops/cortex_m/tflm_train_main.cc",
            ROOT / "tflm_ops/checkpoint/tflm_checkpoint.cc",
            ROOT / "tflm_ops/checkpoint/checkpoint.cc",
            *[p for d in ("tflm", "core") for p in sorted((ROOT / "tflm_ops" / d).glob("*.cc"))
              if not p.name.endswith("_test.cc")]]


def run_reboot_scenario(run, sim_factory, art, tmp_path: Path, n: int = 4) -> dict:
    """Device: n steps, save; reboot: restore, n steps, save; a torn third save. Checks every
    loss and checkpoint byte against HostSimulator. `run(model, steps, region, restore)` runs
    the device driver and returns its stdout."""
    rng = np.random.default_rng(7)
    sim = sim_factory()
    xs = rng.random((2 * n,) + sim.input_info.shape[1:]).astype(np.float32)
    ys = rng.integers(0, sim.output_info.shape[-1], 2 * n)
    lrs = [0.05] * (2 * n)
    model = tmp_path / "model.tflite"
    model.write_bytes(art.flatbuffer)
    region = tmp_path / "region.bin"
    if region.exists():
        region.unlink()
    out = []
    sim_region = None
    for part, restore in ((0, False), (1, True)):
        sl = slice(part * n, (part + 1) * n)
        steps = tmp_path / f"steps{part}.bin"
        steps.write_bytes(cmbuild.steps_file(sim, xs[sl], ys[sl], lrs[sl]))
        res = cmbuild.parse_train_output(run(model, steps, region, restore))
        assert res.get("done"), res
        want = [np.float32(sim.train_step(x, y, lr)).view(np.uint32)
                for x, y, lr in zip(xs[sl], ys[sl], lrs[sl])]
        got = [s["loss_bits"] for s in res["steps"]]
        assert got == [int(w) for w in want], f"losses differ from HostSimulator: {got} {want}"
        if restore:
            assert res["restore"] == (0, 0, 1)
        sim_region = sim.save_checkpoint(sim_region)
        assert res["save"][0] == 0
        assert region.read_bytes() == bytes(sim_region), "device checkpoint differs from HostSimulator"
        out.append(res)
    # Torn save on the device's region: a reboot keeps the previous (second) checkpoint.
    layout, tensors = ck.simulator_layout(sim)
    writes, _, _ = ck.save_writes(region.read_bytes(), layout,
                                  [sim.variables[t].tobytes() for t in tensors])
    torn = bytearray(region.read_bytes())
    ck.apply_writes(torn, writes, sum(len(d) for _, d in writes) // 2)
    region.write_bytes(bytes(torn))
    steps = tmp_path / "steps_empty.bin"
    steps.write_bytes(cmbuild.steps_file(sim, [], [], []))
    res = cmbuild.parse_train_output(run(model, steps, region, True))
    assert res["restore"] == (0, 1, 2), res
    return {"runs": out, "restored_after_torn": res}


def test_tflm_device_checkpoint_equals_simulator(artifacts, tmp_path):
    """The artifact in TFLM (host build): losses and checkpoints equal HostSimulator's, a reboot
    restores and continues, a torn save keeps the previous checkpoint (needs TFLM_DIR)."""
    import tfmicro_train as tmt

    tflm = cmbuild.find_tflm("host")
    if isinstance(tflm, str):
        pytest.skip(tflm)
    flags = ["-std=c++17", "-O2", "-fno-rtti", "-fno-exceptions", "-ffp-contract=off", *tflm.flags]
    try:
        exe = cmbuild.build_host("tflm_train", tflm_train_sources(), flags, [str(tflm.lib), "-lm"])
    except cmbuild.BuildError as e:
        pytest.fail(str(e))
    art = artifacts[0]

    def run(model, steps, region, restore):
        res = subprocess.run([str(exe), str(model), str(steps), str(region),
                              *(["restore"] if restore else [])], capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout

    run_reboot_scenario(run, lambda: tmt.HostSimulator(art, learning_rate=0.05), art, tmp_path)
