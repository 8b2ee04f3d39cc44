// Power-safe checkpoints of the training state (the artifact's variable tensors).
//
// Portable C++17: no TFLM, no heap, no exceptions. The bytes written are identical to those of
// the Python twin, tfmicro_train/checkpoint.py (tests/test_checkpoint.py checks it).
//
// What is saved: every variable tensor of the artifact, in flatbuffer tensor order (the trainable
// weights and biases plus the int32[2] `tmt/state` tensor holding the TMT_INIT marker and the
// training-step counter), as raw little-endian bytes. Restoring them continues training exactly
// where it stopped, including the stochastic-rounding noise sequence.
//
// Storage: a region of two slots (A at offset 0, B at offset slot_size), e.g. two flash pages.
// A save erases the slot that does not hold the newest checkpoint, writes the payload, and writes
// the header last; a restore takes the newest slot whose magic, version, CRC32 and layout all
// check out. A save interrupted at any byte (power loss) or a corrupted slot therefore leaves the
// previous checkpoint in force.
//
// Slot format (little-endian):
//   0  u32 magic 0x43544D54 ("TMTC")     16 u32 number of variables
//   4  u16 format version (1)             20 u32 payload bytes
//   6  u16 header bytes (32)              24 u32 reserved (0)
//   8  u32 sequence number                28 u32 CRC32 of bytes [0, 28) followed by the payload
//  12  u32 layout fingerprint             32 payload: the variables' bytes, concatenated
// CRC32 is zlib's (reflected polynomial 0xEDB88320). The layout fingerprint is the CRC32 of,
// for each variable in order, its name, a 0 byte and its size as u32: a checkpoint of another
// artifact is rejected. Sequence numbers compare as serial numbers (wrap-safe).
#ifndef TFLM_OPS_CHECKPOINT_CHECKPOINT_H_
#define TFLM_OPS_CHECKPOINT_CHECKPOINT_H_

#include <cstddef>
#include <cstdint>

namespace tfmicro_train {
namespace checkpoint {

constexpr uint32_t kMagic = 0x43544D54u;  // bytes "TMTC"
constexpr uint16_t kVersion = 1;
constexpr uint32_t kHeaderSize = 32;
constexpr int kNumSlots = 2;

enum class Status : int32_t {
  kOk = 0,
  kNoCheckpoint,     // neither slot holds a valid checkpoint (variables untouched)
  kLayoutMismatch,   // only checkpoints of another artifact / layout (variables untouched)
  kSlotTooSmall,     // slot_size < SlotBytes(...)
  kStorageError,     // erase / program callback failed (e.g. power loss simulation)
  kBadArgument,      // null pointers, no variables, ...
};

const char* StatusString(Status s);

// One variable tensor: name (from the flatbuffer; nullptr counts as ""), data and byte size.
struct VariableView {
  const char* name;
  void* data;
  uint32_t size;
};

// zlib-compatible CRC32; pass the previous result as `crc` to continue a running CRC.
uint32_t Crc32(const void* data, size_t size, uint32_t crc = 0);

uint32_t LayoutFingerprint(const VariableView* vars, int count);
uint32_t PayloadBytes(const VariableView* vars, int count);
// Header + payload: the smallest slot that holds a checkpoint of these variables.
uint32_t SlotBytes(const VariableView* vars, int count);

// Where the two slots live. Reads go through `base` (RAM, or memory-mapped flash); writes go
// through the callbacks, or, when they are null, straight into `base` (RAM: erase = fill 0xFF).
// `erase(ctx, offset, size)` must leave [offset, offset + size) reading 0xFF (or at least not
// a valid header); `program(ctx, offset, data, size)` writes bytes. Offsets are from `base`.
// A save calls erase once for the whole target slot, then program for the payload (variable by
// variable, increasing offsets), then program once for the 32-byte header at the slot start.
struct Storage {
  uint8_t* base = nullptr;
  uint32_t slot_size = 0;
  void* ctx = nullptr;
  bool (*erase)(void* ctx, uint32_t offset, uint32_t size) = nullptr;
  bool (*program)(void* ctx, uint32_t offset, const void* data, uint32_t size) = nullptr;
};

// A RAM buffer of `size` bytes split into two slots of (size / 2) rounded down to 4 bytes.
Storage MemoryStorage(uint8_t* buffer, uint32_t size);

struct SlotInfo {
  bool valid = false;     // magic, version, header size and CRC check out
  bool matches = false;   // valid, and layout fingerprint / count / payload size match `vars`
  uint32_t sequence = 0;
  uint32_t fingerprint = 0;
};

// Examines slot `slot` (0 or 1) against the layout of `vars`.
SlotInfo InspectSlot(const Storage& storage, int slot, const VariableView* vars, int count);

// Writes a new checkpoint of `vars` into the slot not holding the newest matching checkpoint.
// On success *sequence / *slot (if non-null) say what was written.
Status Save(const VariableView* vars, int count, const Storage& storage,
            uint32_t* sequence = nullptr, int* slot = nullptr);

// Copies the newest matching checkpoint into `vars`. On any error `vars` are untouched.
Status Restore(const VariableView* vars, int count, const Storage& storage,
               uint32_t* sequence = nullptr, int* slot = nullptr);

}  // namespace checkpoint
}  // namespace tfmicro_train

#endif  // TFLM_OPS_CHECKPOINT_CHECKPOINT_H_
