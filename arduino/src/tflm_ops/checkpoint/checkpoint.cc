// Power-safe A/B checkpoints of the training state. See checkpoint.h.
#include "tflm_ops/checkpoint/checkpoint.h"

#include <cstring>

namespace tfmicro_train {
namespace checkpoint {
namespace {

// Nibble table of the reflected CRC32 polynomial 0xEDB88320 (64 bytes of flash).
constexpr uint32_t kCrcNibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
    0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
    0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};

inline void PutU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

inline void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

inline uint16_t GetU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

inline uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

// a was written after b (serial-number arithmetic: correct across the 2^32 wrap).
inline bool Newer(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; }

bool ValidArgs(const VariableView* vars, int count) {
  if (vars == nullptr || count <= 0) return false;
  for (int i = 0; i < count; ++i) {
    if (vars[i].data == nullptr && vars[i].size != 0) return false;
  }
  return true;
}

// Header bytes [0, 28) of a checkpoint of `vars` with sequence `seq` (CRC field left 0).
void FillHeader(const VariableView* vars, int count, uint32_t seq, uint8_t* h) {
  std::memset(h, 0, kHeaderSize);
  PutU32(h + 0, kMagic);
  PutU16(h + 4, kVersion);
  PutU16(h + 6, static_cast<uint16_t>(kHeaderSize));
  PutU32(h + 8, seq);
  PutU32(h + 12, LayoutFingerprint(vars, count));
  PutU32(h + 16, static_cast<uint32_t>(count));
  PutU32(h + 20, PayloadBytes(vars, count));
}

bool DoErase(const Storage& s, uint32_t offset, uint32_t size) {
  if (s.erase != nullptr) return s.erase(s.ctx, offset, size);
  std::memset(s.base + offset, 0xFF, size);
  return true;
}

bool DoProgram(const Storage& s, uint32_t offset, const void* data, uint32_t size) {
  if (size == 0) return true;
  if (s.program != nullptr) return s.program(s.ctx, offset, data, size);
  std::memcpy(s.base + offset, data, size);
  return true;
}

}  // namespace

const char* StatusString(Status s) {
  switch (s) {
    case Status::kOk: return "ok";
    case Status::kNoCheckpoint: return "no valid checkpoint";
    case Status::kLayoutMismatch: return "checkpoint belongs to another model layout";
    case Status::kSlotTooSmall: return "checkpoint slot too small";
    case Status::kStorageError: return "storage erase/program failed";
    case Status::kBadArgument: return "bad argument";
  }
  return "unknown";
}

uint32_t Crc32(const void* data, size_t size, uint32_t crc) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) {
    crc ^= p[i];
    crc = (crc >> 4) ^ kCrcNibble[crc & 15u];
    crc = (crc >> 4) ^ kCrcNibble[crc & 15u];
  }
  return ~crc;
}

uint32_t LayoutFingerprint(const VariableView* vars, int count) {
  uint32_t crc = 0;
  for (int i = 0; i < count; ++i) {
    const char* name = vars[i].name ? vars[i].name : "";
    crc = Crc32(name, std::strlen(name) + 1, crc);  // the name and its terminating 0
    uint8_t size[4];
    PutU32(size, vars[i].size);
    crc = Crc32(size, 4, crc);
  }
  return crc;
}

uint32_t PayloadBytes(const VariableView* vars, int count) {
  uint32_t n = 0;
  for (int i = 0; i < count; ++i) n += vars[i].size;
  return n;
}

uint32_t SlotBytes(const VariableView* vars, int count) {
  return kHeaderSize + PayloadBytes(vars, count);
}

Storage MemoryStorage(uint8_t* buffer, uint32_t size) {
  Storage s;
  s.base = buffer;
  s.slot_size = (size / 2) & ~3u;
  return s;
}

SlotInfo InspectSlot(const Storage& storage, int slot, const VariableView* vars, int count) {
  SlotInfo info;
  if (storage.base == nullptr || slot < 0 || slot >= kNumSlots ||
      storage.slot_size < kHeaderSize) {
    return info;
  }
  const uint8_t* h = storage.base + static_cast<size_t>(slot) * storage.slot_size;
  if (GetU32(h) != kMagic || GetU16(h + 4) != kVersion || GetU16(h + 6) != kHeaderSize) {
    return info;
  }
  const uint32_t payload = GetU32(h + 20);
  if (payload > storage.slot_size - kHeaderSize) return info;
  uint32_t crc = Crc32(h, 28);
  crc = Crc32(h + kHeaderSize, payload, crc);
  if (crc != GetU32(h + 28)) return info;
  info.valid = true;
  info.sequence = GetU32(h + 8);
  info.fingerprint = GetU32(h + 12);
  info.matches = ValidArgs(vars, count) && info.fingerprint == LayoutFingerprint(vars, count) &&
                 GetU32(h + 16) == static_cast<uint32_t>(count) &&
                 payload == PayloadBytes(vars, count);
  return info;
}

Status Save(const VariableView* vars, int count, const Storage& storage, uint32_t* sequence,
            int* slot) {
  if (!ValidArgs(vars, count) || storage.base == nullptr) return Status::kBadArgument;
  if (storage.slot_size < SlotBytes(vars, count)) return Status::kSlotTooSmall;
  SlotInfo info[kNumSlots];
  for (int k = 0; k < kNumSlots; ++k) info[k] = InspectSlot(storage, k, vars, count);
  int target;
  uint32_t seq;
  if (info[0].matches && info[1].matches) {
    const int newest = Newer(info[1].sequence, info[0].sequence) ? 1 : 0;
    target = 1 - newest;
    seq = info[newest].sequence + 1u;
  } else if (info[0].matches || info[1].matches) {
    const int k = info[0].matches ? 0 : 1;
    target = 1 - k;
    seq = info[k].sequence + 1u;
  } else {
    target = info[0].valid && !info[1].valid ? 1 : 0;  // keep a foreign checkpoint if possible
    seq = 1;
  }
  uint8_t header[kHeaderSize];
  FillHeader(vars, count, seq, header);
  uint32_t crc = Crc32(header, 28);
  for (int i = 0; i < count; ++i) crc = Crc32(vars[i].data, vars[i].size, crc);
  PutU32(header + 28, crc);

  const uint32_t start = static_cast<uint32_t>(target) * storage.slot_size;
  if (!DoErase(storage, start, storage.slot_size)) return Status::kStorageError;
  uint32_t offset = start + kHeaderSize;
  for (int i = 0; i < count; ++i) {
    if (!DoProgram(storage, offset, vars[i].data, vars[i].size)) return Status::kStorageError;
    offset += vars[i].size;
  }
  if (!DoProgram(storage, start, header, kHeaderSize)) return Status::kStorageError;
  if (sequence) *sequence = seq;
  if (slot) *slot = target;
  return Status::kOk;
}

Status Restore(const VariableView* vars, int count, const Storage& storage, uint32_t* sequence,
               int* slot) {
  if (!ValidArgs(vars, count) || storage.base == nullptr) return Status::kBadArgument;
  SlotInfo info[kNumSlots];
  for (int k = 0; k < kNumSlots; ++k) info[k] = InspectSlot(storage, k, vars, count);
  int best = -1;
  for (int k = 0; k < kNumSlots; ++k) {
    if (info[k].matches && (best < 0 || Newer(info[k].sequence, info[best].sequence))) best = k;
  }
  if (best < 0) {
    return info[0].valid || info[1].valid ? Status::kLayoutMismatch : Status::kNoCheckpoint;
  }
  const uint8_t* p = storage.base + static_cast<size_t>(best) * storage.slot_size + kHeaderSize;
  for (int i = 0; i < count; ++i) {
    if (vars[i].size) std::memcpy(vars[i].data, p, vars[i].size);
    p += vars[i].size;
  }
  if (sequence) *sequence = info[best].sequence;
  if (slot) *slot = best;
  return Status::kOk;
}

}  // namespace checkpoint
}  // namespace tfmicro_train
