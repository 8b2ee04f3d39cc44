// A TMT_* op's flexbuffer custom options, read in Init, Prepare or Eval (internal to the glue).
// Remembers the first required key that is missing or out of range, for Prepare's error message.
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
  // The first required key found missing, or key whose value is out of range, so far; else
  // nullptr. out_of_range(): which of the two.
  const char* bad() const { return bad_; }
  bool out_of_range() const { return out_of_range_; }

  bool Has(const char* key) const { return !Value(key).IsNull(); }

  // Each sets *out when `key` is present (and its value fits) and returns whether it did; the
  // first missing required key or value out of range is remembered.
  bool Int64(const char* key, int64_t* out, bool required = true) {
    const flexbuffers::Reference v = Value(key);
    if (v.IsNull()) return Missing(key, required);
    *out = v.AsInt64();
    return true;
  }
  bool Int(const char* key, int32_t* out, bool required = true) {
    return Narrow(key, INT32_MIN, INT32_MAX, out, required);
  }
  bool Int16(const char* key, int16_t* out, bool required = true) {
    return Narrow(key, INT16_MIN, INT16_MAX, out, required);
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
    if (required && bad_ == nullptr) bad_ = key;
    return false;
  }
  template <typename T>
  bool Narrow(const char* key, int64_t lo, int64_t hi, T* out, bool required) {
    int64_t v = 0;
    if (!Int64(key, &v, required)) return false;
    if (v < lo || v > hi) {
      if (bad_ == nullptr) {
        bad_ = key;
        out_of_range_ = true;
      }
      return false;
    }
    *out = static_cast<T>(v);
    return true;
  }

  const uint8_t* data_;
  size_t length_;
  const char* unreadable_ = nullptr;
  const char* bad_ = nullptr;
  bool out_of_range_ = false;
};

}  // namespace tfmicro_train

#endif  // TFLM_OPS_TFLM_OPTIONS_H_
