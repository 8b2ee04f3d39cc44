// Runs training steps of an artifact in TFLite Micro (host, or Cortex-M under QEMU semihosting)
// and saves / restores checkpoints. Used by tests/test_checkpoint.py, tests/test_cortex_m.py and
// benchmarks/cortex_m.py.
//
//   tflm_train MODEL STEPS REGION [restore] [arena=N]
//
// MODEL: the artifact (or "-" when built with -DTMT_EMBEDDED_MODEL: the C array written by
// TrainingModel.export_c). STEPS: "TMTS" | u32 steps | u32 n_inputs | u32 bytes per input |
// the inputs of every step (image, label, learning rate) as raw bytes, or "-": only allocate
// the tensors, print the arena and stop (sizing the arena). REGION: the checkpoint region file
// (read if it exists, written back after the last step). With "restore" the newest checkpoint
// in REGION is restored before the first step. With "arena=N" the interpreter gets only the
// first N bytes of the arena (finding the smallest arena that works without rebuilding).
//
// A streamed artifact (convert(stream_input=True), tfmicro_train::StreamedInputBytes > 0) has no
// image input: STEPS still carries the image first, and the program hands it over in place (the
// steps buffer, outside the arena, like samples in flash) through a tfmicro_train::StreamedInput,
// set as TFLM's external context before AllocateTensors. (The two inference calls before the
// steps read the first step's image, or with no steps the model's first bytes: lr = 0, any
// image does.)
//
// Output lines: "arena <bytes>", "inference insns <n>" (an lr = 0 call: forward pass only),
// "restore <status> slot <k> seq <n>", "step <i> status <s> loss <float32 bits hex> insns <n>",
// "save <status> slot <k> seq <n>", "done". Instruction counts are printed on Cortex-M (QEMU
// -icount shift=0, see cm_timer.h) and are 0 on the host; there, after the steps, also
// "stack <bytes>": the deepest stack any training step's Invoke reached, measured from the top
// of the stack (main's frame included; see PaintStack). Built with -DTMT_RECORD_ALLOCATIONS,
// also "alloc <kind> <used bytes> <count>" per kind of TFLM's persistent allocations (its
// RecordingMicroInterpreter), after "arena".
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_profiler_interface.h"
#if defined(TMT_RECORD_ALLOCATIONS)
#include "tensorflow/lite/micro/recording_micro_interpreter.h"
#endif
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tflm_ops/checkpoint/checkpoint.h"
#include "tflm_ops/checkpoint/tflm_checkpoint.h"
#include "tflm_ops/tflm/training_ops.h"

#if defined(__arm__)
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#include "tflm_ops/cortex_m/cm_timer.h"
#define TMT_COUNT_INSNS 1
#endif

#ifndef TMT_ARENA_BYTES
#define TMT_ARENA_BYTES (512 * 1024)
#endif
#ifndef TMT_MODEL_MAX_BYTES
#define TMT_MODEL_MAX_BYTES (1024 * 1024)
#endif
#ifndef TMT_REGION_MAX_BYTES
#define TMT_REGION_MAX_BYTES (256 * 1024)
#endif

#if defined(TMT_EMBEDDED_MODEL)
extern const unsigned char TMT_EMBEDDED_MODEL[];
#else
alignas(16) static uint8_t g_model[TMT_MODEL_MAX_BYTES];
#endif
alignas(16) static uint8_t g_arena[TMT_ARENA_BYTES];

#if defined(__arm__)
// Stack high-water mark: PaintStack fills the kStackPaintWords words below the caller's frame
// with a pattern; after a step, StackDepth finds the lowest word that no longer holds it (the
// deepest the step wrote) and returns its distance from the top of the stack (__stack,
// mps2.ld), or 0 when the step went below the painted words.
extern "C" uint32_t __stack;
constexpr uint32_t kStackPaint = 0xC5AC5AC5u;
constexpr uint32_t kStackPaintWords = 16 * 1024;  // 64 KB

__attribute__((noinline)) static volatile uint32_t* PaintStack() {
  uintptr_t sp;
  __asm__ volatile("mov %0, sp" : "=r"(sp));
  volatile uint32_t* top = reinterpret_cast<volatile uint32_t*>((sp & ~uintptr_t{7}) - 256);
  volatile uint32_t* bottom = top - kStackPaintWords;
  for (volatile uint32_t* w = bottom; w < top; ++w) *w = kStackPaint;
  return bottom;
}

static unsigned long StackDepth(volatile const uint32_t* bottom) {
  if (*bottom != kStackPaint) return 0;
  volatile const uint32_t* w = bottom;
  while (*w == kStackPaint) ++w;
  return static_cast<unsigned long>(reinterpret_cast<uintptr_t>(&__stack) -
                                    reinterpret_cast<uintptr_t>(w));
}
#endif
alignas(4) static uint8_t g_region[TMT_REGION_MAX_BYTES];
#ifndef TMT_STEPS_MAX_BYTES
#define TMT_STEPS_MAX_BYTES (256 * 1024)
#endif
static uint8_t g_steps[TMT_STEPS_MAX_BYTES];

namespace {

long ReadFile(const char* path, uint8_t* buf, long cap) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return -1;
  long n = 0;
  size_t got;
  while (n < cap && (got = std::fread(buf + n, 1, static_cast<size_t>(cap - n), f)) > 0) {
    n += static_cast<long>(got);
  }
  std::fclose(f);
  return n;
}

bool WriteFile(const char* path, const uint8_t* buf, long n) {
  FILE* f = std::fopen(path, "wb");
  if (!f) return false;
  const bool ok = std::fwrite(buf, 1, static_cast<size_t>(n), f) == static_cast<size_t>(n);
  return std::fclose(f) == 0 && ok;
}

uint32_t U32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}

void StartCount() {
#if defined(TMT_COUNT_INSNS)
  TmtTimerStart();
#endif
}

unsigned long long Count() {
#if defined(TMT_COUNT_INSNS)
  return static_cast<unsigned long long>(TmtInstructions());
#else
  return 0;
#endif
}

#if defined(__arm__)
void Log(const char* s) { std::fputs(s, stdout); }
#endif

// Instructions per operator type of one Invoke (enabled for the last training step when counting
// instructions): TFLM calls BeginEvent / EndEvent around every operator with its name.
class OpProfiler : public tflite::MicroProfilerInterface {
 public:
  void Enable(bool on) { on_ = on; }
  uint32_t BeginEvent(const char* tag) override {
    if (!on_ || depth_ >= kDepth) return kDepth;
    tags_[depth_] = tag;
    start_[depth_] = Count();
    return depth_++;
  }
  void EndEvent(uint32_t handle) override {
    if (!on_ || handle >= kDepth) return;
    const unsigned long long n = Count() - start_[handle];
    depth_ = handle;
    for (int i = 0; i < used_; ++i) {
      if (std::strcmp(ops_[i].name, tags_[handle]) == 0) {
        ops_[i].calls += 1;
        ops_[i].insns += n;
        return;
      }
    }
    if (used_ < kOps) ops_[used_++] = {tags_[handle], 1, n};
  }
  void Print() const {
    for (int i = 0; i < used_; ++i) {
      std::printf("op %s calls %lu insns %llu\n", ops_[i].name,
                  static_cast<unsigned long>(ops_[i].calls), ops_[i].insns);
    }
  }

 private:
  static constexpr uint32_t kDepth = 4;
  static constexpr int kOps = 48;
  struct Op {
    const char* name;
    unsigned long calls;
    unsigned long long insns;
  };
  bool on_ = false;
  uint32_t depth_ = 0;
  const char* tags_[kDepth] = {};
  unsigned long long start_[kDepth] = {};
  Op ops_[kOps] = {};
  int used_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
#if defined(__arm__)
  RegisterDebugLogCallback(Log);
#endif
  if (argc < 4) {
    std::printf("usage: tflm_train MODEL STEPS REGION [restore] [arena=N]\n");
    return 2;
  }
#if defined(TMT_EMBEDDED_MODEL)
  const uint8_t* model_data = TMT_EMBEDDED_MODEL;
#else
  if (ReadFile(argv[1], g_model, sizeof(g_model)) <= 0) {
    std::printf("cannot read model %s\n", argv[1]);
    return 3;
  }
  const uint8_t* model_data = g_model;
#endif
  const bool arena_only = std::strcmp(argv[2], "-") == 0;
  const long steps_len = arena_only ? 12 : ReadFile(argv[2], g_steps, sizeof(g_steps));
  if (arena_only) std::memcpy(g_steps, "TMTS\0\0\0\0\0\0\0\0", 12);
  if (steps_len < 12 || std::memcmp(g_steps, "TMTS", 4) != 0) {
    std::printf("cannot read steps %s\n", argv[2]);
    return 3;
  }
  const uint32_t n_steps = U32(g_steps + 4);
  const uint32_t n_inputs = U32(g_steps + 8);
  const uint8_t* p = g_steps + 12 + 4 * n_inputs;

  const tflite::Model* model = tflite::GetModel(model_data);
  if (tfmicro_train::CheckModel(model) != kTfLiteOk) return 4;
  const int32_t stream_bytes = tfmicro_train::StreamedInputBytes(model);
  const uint32_t ext = stream_bytes > 0 ? 1 : 0;  // the streamed image: step input 0
  static tfmicro_train::CheckpointVariables vars;
  if (vars.Init(model) != kTfLiteOk) return 4;
  static tflite::MicroMutableOpResolver<tfmicro_train::kNumTrainingBuiltins +
                                        tfmicro_train::kNumTrainingOps>
      resolver;
  if (tfmicro_train::AddTrainingBuiltins(resolver) != kTfLiteOk ||
      tfmicro_train::RegisterTrainingOps(resolver, &vars) != kTfLiteOk) {
    return 4;
  }
  static OpProfiler profiler;
  size_t arena_bytes = sizeof(g_arena);
  bool restore = false;
  for (int i = 4; i < argc; ++i) {
    if (std::strcmp(argv[i], "restore") == 0) {
      restore = true;
    } else if (std::strncmp(argv[i], "arena=", 6) == 0) {
      const long n = std::strtol(argv[i] + 6, nullptr, 10);
      if (n <= 0 || static_cast<size_t>(n) > sizeof(g_arena)) {
        std::printf("%s: must be 1..%lu\n", argv[i], static_cast<unsigned long>(sizeof(g_arena)));
        return 1;
      }
      arena_bytes = static_cast<size_t>(n);
    } else {
      std::printf("unknown argument '%s'\n", argv[i]);
      return 1;
    }
  }
#if defined(TMT_RECORD_ALLOCATIONS)
  static tflite::RecordingMicroInterpreter interpreter(model, resolver, g_arena, arena_bytes,
                                                       nullptr, &profiler);
#else
  static tflite::MicroInterpreter interpreter(model, resolver, g_arena, arena_bytes, nullptr,
                                              &profiler);
#endif
  static tfmicro_train::StreamedInput streamed;
  if (ext && tfmicro_train::SetStreamedInput(interpreter, &streamed) != kTfLiteOk) return 5;
  if (interpreter.AllocateTensors() != kTfLiteOk) return 5;
  std::printf("arena %lu\n", static_cast<unsigned long>(interpreter.arena_used_bytes()));
#if defined(TMT_RECORD_ALLOCATIONS)
  {
    using tflite::RecordedAllocationType;
    const struct {
      RecordedAllocationType type;
      const char* name;
    } kinds[] = {{RecordedAllocationType::kTfLiteEvalTensorData, "eval_tensors"},
                 {RecordedAllocationType::kPersistentTfLiteTensorData, "persistent_tensors"},
                 {RecordedAllocationType::kPersistentTfLiteTensorQuantizationData,
                  "persistent_quantization"},
                 {RecordedAllocationType::kPersistentBufferData, "persistent_buffers"},
                 {RecordedAllocationType::kTfLiteTensorVariableBufferData, "variable_buffers"},
                 {RecordedAllocationType::kNodeAndRegistrationArray, "nodes"},
                 {RecordedAllocationType::kOpData, "op_data"}};
    for (const auto& k : kinds) {
      const auto a = interpreter.GetMicroAllocator().GetRecordedAllocation(k.type);
      std::printf("alloc %s %lu %lu\n", k.name, static_cast<unsigned long>(a.used_bytes),
                  static_cast<unsigned long>(a.count));
    }
  }
#endif
  if (arena_only) {
    std::printf("done\n");
    return 0;
  }
  if (interpreter.inputs_size() + ext != n_inputs) {
    std::printf("the model has %u inputs (+%u streamed), the steps file %lu\n",
                static_cast<unsigned>(interpreter.inputs_size()), static_cast<unsigned>(ext),
                static_cast<unsigned long>(n_inputs));
    return 3;
  }
  for (uint32_t k = 0; k < n_inputs; ++k) {
    const uint32_t want =
        k < ext ? static_cast<uint32_t>(stream_bytes) : interpreter.input(k - ext)->bytes;
    if (want != U32(g_steps + 12 + 4 * k)) {
      std::printf("input %lu has %u bytes, the steps file %lu\n", static_cast<unsigned long>(k),
                  static_cast<unsigned>(want), static_cast<unsigned long>(U32(g_steps + 12 + 4 * k)));
      return 3;
    }
  }
  if (ext) {
    streamed.data = reinterpret_cast<const int8_t*>(n_steps > 0 ? p : model_data);
    streamed.bytes = stream_bytes;
  }
  // Two inference calls (lr = 0): the first runs TMT_INIT (and binds `vars`), the second is
  // the steady-state cost of a forward pass.
  unsigned long long insns = 0;
  for (int i = 0; i < 2; ++i) {
    // (inputs hold their values only until the operators after their last reader reuse the
    // memory: set before every Invoke)
    for (uint32_t k = ext; k < n_inputs; ++k) {
      std::memset(interpreter.input(k - ext)->data.raw, 0, interpreter.input(k - ext)->bytes);
    }
    StartCount();
    if (interpreter.Invoke() != kTfLiteOk) return 6;
    insns = Count();
  }
  std::printf("inference insns %llu\n", insns);
  if (!vars.bound()) {
    std::printf("variables not bound\n");
    return 7;
  }
  long region_len = ReadFile(argv[3], g_region, sizeof(g_region));
  if (region_len < 0) {
    region_len = static_cast<long>(2 * ((vars.slot_bytes() + 3u) & ~3u));
    std::memset(g_region, 0xFF, static_cast<size_t>(region_len));
  }
  const tfmicro_train::checkpoint::Storage storage =
      tfmicro_train::checkpoint::MemoryStorage(g_region, static_cast<uint32_t>(region_len));
  uint32_t seq = 0;
  int slot = -1;
  if (restore) {
    const auto st = vars.Restore(storage, &seq, &slot);
    std::printf("restore %d slot %d seq %lu\n", static_cast<int>(st), slot,
                static_cast<unsigned long>(seq));
  }
#if defined(__arm__)
  unsigned long stack_depth = 0;
  bool stack_overflow = false;
#endif
  for (uint32_t s = 0; s < n_steps; ++s) {
    for (uint32_t k = 0; k < n_inputs; ++k) {
      const uint32_t n = U32(g_steps + 12 + 4 * k);
      if (k < ext) {
        streamed.data = reinterpret_cast<const int8_t*>(p);  // in place, outside the arena
      } else {
        std::memcpy(interpreter.input(k - ext)->data.raw, p, n);
      }
      p += n;
    }
    profiler.Enable(s + 1 == n_steps);  // the last step, by operator type
#if defined(__arm__)
    volatile const uint32_t* painted = PaintStack();
#endif
    StartCount();
    const TfLiteStatus st = interpreter.Invoke();
    insns = Count();
#if defined(__arm__)
    const unsigned long depth = StackDepth(painted);
    if (depth == 0) {
      stack_overflow = true;
    } else if (depth > stack_depth) {
      stack_depth = depth;
    }
#endif
    profiler.Enable(false);
    float loss = 0.0f;
    if (interpreter.outputs_size() > 1) loss = interpreter.output(1)->data.f[0];
    uint32_t bits;
    std::memcpy(&bits, &loss, 4);
    std::printf("step %lu status %d loss %08lx insns %llu\n", static_cast<unsigned long>(s),
                static_cast<int>(st), static_cast<unsigned long>(bits), insns);
  }
#if defined(__arm__)
  if (stack_overflow) {
    std::printf("stack deeper than %lu bytes below main\n",
                static_cast<unsigned long>(4 * kStackPaintWords));
  } else if (n_steps > 0) {
    std::printf("stack %lu\n", stack_depth);
  }
#endif
#if defined(TMT_COUNT_INSNS)
  profiler.Print();
#endif
  seq = 0;
  slot = -1;
  StartCount();
  const auto st = vars.Save(storage, &seq, &slot);
  insns = Count();
  std::printf("save %d slot %d seq %lu insns %llu\n", static_cast<int>(st), slot,
              static_cast<unsigned long>(seq), insns);
  if (!WriteFile(argv[3], g_region, region_len)) return 8;
  std::printf("done\n");
  return 0;
}
