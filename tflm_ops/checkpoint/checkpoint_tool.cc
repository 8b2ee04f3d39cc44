// Test driver of the checkpoint core (host g++ and Cortex-M under QEMU semihosting; stdio only).
//
//   checkpoint_tool save LAYOUT DATA REGION [LIMIT]  writes a checkpoint of DATA into REGION (in
//       place); with LIMIT the storage accepts only LIMIT more bytes (a power loss mid-save)
//   checkpoint_tool restore LAYOUT REGION OUT        restores into buffers pre-filled with 0xA5
//       and writes them to OUT (so an untouched restore is visible)
//   checkpoint_tool crc FILE                         prints the CRC32 of FILE
// LAYOUT is a text file, one variable per line: "<size> <name>". DATA is the variables' bytes
// concatenated. Prints one line: "<verb> <status> slot <k> seq <n>".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <string>

#include "tflm_ops/checkpoint/checkpoint.h"

namespace ck = tfmicro_train::checkpoint;

namespace {

bool ReadFile(const char* path, std::vector<uint8_t>* out) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return false;
  out->clear();
  uint8_t buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out->insert(out->end(), buf, buf + n);
  std::fclose(f);
  return true;
}

bool WriteFile(const char* path, const std::vector<uint8_t>& data) {
  FILE* f = std::fopen(path, "wb");
  if (!f) return false;
  const bool ok = data.empty() || std::fwrite(data.data(), 1, data.size(), f) == data.size();
  return std::fclose(f) == 0 && ok;
}

struct Layout {
  std::vector<std::string> names;
  std::vector<uint32_t> sizes;
};

bool ReadLayout(const char* path, Layout* l) {
  std::vector<uint8_t> text;
  if (!ReadFile(path, &text)) return false;
  std::string s(text.begin(), text.end());
  size_t pos = 0;
  while (pos < s.size()) {
    size_t end = s.find('\n', pos);
    if (end == std::string::npos) end = s.size();
    const std::string line = s.substr(pos, end - pos);
    pos = end + 1;
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    if (sp == std::string::npos) return false;
    l->sizes.push_back(static_cast<uint32_t>(std::strtoul(line.substr(0, sp).c_str(), nullptr, 10)));
    l->names.push_back(line.substr(sp + 1));
  }
  return true;
}

// Storage that accepts `budget` more bytes (erase counts as bytes erased), then fails.
struct Torn {
  uint8_t* base;
  long budget;
};

bool TornWrite(Torn* t, uint32_t offset, const uint8_t* data, uint32_t size, bool erase) {
  const long n = t->budget < static_cast<long>(size) ? t->budget : static_cast<long>(size);
  for (long i = 0; i < n; ++i) t->base[offset + i] = erase ? 0xFF : data[i];
  t->budget -= n;
  return n == static_cast<long>(size);
}

bool TornErase(void* ctx, uint32_t offset, uint32_t size) {
  return TornWrite(static_cast<Torn*>(ctx), offset, nullptr, size, true);
}

bool TornProgram(void* ctx, uint32_t offset, const void* data, uint32_t size) {
  return TornWrite(static_cast<Torn*>(ctx), offset, static_cast<const uint8_t*>(data), size, false);
}

int Usage() {
  std::printf("usage: checkpoint_tool save LAYOUT DATA REGION [LIMIT] | restore LAYOUT REGION OUT"
              " | crc FILE\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return Usage();
  const std::string verb = argv[1];
  if (verb == "crc") {
    std::vector<uint8_t> data;
    if (!ReadFile(argv[2], &data)) return 3;
    std::printf("crc %08lx\n", static_cast<unsigned long>(ck::Crc32(data.data(), data.size())));
    return 0;
  }
  if (argc < 5) return Usage();
  Layout layout;
  if (!ReadLayout(argv[2], &layout)) {
    std::printf("cannot read layout %s\n", argv[2]);
    return 3;
  }
  std::vector<uint8_t> vars_data;
  std::vector<ck::VariableView> views;
  uint32_t total = 0;
  for (uint32_t s : layout.sizes) total += s;
  vars_data.assign(total + 1, 0xA5);
  uint32_t off = 0;
  for (size_t i = 0; i < layout.sizes.size(); ++i) {
    views.push_back({layout.names[i].c_str(), vars_data.data() + off, layout.sizes[i]});
    off += layout.sizes[i];
  }
  uint32_t seq = 0;
  int slot = -1;
  if (verb == "save") {
    std::vector<uint8_t> data, region;
    if (!ReadFile(argv[3], &data) || data.size() != total || !ReadFile(argv[4], &region)) {
      std::printf("cannot read data/region\n");
      return 3;
    }
    std::memcpy(vars_data.data(), data.data(), total);
    ck::Storage storage = ck::MemoryStorage(region.data(), static_cast<uint32_t>(region.size()));
    Torn torn{region.data(), argc > 5 ? std::atol(argv[5]) : -1};
    if (torn.budget >= 0) {
      storage.ctx = &torn;
      storage.erase = TornErase;
      storage.program = TornProgram;
    }
    const ck::Status st = ck::Save(views.data(), static_cast<int>(views.size()), storage, &seq, &slot);
    std::printf("save %d slot %d seq %lu\n", static_cast<int>(st), slot,
                static_cast<unsigned long>(seq));
    return WriteFile(argv[4], region) ? 0 : 3;
  }
  if (verb == "restore") {
    std::vector<uint8_t> region;
    if (!ReadFile(argv[3], &region)) return 3;
    const ck::Storage storage =
        ck::MemoryStorage(region.data(), static_cast<uint32_t>(region.size()));
    const ck::Status st =
        ck::Restore(views.data(), static_cast<int>(views.size()), storage, &seq, &slot);
    std::printf("restore %d slot %d seq %lu\n", static_cast<int>(st), slot,
                static_cast<unsigned long>(seq));
    vars_data.resize(total);
    return WriteFile(argv[4], vars_data) ? 0 : 3;
  }
  return Usage();
}
