"""Build and run helpers for the host and Cortex-M (QEMU) test programs and benchmarks.

Used by tests/test_checkpoint.py, tests/test_cortex_m.py, tests/test_codegen.py and
benchmarks/cortex_m.py. Cortex-M programs are linked with this directory's `startup.c` and
`mps2.ld` (`--specs=rdimon.specs -nostartfiles`: newlib stdio and files over semihosting) and run
with `qemu-system-arm -M <board> -semihosting-config enable=on,target=native,arg=... -nographic
-kernel prog.elf`. With `-icount shift=0` every instruction is 1 ns of virtual time, which
`cm_timer.h` reads back as an instruction count.

Compiled programs are cached under $TMT_CPP_CACHE (default <tmp>/tfmicro_train_cpp_cache) by a
hash of compiler, flags and every source file of tflm_ops/ and arduino/src/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STARTUP = HERE / "startup.c"
LINKER_SCRIPT = HERE / "mps2.ld"
SHIM = HERE / "shim"
ARM_CXX = "arm-none-eabi-g++"
ARM_CC = "arm-none-eabi-gcc"
ARM_SIZE = "arm-none-eabi-size"
QEMU = "qemu-system-arm"
DEBIAN_PACKAGES = ("gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib "
                   "qemu-system-arm")
INSNS_PER_TICK = 40


@dataclass(frozen=True)
class Cpu:
    """A Cortex-M target: QEMU board and compiler flags."""

    name: str
    board: str
    flags: tuple[str, ...]


# Cortex-M7 soft-float: the ABI of TFLM's `TARGET_ARCH=cortex-m7` library (-mcpu=cortex-m7+nofp).
# Cortex-M4 with its FPU (hard float), so both float ABIs are exercised.
CPUS = {
    "cortex-m7": Cpu("cortex-m7", "mps2-an500",
                     ("-mcpu=cortex-m7+nofp", "-mthumb", "-mfloat-abi=soft", "-mlittle-endian")),
    "cortex-m4": Cpu("cortex-m4", "mps2-an386",
                     ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard",
                      "-mlittle-endian")),
    # As TFLM's `TARGET_ARCH=cortex-m4` library (soft float), for linking against it.
    "cortex-m4-soft": Cpu("cortex-m4", "mps2-an386",
                          ("-mcpu=cortex-m4+nofp", "-mthumb", "-mfloat-abi=soft", "-mlittle-endian")),
}

# The kernels' language and flags (as tools/bazel/copts.bzl); -ffp-contract=off keeps float32
# expressions unfused, so results equal the host's bit for bit.
KERNEL_FLAGS = ("-std=c++17", "-O2", "-fno-exceptions", "-fno-rtti", "-ffp-contract=off",
                "-ffunction-sections", "-fdata-sections", "-Wall", "-Wextra", "-Werror")
# Test drivers may use exceptions and the standard library.
DRIVER_FLAGS = ("-std=c++17", "-O2", "-ffp-contract=off", "-ffunction-sections", "-fdata-sections",
                "-Wall", "-Wextra", "-Werror", "-Wno-psabi")
_HASHED = [ROOT / "tflm_ops", ROOT / "arduino" / "src"]


def missing_cross_tools() -> str | None:
    """Why Cortex-M programs cannot be built and run here, or None if they can."""
    missing = [t for t in (ARM_CXX, ARM_CC, ARM_SIZE, QEMU) if shutil.which(t) is None]
    if missing:
        return (f"{', '.join(missing)} not found: install the Debian packages {DEBIAN_PACKAGES} "
                "(.ci/run does)")
    for name, package in (("rdimon.specs", "libnewlib-arm-none-eabi"),
                          ("libstdc++.a", "libstdc++-arm-none-eabi-newlib")):
        res = subprocess.run([ARM_CXX, *CPUS["cortex-m4"].flags, f"-print-file-name={name}"],
                             capture_output=True, text=True)
        if not os.path.isabs(res.stdout.strip()):
            return f"{name} not found: install the Debian package {package} (.ci/run does)"
    return None


def cache_dir() -> Path:
    d = os.environ.get("TMT_CPP_CACHE") or os.path.join(tempfile.gettempdir(),
                                                         "tfmicro_train_cpp_cache")
    return Path(d)


def _digest(parts: list[str], files: list[Path]) -> str:
    h = hashlib.sha256()
    h.update("\0".join(parts).encode())
    seen = set(files)
    for d in _HASHED:
        if d.is_dir():
            seen.update(p for p in d.rglob("*")
                        if p.suffix in (".h", ".cc", ".c", ".cpp", ".inc", ".ld", ".ino"))
    for p in sorted(seen):
        h.update(str(p).encode() + b"\0" + p.read_bytes() + b"\0")
    for p in parts:
        if os.path.isfile(p):  # libraries given as paths
            st = os.stat(p)
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


class BuildError(RuntimeError):
    """A compile or link command failed (message has the command and compiler output)."""


def _run_cmd(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise BuildError(f"$ {' '.join(cmd)}\n{res.stderr[-6000:]}")


def build_host(name: str, sources: list[Path], flags: list[str] | tuple[str, ...] = DRIVER_FLAGS,
               libs: list[str] | None = None, cxx: str | None = None) -> Path:
    """Compile `sources` with the host compiler into a cached executable."""
    cxx = cxx or os.environ.get("TMT_CXX", "g++")
    version = _compiler_version(cxx)
    if not version:
        raise FileNotFoundError(f"no C++ compiler {cxx}")
    libs = list(libs or [])
    key = _digest([version, *flags, *libs, *map(str, sources)], list(sources))
    exe = cache_dir() / key / name
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".{name}.{os.getpid()}")
    _run_cmd([cxx, *flags, "-I", str(ROOT), *map(str, sources), *libs, "-o", str(tmp)])
    os.replace(tmp, exe)
    return exe


def build_arm(name: str, cpu: str, sources: list[Path], cxx_flags: list[str] | tuple[str, ...],
              kernel_sources: list[Path] = (), includes: list[Path] = (), defines: list[str] = (),
              libs: list[str] = (), opt: str | None = None,
              extra_flags: list[str] = (), source_flags: dict[str, list[str]] | None = None,
              root_include: bool = True) -> Path:
    """Cross-compile and link a Cortex-M ELF for `cpu` (a key of CPUS); objects and ELF cached.

    `sources` are compiled with `cxx_flags`, `kernel_sources` with KERNEL_FLAGS (no exceptions,
    no RTTI), both with `includes`, `defines` and `extra_flags` (e.g. TFLM's); `opt` overrides
    the -O level of both; `source_flags` maps a source (its path as given) to flags for it alone;
    `root_include=False` leaves the repository root off the include path (`includes` only)."""
    c = CPUS[cpu]
    version = _compiler_version(ARM_CXX)
    inc = [*(["-I", str(ROOT)] if root_include else []), *[f"-I{p}" for p in includes],
           *[f"-D{d}" for d in defines], *extra_flags]
    source_flags = source_flags or {}
    sflags = list(cxx_flags) + ([opt] if opt else [])
    kflags = list(KERNEL_FLAGS) + ([opt] if opt else [])
    headers = _digest([version], [])
    objs = [_arm_object(STARTUP, [ARM_CC, *c.flags, "-O2"], headers)]
    for i, src in enumerate([*sources, *kernel_sources]):
        flags = sflags if i < len(sources) else kflags
        cmd = ([ARM_CC, *c.flags, "-O2", "-ffunction-sections", "-fdata-sections", *inc]
               if str(src).endswith(".c") else [ARM_CXX, *c.flags, *flags, *inc])
        cmd += source_flags.get(str(src), [])
        objs.append(_arm_object(Path(src), cmd, headers))
    key = hashlib.sha256("\0".join([name, *c.flags, *map(str, objs), *libs]).encode())
    for lib in libs:
        if os.path.isfile(lib):
            st = os.stat(lib)
            key.update(f"{lib}:{st.st_size}:{st.st_mtime_ns}".encode())
    elf = cache_dir() / "elf" / key.hexdigest()[:20] / f"{name}.elf"
    if elf.exists():
        return elf
    elf.parent.mkdir(parents=True, exist_ok=True)
    tmp = elf.with_name(f".{name}.{os.getpid()}.elf")
    _run_cmd([ARM_CXX, *c.flags, "--specs=rdimon.specs", "-nostartfiles", "-T", str(LINKER_SCRIPT),
              "-Wl,--gc-sections", *map(str, objs), *libs, "-lm", "-o", str(tmp)])
    os.replace(tmp, elf)
    return elf


def _arm_object(src: Path, cmd: list[str], headers: str) -> Path:
    """Compile one source (cached by command, source and the digest of all project headers)."""
    h = hashlib.sha256("\0".join([headers, *cmd, str(src)]).encode())
    h.update(src.read_bytes())
    obj = cache_dir() / "obj" / h.hexdigest()[:24] / (src.stem + ".o")
    if not obj.exists():
        obj.parent.mkdir(parents=True, exist_ok=True)
        tmp = obj.with_name(f".{src.stem}.{os.getpid()}.o")
        _run_cmd([*cmd, "-c", str(src), "-o", str(tmp)])
        os.replace(tmp, obj)
    return obj


def qemu_command(elf: Path, cpu: str, args: list[str] = (), icount: bool = False) -> list[str]:
    """The qemu-system-arm command running `elf` with semihosting arguments `args`."""
    sh = "enable=on,target=native,arg=" + ",arg=".join([elf.stem, *args])
    cmd = [QEMU, "-M", CPUS[cpu].board, "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", sh]
    if icount:
        cmd += ["-icount", "shift=0"]
    return [*cmd, "-kernel", str(elf)]


def run_qemu(elf: Path, cpu: str, args: list[str] = (), icount: bool = False,
             timeout: float = 300, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run an ELF under QEMU; returns the completed process (stdout = the program's output)."""
    for a in args:
        if "," in a or " " in a:
            raise ValueError(f"semihosting argument {a!r} may not contain ',' or ' '")
    return subprocess.run(qemu_command(elf, cpu, args, icount), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def elf_size(elf: Path) -> dict[str, int]:
    """arm-none-eabi-size (Berkeley): text, data, bss; flash = text + data, ram = data + bss."""
    out = subprocess.run([ARM_SIZE, str(elf)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(v) for v in out.splitlines()[1].split()[:3])
    return {"text": text, "data": data, "bss": bss, "flash": text + data, "ram": data + bss}


# ----------------------------------------------------------------------------------- TFLM


@dataclass(frozen=True)
class Tflm:
    """A built tflite-micro checkout: include flags and the library for one target."""

    root: Path
    flags: tuple[str, ...]
    lib: Path


def tflm_includes(root: Path) -> list[str]:
    dl = root / "tensorflow/lite/micro/tools/make/downloads"
    out = []
    for inc in [root, dl, dl / "flatbuffers/include", dl / "gemmlowp", dl / "ruy", dl / "kissfft"]:
        out += ["-isystem", str(inc)]
    return out


def find_tflm(target: str) -> Tflm | str:
    """TFLM from $TFLM_DIR for target 'host', 'cortex-m7' or 'cortex-m4'; a reason string if absent.

    The library is gen/<target>/lib/libtensorflow-microlite.a of a checkout where TFLM's
    `make ... microlite` ran (TFLM_LIB_<TARGET> = path overrides, e.g. TFLM_LIB_CORTEX_M4)."""
    d = os.environ.get("TFLM_DIR")
    if not d:
        return ("TFLM not configured: set TFLM_DIR=/path/to/tflite-micro (a checkout where "
                "`make -f tensorflow/lite/micro/tools/make/Makefile microlite` ran"
                + ("" if target == "host" else f" with TARGET=cortex_m_generic TARGET_ARCH={target}")
                + ")")
    root = Path(d).resolve()
    if not (root / "tensorflow/lite/micro/micro_interpreter.h").exists():
        return f"TFLM_DIR={d} is not a tflite-micro checkout"
    env = os.environ.get("TFLM_LIB_" + target.upper().replace("-", "_"))
    if env:
        lib = Path(env)
    else:
        pattern = (f"gen/linux_{os.uname().machine}_default*/lib/libtensorflow-microlite.a"
                   if target == "host" else
                   f"gen/cortex_m_generic_{target}_default*/lib/libtensorflow-microlite.a")
        # TFLM's reference kernels first where a checkout also holds a CMSIS-NN build
        # (OPTIMIZED_KERNEL_DIR=cmsis_nn: bit-exact with them; TFLM_LIB_<TARGET> picks it)
        found = sorted(root.glob(pattern), key=lambda q: ("cmsis_nn" in q.parent.parent.name, str(q)))
        if not found:
            how = "" if target == "host" else (
                f" TARGET=cortex_m_generic TARGET_ARCH={target} OPTIMIZED_KERNEL_DIR= "
                "TARGET_TOOLCHAIN_ROOT=/usr/bin/")
            return (f"no {pattern} in {root}: build it with `make -f "
                    f"tensorflow/lite/micro/tools/make/Makefile{how} microlite`")
        lib = found[0]
    flags = ["-DTF_LITE_STATIC_MEMORY", *tflm_includes(root)]
    if target == "host":
        flags.append("-DTF_LITE_DISABLE_X86_NEON")
    else:
        flags += ["-DTF_LITE_MCU_DEBUG_LOG", "-funsigned-char", "-fno-threadsafe-statics"]
    return Tflm(root, tuple(flags), lib)


# ----------------------------------------------------------------------------- training steps


def steps_file(sim, xs, ys, lrs, features=None) -> bytes:
    """The STEPS input of tflm_train_main.cc: the artifact's raw inputs of each training step,
    made exactly as HostSimulator.train_step makes them (features: per step the cached features
    of an artifact with a feature cache, or None for the image)."""
    import struct

    import numpy as np

    inputs = [sim.main.infos[t] for t in sim.main.inputs]
    if sim.streamed_input is not None:  # the streamed image first (tflm_train_main.cc)
        inputs.insert(0, sim.streamed_input)
    sizes = [int(np.prod(i.shape)) * np.dtype(i.dtype).itemsize for i in inputs]
    out = [b"TMTS", struct.pack("<II", len(xs), len(inputs)), struct.pack(f"<{len(sizes)}I", *sizes)]
    features = [None] * len(xs) if features is None else features
    for x, y, lr, f in zip(xs, ys, lrs, features):
        raw = sim._inputs(x, sim._label_array(y), sim._lr(lr), f)
        assert len(raw) == len(sizes)
        for arr, n in zip(raw, sizes):
            b = np.ascontiguousarray(arr).tobytes()
            assert len(b) == n
            out.append(b)
    return b"".join(out)


def parse_train_output(stdout: str) -> dict:
    """The lines of tflm_train_main.cc as a dict: arena, inference, restore, steps, save, ops
    (operator type -> (calls, instructions) in the last step, when counting instructions), allocs
    (kind -> (used bytes, count) of TFLM's persistent allocations, with TMT_RECORD_ALLOCATIONS),
    stack (the deepest stack of a training step on Cortex-M, bytes from the top of the stack)."""
    r: dict = {"steps": []}
    for line in stdout.splitlines():
        w = line.split()
        if not w:
            continue
        if w[0] == "arena":
            r["arena"] = int(w[1])
        elif w[:2] == ["inference", "insns"]:
            r["inference_insns"] = int(w[2])
        elif w[0] in ("restore", "save") and len(w) >= 6 and w[2] == "slot":
            r[w[0]] = (int(w[1]), int(w[3]), int(w[5]))
            if w[0] == "save" and len(w) >= 8:
                r["save_insns"] = int(w[7])
        elif w[0] == "step" and len(w) >= 8:
            r["steps"].append({"status": int(w[3]), "loss_bits": int(w[5], 16),
                               "insns": int(w[7])})
        elif w[0] == "op" and len(w) == 6 and w[2] == "calls" and w[4] == "insns":
            r.setdefault("ops", {})[w[1]] = (int(w[3]), int(w[5]))
        elif w[0] == "alloc" and len(w) == 4:
            r.setdefault("allocs", {})[w[1]] = (int(w[2]), int(w[3]))
        elif w[0] == "stack" and len(w) == 2:
            r["stack"] = int(w[1])
        elif w[0] == "done":
            r["done"] = True
    return r
