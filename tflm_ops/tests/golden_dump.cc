// golden_dump FILE...: prints every case of golden files in a canonical text
// form (floats as bit patterns), so tests/test_golden_cpp.py can check that the
// C++ reader sees exactly what golden.py wrote.
//
//   case <index> op=<op> entries=<n>
//     <key> array <dtype> [d0,d1,...] <v0> <v1> ...   (float32: 0x%08x, float64: 0x%016x)
//     <key> int <value>
//     <key> float 0x<bits of the double>
//     <key> string <length> <text>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "tflm_ops/tests/golden_reader.h"

namespace {

void DumpArray(const tmt_golden::Array& a) {
  using tmt_golden::DType;
  std::printf("array %s [", tmt_golden::DTypeName(a.dtype));
  for (int i = 0; i < a.ndim(); ++i) std::printf(i ? ",%" PRId64 : "%" PRId64, a.dim(i));
  std::printf("]");
  for (int64_t i = 0; i < a.size(); ++i) {
    if (a.dtype == DType::kFloat32) {
      uint32_t bits;
      std::memcpy(&bits, a.bytes() + 4 * i, 4);
      std::printf(" 0x%08" PRIx32, bits);
    } else if (a.dtype == DType::kFloat64) {
      uint64_t bits;
      std::memcpy(&bits, a.bytes() + 8 * i, 8);
      std::printf(" 0x%016" PRIx64, bits);
    } else {
      std::printf(" %" PRId64, a.int_at(i));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int f = 1; f < argc; ++f) {
    std::vector<tmt_golden::Case> cases;
    std::string err;
    if (!tmt_golden::ReadFile(argv[f], &cases, &err)) {
      std::fprintf(stderr, "golden_dump: %s\n", err.c_str());
      return 1;
    }
    for (const auto& c : cases) {
      std::printf("case %zu op=%s entries=%zu\n", c.index, c.op.c_str(), c.entries.size());
      for (const auto& kv : c.entries) {
        const tmt_golden::Value& v = kv.second;
        std::printf("  %s ", kv.first.c_str());
        switch (v.kind) {
          case tmt_golden::Kind::kArray:
            DumpArray(v.a);
            break;
          case tmt_golden::Kind::kInt:
            std::printf("int %" PRId64, v.i);
            break;
          case tmt_golden::Kind::kFloat: {
            uint64_t bits;
            std::memcpy(&bits, &v.f, 8);
            std::printf("float 0x%016" PRIx64, bits);
            break;
          }
          case tmt_golden::Kind::kString:
            std::printf("string %zu %s", v.s.size(), v.s.c_str());
            break;
        }
        std::printf("\n");
      }
    }
  }
  return 0;
}
