"""Power-safe checkpoints of the training state: the Python twin of tflm_ops/checkpoint/.

A checkpoint holds every variable tensor of a training artifact (trainable weights and biases and
the int32[2] `tmt/state` tensor with the training-step counter), in flatbuffer tensor order, as raw
little-endian bytes. A region holds two slots (A at offset 0, B at `slot_size`); a save erases the
slot not holding the newest checkpoint, writes the payload, then the header, so an interrupted save
leaves the previous checkpoint in force; a restore takes the newest slot whose magic, version,
CRC32 and layout fingerprint check out. The bytes are identical to the C++ core's
(`tflm_ops/checkpoint/checkpoint.h` documents the format).

    region = sim.save_checkpoint()          # bytearray, two slots
    sim2 = HostSimulator(artifact); sim2.load_checkpoint(region)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = 0x43544D54  # bytes b"TMTC"
VERSION = 1
HEADER_SIZE = 32
NUM_SLOTS = 2
_HEADER = struct.Struct("<IHHIIIII")  # magic, version, header size, seq, fingerprint, count, payload, 0


class CheckpointError(ValueError):
    """No usable checkpoint (`reason` is "no checkpoint" or "layout mismatch"), or bad arguments."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def crc32(data: bytes, crc: int = 0) -> int:
    """zlib's CRC32 (as the C++ `Crc32`); pass a previous result to continue."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


@dataclass(frozen=True)
class Layout:
    """Names and byte sizes of the variables a checkpoint holds, in order."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def fingerprint(self) -> int:
        """CRC32 over each name, a 0 byte and its size as u32."""
        crc = 0
        for name, size in zip(self.names, self.sizes):
            crc = crc32(name.encode() + b"\0" + struct.pack("<I", size), crc)
        return crc

    @property
    def payload_bytes(self) -> int:
        """The variables' bytes, concatenated."""
        return sum(self.sizes)

    @property
    def slot_bytes(self) -> int:
        """Header + payload: the smallest slot for this layout."""
        return HEADER_SIZE + self.payload_bytes

    def region_bytes(self) -> int:
        """A region of two slots, each rounded up to 4 bytes (as `MemoryStorage` splits it)."""
        return 2 * ((self.slot_bytes + 3) & ~3)


@dataclass(frozen=True)
class SlotInfo:
    """What one slot holds: `valid` (format and CRC check out), `matches` (and the layout)."""

    valid: bool = False
    matches: bool = False
    sequence: int = 0
    fingerprint: int = 0


def slot_size(region: bytes | bytearray) -> int:
    """Bytes per slot of a RAM region: half its size, rounded down to 4 (`MemoryStorage`)."""
    return (len(region) // 2) & ~3


def _newer(a: int, b: int) -> bool:
    """a was written after b (serial-number arithmetic on u32)."""
    d = (a - b) & 0xFFFFFFFF
    return 0 < d < 0x80000000


def inspect_slot(region: bytes | bytearray, slot: int, layout: Layout,
                 size: int | None = None) -> SlotInfo:
    """Validate slot `slot` of a region against `layout`."""
    size = slot_size(region) if size is None else size
    if size < HEADER_SIZE or slot not in (0, 1):
        return SlotInfo()
    base = slot * size
    h = bytes(region[base:base + HEADER_SIZE])
    if len(h) < HEADER_SIZE:
        return SlotInfo()
    magic, version, hsize, seq, fp, count, payload, _ = _HEADER.unpack_from(h)
    if magic != MAGIC or version != VERSION or hsize != HEADER_SIZE:
        return SlotInfo()
    if payload > size - HEADER_SIZE:
        return SlotInfo()
    body = bytes(region[base + HEADER_SIZE:base + HEADER_SIZE + payload])
    if len(body) != payload or crc32(body, crc32(h[:28])) != struct.unpack_from("<I", h, 28)[0]:
        return SlotInfo()
    matches = (fp == layout.fingerprint and count == len(layout.sizes)
               and payload == layout.payload_bytes and len(layout.sizes) > 0)
    return SlotInfo(True, matches, seq, fp)


def encode_header(layout: Layout, payloads: Sequence[bytes], sequence: int) -> bytes:
    """The 32 header bytes of a checkpoint of `payloads` (one bytes object per variable)."""
    head = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, sequence & 0xFFFFFFFF, layout.fingerprint,
                        len(layout.sizes), layout.payload_bytes, 0)[:28]
    crc = crc32(head)
    for p in payloads:
        crc = crc32(p, crc)
    return head + struct.pack("<I", crc)


def save_writes(region: bytes | bytearray, layout: Layout, payloads: Sequence[bytes],
                size: int | None = None) -> tuple[list[tuple[int, bytes]], int, int]:
    """The storage writes of one save, in order: ([(offset, bytes)], slot, sequence).

    The first write is the erase (0xFF over the slot), then one per variable, then the header.
    Applying only a prefix of them models a save cut short by a power loss."""
    payloads = [bytes(p) for p in payloads]
    if not payloads or [len(p) for p in payloads] != list(layout.sizes):
        raise CheckpointError("bad argument", "payload sizes do not match the layout")
    size = slot_size(region) if size is None else size
    if size < layout.slot_bytes:
        raise CheckpointError("slot too small",
                              f"checkpoint needs {layout.slot_bytes} bytes per slot, have {size}")
    info = [inspect_slot(region, k, layout, size) for k in range(NUM_SLOTS)]
    if info[0].matches and info[1].matches:
        newest = 1 if _newer(info[1].sequence, info[0].sequence) else 0
        target, seq = 1 - newest, info[newest].sequence + 1
    elif info[0].matches or info[1].matches:
        k = 0 if info[0].matches else 1
        target, seq = 1 - k, info[k].sequence + 1
    else:
        target, seq = (1 if info[0].valid and not info[1].valid else 0), 1
    seq &= 0xFFFFFFFF
    start = target * size
    writes = [(start, b"\xff" * size)]
    offset = start + HEADER_SIZE
    for p in payloads:
        if p:
            writes.append((offset, p))
        offset += len(p)
    writes.append((start, encode_header(layout, payloads, seq)))
    return writes, target, seq


def apply_writes(region: bytearray, writes: list[tuple[int, bytes]], limit: int | None = None) -> int:
    """Apply storage writes in order; with `limit`, stop after that many bytes (a torn save).

    Returns the number of bytes written."""
    done = 0
    for offset, data in writes:
        if limit is not None and done + len(data) > limit:
            n = limit - done
            region[offset:offset + n] = data[:n]
            return limit
        region[offset:offset + len(data)] = data
        done += len(data)
    return done


def save(region: bytearray, layout: Layout, payloads: Sequence[bytes],
         size: int | None = None) -> tuple[int, int]:
    """Write a checkpoint into `region` (in place); returns (slot, sequence)."""
    writes, slot, seq = save_writes(region, layout, payloads, size)
    apply_writes(region, writes)
    return slot, seq


def restore(region: bytes | bytearray, layout: Layout,
            size: int | None = None) -> tuple[list[bytes], int, int]:
    """The newest matching checkpoint: (payload per variable, slot, sequence).

    Raises CheckpointError ("no checkpoint" / "layout mismatch") when there is none."""
    size = slot_size(region) if size is None else size
    info = [inspect_slot(region, k, layout, size) for k in range(NUM_SLOTS)]
    best = -1
    for k in range(NUM_SLOTS):
        if info[k].matches and (best < 0 or _newer(info[k].sequence, info[best].sequence)):
            best = k
    if best < 0:
        if any(i.valid for i in info):
            raise CheckpointError("layout mismatch",
                                  "the checkpoint belongs to another artifact (layout fingerprint "
                                  f"0x{next(i for i in info if i.valid).fingerprint:08x}, expected "
                                  f"0x{layout.fingerprint:08x})")
        raise CheckpointError("no checkpoint", "no valid checkpoint in either slot")
    pos = best * size + HEADER_SIZE
    out = []
    for n in layout.sizes:
        out.append(bytes(region[pos:pos + n]))
        pos += n
    return out, best, info[best].sequence


# ---------------------------------------------------------------------------- HostSimulator


def simulator_layout(sim) -> tuple[Layout, list[int]]:
    """The checkpoint layout of a HostSimulator's artifact and its variable tensor indices."""
    tensors = sorted(sim.variables)
    infos = sim.main.infos
    names = tuple(infos[t].name for t in tensors)
    sizes = tuple(int(sim.variables[t].nbytes) for t in tensors)
    return Layout(names, sizes), tensors


def save_simulator(sim, region: bytearray | None = None) -> bytearray:
    """Save the simulator's variable tensors into `region` (new erased region if None)."""
    layout, tensors = simulator_layout(sim)
    if region is None:
        region = bytearray(b"\xff" * layout.region_bytes())
    payloads = [np.ascontiguousarray(sim.variables[t]).astype(
        sim.variables[t].dtype.newbyteorder("<")).tobytes() for t in tensors]
    save(region, layout, payloads)
    return region


def load_simulator(sim, region: bytes | bytearray) -> int:
    """Restore the simulator's variable tensors from `region`; returns the checkpoint's sequence.

    The host-side step count (which drives a learning-rate schedule) becomes the restored
    device counter. On error nothing changes."""
    layout, tensors = simulator_layout(sim)
    payloads, _, seq = restore(region, layout)
    new = {}
    for t, p in zip(tensors, payloads):
        old = sim.variables[t]
        new[t] = np.frombuffer(p, old.dtype.newbyteorder("<")).astype(old.dtype).reshape(old.shape)
    sim.variables.update(new)
    sim.steps = sim.step
    return seq
