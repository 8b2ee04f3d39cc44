// The flexbuffer custom options of a TMT_* op, read once in its Init (internal to the glue).
// Remembers the first required key that is missing, for Prepare's error message.
#ifndef TFLM_OPS_TFLM_OPTIONS_H_
#define TFLM_OPS_TFLM_OPTIONS_H_

#include <cstddef>
#include <cstdint>

#include "flatbuffers/flexbuffers.h"

namespace tfmicro_train {

class OptionReader {
 public:
  OptionReader(const char* buffer, size_t length)
      : data_(reinterpret_cast<const uint8_t*>(buffer)), length_(buffer == nullptr ? 0 : length) {
    if (length_ == 0) {
      unreadable_ = "(all: no custom options)";
    } else if (!flexbuffers::GetRoot(data_, length_).IsMap()) {
      unreadable_ = "(all: options are not a flexbuffer map)";
    }
  }

  // Why no option can be read (no options, or not a map), else nullptr.
  const char* unreadable() const { return unreadable_; }
  // The first required key found missing so far, else nullptr.
  const char* missing() const { return missing_; }

  bool Has(const char* key) const { return !Value(key).IsNull(); }

  // Each sets *out when `key` is present and returns whether it was; a missing required key is
  // remembered (the first one).
  bool Int64(const char* key, int64_t* out, bool required = true) {
    const flexbuffers::Reference v = Value(key);
    if (v.IsNull()) return Missing(key, required);
    *out = v.AsInt64();
    return true;
  }
  bool Int(const char* key, int32_t* out, bool required = true) {
    int64_t v = 0;
    if (!Int64(key, &v, required)) return false;
    *out = static_cast<int32_t>(v);
    return true;
  }
  bool Float(const char* key, float* out, bool required = true) {
    const flexbuffers::Reference v = Value(key);
    if (v.IsNull()) return Missing(key, required);
    *out = v.AsFloat();
    return true;
  }

 private:
  flexbuffers::Reference Value(const char* key) const {
    if (unreadable_ != nullptr) return flexbuffers::Reference();  // null
    return flexbuffers::GetRoot(data_, length_).AsMap()[key];
  }
  bool Missing(const char* key, bool required) {
    if (required && missing_ == nullptr) missing_ = key;
    return false;
  }

  const uint8_t* data_;
  size_t length_;
  const char* unreadable_ = nullptr;
  const char* missing_ = nullptr;
};

}  // namespace tfmicro_train

#endif  // TFLM_OPS_TFLM_OPTIONS_H_
