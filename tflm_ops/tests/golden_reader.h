// Reader for golden files written by tfmicro_train/kernels/golden.py.
//
// Test-only, header-only, standard library only (heap, iostream, exceptions are
// fine here; kernels must not include this). See golden.py for the format:
//
//   file   := "TMTGOLD\0" | u32 version (=1) | u32 n_cases | case * n_cases
//   case   := str op | u32 n_entries | entry * n_entries
//   entry  := str key | u8 kind | payload
//     kind 0 ARRAY  : u8 dtype | u8 ndim | i64 dim * ndim | u64 nbytes | raw bytes
//     kind 1 INT    : i64
//     kind 2 FLOAT  : f64
//     kind 3 STRING : str
//   str    := u32 n_bytes | bytes
//
// Usage:
//   std::vector<tmt_golden::Case> cases;
//   std::string err;
//   if (!tmt_golden::ReadFile(path, &cases, &err)) { ... }
//   for (const auto& c : cases) {
//     const tmt_golden::Array& x = c.array("input");       // aborts if missing
//     const int8_t* px = x.data<int8_t>();                  // aborts on dtype mismatch
//     int64_t stride = c.i64("stride_h");                   // INT or 0-d int array
//     float lr = c.f32("lr");                               // 0-d float32 array (exact)
//   }
// Accessors report misuse (missing key, wrong dtype) as a GoldenError exception
// naming the op, case index and key.
#ifndef TFLM_OPS_TESTS_GOLDEN_READER_H_
#define TFLM_OPS_TESTS_GOLDEN_READER_H_

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace tmt_golden {

constexpr char kMagic[8] = {'T', 'M', 'T', 'G', 'O', 'L', 'D', '\0'};
constexpr uint32_t kVersion = 1;

// Keep in sync with DTYPE_CODES in golden.py.
enum class DType : uint8_t {
  kInt8 = 1,
  kInt16 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kFloat32 = 5,
  kUInt8 = 6,
  kFloat64 = 7,
  kBool = 8,
  kUInt16 = 9,
  kUInt32 = 10,
};

enum class Kind : uint8_t { kArray = 0, kInt = 1, kFloat = 2, kString = 3 };

class GoldenError : public std::runtime_error {
 public:
  explicit GoldenError(const std::string& what) : std::runtime_error(what) {}
};

inline const char* DTypeName(DType t) {
  switch (t) {
    case DType::kInt8: return "int8";
    case DType::kInt16: return "int16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kFloat32: return "float32";
    case DType::kUInt8: return "uint8";
    case DType::kFloat64: return "float64";
    case DType::kBool: return "bool";
    case DType::kUInt16: return "uint16";
    case DType::kUInt32: return "uint32";
  }
  return "?";
}

inline size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kInt8: case DType::kUInt8: case DType::kBool: return 1;
    case DType::kInt16: case DType::kUInt16: return 2;
    case DType::kInt32: case DType::kUInt32: case DType::kFloat32: return 4;
    case DType::kInt64: case DType::kFloat64: return 8;
  }
  return 0;
}

inline bool IsIntegerDType(DType t) {
  return t != DType::kFloat32 && t != DType::kFloat64;
}

template <typename T> struct DTypeOf;
template <> struct DTypeOf<int8_t> { static constexpr DType value = DType::kInt8; };
template <> struct DTypeOf<int16_t> { static constexpr DType value = DType::kInt16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::kInt32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::kInt64; };
template <> struct DTypeOf<float> { static constexpr DType value = DType::kFloat32; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::kUInt8; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kFloat64; };
template <> struct DTypeOf<bool> { static constexpr DType value = DType::kBool; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::kUInt16; };
template <> struct DTypeOf<uint32_t> { static constexpr DType value = DType::kUInt32; };

// A dense C-order array. Data is kept as raw little-endian bytes, 8-byte aligned.
struct Array {
  DType dtype = DType::kInt8;
  std::vector<int64_t> dims;
  std::vector<uint64_t> storage;  // raw bytes live here (aligned for any element type)
  size_t nbytes = 0;

  int ndim() const { return static_cast<int>(dims.size()); }
  int64_t dim(int i) const { return dims.at(static_cast<size_t>(i)); }
  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    return n;
  }
  const uint8_t* bytes() const { return reinterpret_cast<const uint8_t*>(storage.data()); }
  uint8_t* mutable_bytes() { return reinterpret_cast<uint8_t*>(storage.data()); }

  template <typename T>
  const T* data() const {
    CheckType<T>();
    return reinterpret_cast<const T*>(storage.data());
  }
  template <typename T>
  T* mutable_data() {
    CheckType<T>();
    return reinterpret_cast<T*>(storage.data());
  }
  template <typename T>
  std::vector<T> vec() const {
    const T* p = data<T>();
    return std::vector<T>(p, p + size());
  }
  // Element i converted to int64 (integer dtypes only).
  int64_t int_at(int64_t i) const {
    const uint8_t* b = bytes();
    switch (dtype) {
      case DType::kInt8: return reinterpret_cast<const int8_t*>(b)[i];
      case DType::kInt16: return reinterpret_cast<const int16_t*>(b)[i];
      case DType::kInt32: return reinterpret_cast<const int32_t*>(b)[i];
      case DType::kInt64: return reinterpret_cast<const int64_t*>(b)[i];
      case DType::kUInt8: return b[i];
      case DType::kBool: return b[i] ? 1 : 0;
      case DType::kUInt16: return reinterpret_cast<const uint16_t*>(b)[i];
      case DType::kUInt32: return reinterpret_cast<const uint32_t*>(b)[i];
      default: break;
    }
    throw GoldenError(std::string("int_at on a ") + DTypeName(dtype) + " array");
  }
  std::string ShapeString() const {
    std::ostringstream os;
    os << DTypeName(dtype) << "[";
    for (size_t i = 0; i < dims.size(); ++i) os << (i ? "," : "") << dims[i];
    os << "]";
    return os.str();
  }

  template <typename T>
  void CheckType() const {
    if (DTypeOf<T>::value != dtype) {
      throw GoldenError(std::string("array is ") + DTypeName(dtype) + ", accessed as " +
                        DTypeName(DTypeOf<T>::value));
    }
  }

  template <typename T>
  static Array Make(std::vector<int64_t> dims, const T* values) {
    Array a;
    a.dtype = DTypeOf<T>::value;
    a.dims = std::move(dims);
    a.nbytes = static_cast<size_t>(a.size()) * sizeof(T);
    a.storage.assign((a.nbytes + 7) / 8, 0);
    if (a.nbytes) std::memcpy(a.storage.data(), values, a.nbytes);
    return a;
  }
};

struct Value {
  Kind kind = Kind::kInt;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  Array a;
};

struct Case {
  std::string op;
  size_t index = 0;                 // position in its file
  std::string file;                 // path it was read from
  std::vector<std::pair<std::string, Value>> entries;  // in file order
  std::map<std::string, size_t> by_key;

  std::string Where(const std::string& key) const {
    std::ostringstream os;
    os << file << " case #" << index << " (" << op << ") '" << key << "'";
    return os.str();
  }
  bool has(const std::string& key) const { return by_key.count(key) != 0; }
  const Value& at(const std::string& key) const {
    auto it = by_key.find(key);
    if (it == by_key.end()) throw GoldenError(Where(key) + ": no such entry");
    return entries[it->second].second;
  }
  const Array& array(const std::string& key) const {
    const Value& v = at(key);
    if (v.kind != Kind::kArray) throw GoldenError(Where(key) + ": not an array");
    return v.a;
  }
  // Typed array with its dtype checked.
  template <typename T>
  const Array& array_of(const std::string& key) const {
    const Array& a = array(key);
    if (a.dtype != DTypeOf<T>::value) {
      throw GoldenError(Where(key) + ": is " + a.ShapeString() + ", expected " +
                        DTypeName(DTypeOf<T>::value));
    }
    return a;
  }
  // An integer: INT entry, or a one-element integer array.
  int64_t i64(const std::string& key) const {
    const Value& v = at(key);
    if (v.kind == Kind::kInt) return v.i;
    if (v.kind == Kind::kArray && v.a.size() == 1 && IsIntegerDType(v.a.dtype)) {
      return v.a.int_at(0);
    }
    throw GoldenError(Where(key) + ": not an integer scalar");
  }
  int64_t i64_or(const std::string& key, int64_t fallback) const {
    return has(key) ? i64(key) : fallback;
  }
  // A float32: a one-element float32 array (exact), or a FLOAT entry that is
  // exactly representable in float32 (anything else is an error, to keep tests exact).
  float f32(const std::string& key) const {
    const Value& v = at(key);
    if (v.kind == Kind::kArray && v.a.size() == 1 && v.a.dtype == DType::kFloat32) {
      return v.a.data<float>()[0];
    }
    if (v.kind == Kind::kFloat) {
      const float f = static_cast<float>(v.f);
      if (static_cast<double>(f) == v.f || v.f != v.f) return f;
      throw GoldenError(Where(key) + ": float64 value not exact in float32; write np.float32");
    }
    throw GoldenError(Where(key) + ": not a float32 scalar");
  }
  double f64(const std::string& key) const {
    const Value& v = at(key);
    if (v.kind == Kind::kFloat) return v.f;
    if (v.kind == Kind::kArray && v.a.size() == 1 && v.a.dtype == DType::kFloat64) {
      return v.a.data<double>()[0];
    }
    if (v.kind == Kind::kArray && v.a.size() == 1 && v.a.dtype == DType::kFloat32) {
      return v.a.data<float>()[0];
    }
    throw GoldenError(Where(key) + ": not a float scalar");
  }
  const std::string& str(const std::string& key) const {
    const Value& v = at(key);
    if (v.kind != Kind::kString) throw GoldenError(Where(key) + ": not a string");
    return v.s;
  }
};

namespace internal {

class ByteReader {
 public:
  ByteReader(const std::vector<char>& buf, const std::string& path) : buf_(buf), path_(path) {}

  void Take(void* dst, size_t n) {
    if (n > buf_.size() - pos_) {
      std::ostringstream os;
      os << path_ << ": truncated at byte " << pos_ << " (wanted " << n << " more)";
      throw GoldenError(os.str());
    }
    if (n) std::memcpy(dst, buf_.data() + pos_, n);
    pos_ += n;
  }
  // Little-endian integers (the host is checked to be little-endian).
  template <typename T>
  T Get() {
    static_assert(std::is_arithmetic<T>::value, "");
    T v;
    Take(&v, sizeof(T));
    return v;
  }
  std::string Str() {
    const uint32_t n = Get<uint32_t>();
    std::string s(n, '\0');
    Take(&s[0], n);
    return s;
  }
  size_t pos() const { return pos_; }
  size_t remaining() const { return buf_.size() - pos_; }

 private:
  const std::vector<char>& buf_;
  const std::string& path_;
  size_t pos_ = 0;
};

inline bool HostIsLittleEndian() {
  const uint16_t one = 1;
  uint8_t b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

}  // namespace internal

// Parses a golden file; throws GoldenError on any malformation.
inline std::vector<Case> ReadFileOrThrow(const std::string& path) {
  if (!internal::HostIsLittleEndian()) throw GoldenError("big-endian hosts are not supported");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw GoldenError(path + ": cannot open");
  std::vector<char> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  internal::ByteReader r(buf, path);

  char magic[8];
  r.Take(magic, 8);
  if (std::memcmp(magic, kMagic, 8) != 0) throw GoldenError(path + ": not a golden file");
  const uint32_t version = r.Get<uint32_t>();
  if (version != kVersion) {
    throw GoldenError(path + ": version " + std::to_string(version) + ", expected " +
                      std::to_string(kVersion));
  }
  const uint32_t n_cases = r.Get<uint32_t>();
  std::vector<Case> cases;
  cases.reserve(n_cases);
  for (uint32_t ci = 0; ci < n_cases; ++ci) {
    Case c;
    c.index = ci;
    c.file = path;
    c.op = r.Str();
    const uint32_t n_entries = r.Get<uint32_t>();
    for (uint32_t ei = 0; ei < n_entries; ++ei) {
      std::string key = r.Str();
      Value v;
      v.kind = static_cast<Kind>(r.Get<uint8_t>());
      switch (v.kind) {
        case Kind::kArray: {
          const uint8_t code = r.Get<uint8_t>();
          if (code < 1 || code > 10) {
            throw GoldenError(c.Where(key) + ": unknown dtype code " + std::to_string(code));
          }
          v.a.dtype = static_cast<DType>(code);
          const uint8_t ndim = r.Get<uint8_t>();
          v.a.dims.resize(ndim);
          for (uint8_t d = 0; d < ndim; ++d) {
            v.a.dims[d] = r.Get<int64_t>();
            if (v.a.dims[d] < 0) throw GoldenError(c.Where(key) + ": negative dimension");
          }
          const uint64_t nbytes = r.Get<uint64_t>();
          if (nbytes != static_cast<uint64_t>(v.a.size()) * DTypeSize(v.a.dtype)) {
            throw GoldenError(c.Where(key) + ": " + std::to_string(nbytes) +
                              " bytes for " + v.a.ShapeString());
          }
          if (nbytes > r.remaining()) throw GoldenError(c.Where(key) + ": truncated data");
          v.a.nbytes = static_cast<size_t>(nbytes);
          v.a.storage.assign((v.a.nbytes + 7) / 8, 0);
          r.Take(v.a.storage.data(), v.a.nbytes);
          break;
        }
        case Kind::kInt:
          v.i = r.Get<int64_t>();
          break;
        case Kind::kFloat:
          v.f = r.Get<double>();
          break;
        case Kind::kString:
          v.s = r.Str();
          break;
        default:
          throw GoldenError(c.Where(key) + ": unknown kind " +
                            std::to_string(static_cast<int>(v.kind)));
      }
      if (c.by_key.count(key)) throw GoldenError(c.Where(key) + ": duplicate entry");
      c.by_key[key] = c.entries.size();
      c.entries.emplace_back(std::move(key), std::move(v));
    }
    cases.push_back(std::move(c));
  }
  if (r.remaining() != 0) {
    throw GoldenError(path + ": " + std::to_string(r.remaining()) + " trailing bytes");
  }
  return cases;
}

// Non-throwing wrapper: false and *error set on failure.
inline bool ReadFile(const std::string& path, std::vector<Case>* cases, std::string* error) {
  try {
    *cases = ReadFileOrThrow(path);
    return true;
  } catch (const GoldenError& e) {
    if (error) *error = e.what();
    return false;
  }
}

// Bit-exact comparison of `count` elements of `got` with the golden array
// `expected` (same dtype, same element count; dims are checked by the caller if
// they matter). Floats are compared by bit pattern. On mismatch returns false and
// describes the first differing element (and how many differ) in *message.
template <typename T>
bool CompareExact(const Array& expected, const T* got, int64_t count, std::string* message) {
  std::ostringstream os;
  if (expected.dtype != DTypeOf<T>::value) {
    os << "dtype: expected " << expected.ShapeString() << ", got " << DTypeName(DTypeOf<T>::value);
    if (message) *message = os.str();
    return false;
  }
  if (expected.size() != count) {
    os << "size: expected " << expected.ShapeString() << " (" << expected.size()
       << " elements), got " << count;
    if (message) *message = os.str();
    return false;
  }
  const T* want = expected.data<T>();
  int64_t first = -1, n_bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    if (std::memcmp(&want[i], &got[i], sizeof(T)) != 0) {
      if (first < 0) first = i;
      ++n_bad;
    }
  }
  if (n_bad == 0) return true;
  using P = typename std::conditional<std::is_floating_point<T>::value, double,
                                      long long>::type;
  os.precision(9);
  os << n_bad << "/" << count << " elements differ; first at flat index " << first
     << ": expected " << static_cast<P>(want[first]) << ", got " << static_cast<P>(got[first]);
  if (message) *message = os.str();
  return false;
}

template <typename T>
bool CompareExact(const Array& expected, const std::vector<T>& got, std::string* message) {
  return CompareExact(expected, got.data(), static_cast<int64_t>(got.size()), message);
}

}  // namespace tmt_golden

#endif  // TFLM_OPS_TESTS_GOLDEN_READER_H_
