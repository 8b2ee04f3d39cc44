// train_driver: runs training steps of a tfmicro_train artifact in TFLite Micro.
//
//   train_driver MODEL.tflite STEPS.bin VARIABLES_OUT.bin [--arena BYTES] [--plain]
//                [--no-external-context] [--stream-fault STEP:bytes|magic|null]
//
// MODEL.tflite  an artifact written by tfmicro_train.convert(...).save()
// STEPS.bin     the input tensors of every step (format below)
// VARIABLES_OUT every variable tensor (is_variable: trainable parameters and tmt/state)
//               after the last step, by name (format below)
// --arena       tensor arena size in bytes (default 262144)
// --plain       a plain tflite::MicroInterpreter instead of the RecordingMicroInterpreter
//               (what an application uses; its arena_used_bytes() is the arena it needs)
// A streamed artifact (convert(stream_input=True), tfmicro_train::StreamedInputBytes > 0) has
// no image input: its steps still carry the image first, and the driver hands it to the model
// through a tfmicro_train::StreamedInput (TFLM's external context) pointing at the step's bytes,
// outside the arena. It prints "streamed input: <bytes> bytes outside the arena".
// --no-external-context  (streamed artifact) do not set the StreamedInput (AllocateTensors fails)
// --stream-fault K:KIND  (streamed artifact) step K hands over a bad StreamedInput: `bytes` one
//               less than the image, a wrong `magic`, or null `data` (Invoke must fail)
//
// What it does: tfmicro_train::CheckModel, a resolver with AddTrainingBuiltins +
// RegisterTrainingOps (no resource variables), a tflite::RecordingMicroInterpreter,
// AllocateTensors, then one Invoke() per step. It prints (stdout):
//   model: <operators> operators, <tensors> tensors, <variables> variable tensors (<bytes> bytes)
//   arena: used <total> bytes (head <head>, tail <tail>) of <size>; variable buffers <v> bytes;
//          recording overhead <r> bytes          (--plain: arena: used <total> bytes of <size>)
//   step <k> ok loss 0x<float bits> <loss> out0 <hex bytes of output 0> [out2 <hex>]
//                                                       (out2: a third output, the features of
//                                                        convert(feature_cache=True))
//   step <k> failed (Invoke); variables unchanged        (or: variables CHANGED: names)
//   step <k> rejected: input <i> '<name>' ...            (input of the wrong type / size)
//   reset: ok ...                                       (Reset() + one lr = 0 invoke restore
//                                                        the initial values, via TMT_INIT)
// TFLM's own messages (MicroPrintf) go to stderr. Exit status: 0 when the model loaded, every
// step was run or rejected, no failed step changed a variable and the reset check passed;
// 2 usage / file errors; 3 CheckModel rejected the model; 4 AllocateTensors failed;
// 5 other inconsistencies (a failed step changed variables, reset check failed, ...).
//
// STEPS.bin (little endian):  "TMTI" u32 version=1 u32 steps u32 inputs_per_step, then per
// step and input: i32 TfLiteType, u32 byte count, the bytes.
// VARIABLES_OUT (little endian): "TMTV" u32 count, then per tensor: u32 name length, name,
// i32 TfLiteType, u32 byte count, the bytes.
//
// The driver reads the variable tensors without preserve_all_tensors (which would change
// the memory planner): it wraps TMT_INIT's Eval, whose inputs are the state tensor and
// every (initial value, variable) pair, and keeps their TfLiteEvalTensor pointers (stable:
// TFLM allocates variable tensors in the persistent part of the arena).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_allocator.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/recording_micro_allocator.h"
#include "tensorflow/lite/micro/recording_micro_interpreter.h"
#include "tensorflow/lite/micro/arena_allocator/recording_single_arena_buffer_allocator.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tflm_ops/tflm/training_ops.h"

namespace {

constexpr int32_t kStateMagic = 0x544D5431;  // "TMT1", docs/contract.md (TMT_INIT)

// ------------------------------------------------------------------ TMT_INIT capture

struct InitCapture {
  TFLMRegistration real = {};
  bool captured = false;
  std::vector<int> index;                      // tensor index: state, then each variable
  std::vector<TfLiteEvalTensor*> var;          // same order
  std::vector<const TfLiteEvalTensor*> init;   // its initial value (nullptr for the state)
};
InitCapture g_init;

TfLiteStatus CapturingInitEval(TfLiteContext* context, TfLiteNode* node) {
  if (!g_init.captured && node->inputs->size >= 1) {
    g_init.index.push_back(node->inputs->data[0]);
    g_init.var.push_back(tflite::micro::GetMutableEvalInput(context, node, 0));
    g_init.init.push_back(nullptr);
    for (int i = 1; i + 1 < node->inputs->size; i += 2) {
      g_init.index.push_back(node->inputs->data[i + 1]);
      g_init.var.push_back(tflite::micro::GetMutableEvalInput(context, node, i + 1));
      g_init.init.push_back(tflite::micro::GetEvalInput(context, node, i));
    }
    g_init.captured = true;
  }
  return g_init.real.invoke(context, node);
}

size_t Bytes(const TfLiteEvalTensor* t) {
  size_t n = 0;
  if (tflite::TfLiteEvalTensorByteLength(t, &n) != kTfLiteOk) return 0;
  return n;
}

using Snapshot = std::vector<std::vector<uint8_t>>;

Snapshot TakeSnapshot() {
  Snapshot s;
  for (const TfLiteEvalTensor* t : g_init.var) {
    const uint8_t* p = static_cast<const uint8_t*>(t->data.data);
    s.emplace_back(p, p + Bytes(t));
  }
  return s;
}

// ------------------------------------------------------------------ files

bool ReadFile(const char* path, std::vector<uint8_t>* out) {
  FILE* f = std::fopen(path, "rb");
  if (!f) return false;
  uint8_t buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out->insert(out->end(), buf, buf + n);
  std::fclose(f);
  return true;
}

struct Reader {
  const std::vector<uint8_t>& d;
  size_t pos = 0;
  bool ok = true;
  bool Take(void* dst, size_t n) {
    if (!ok || pos + n > d.size()) return ok = false;
    std::memcpy(dst, d.data() + pos, n);
    pos += n;
    return true;
  }
  uint32_t U32() {
    uint32_t v = 0;
    Take(&v, 4);
    return v;
  }
};

struct StepInput {
  int32_t type;
  std::vector<uint8_t> bytes;
};

const char* TypeName(int32_t t) { return TfLiteTypeGetName(static_cast<TfLiteType>(t)); }

std::string TensorName(const tflite::SubGraph* sg, int index) {
  const tflite::Tensor* t = sg->tensors()->Get(index);
  return t->name() ? t->name()->str() : "tensor " + std::to_string(index);
}

std::string Hex(const void* data, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    s += kDigits[p[i] >> 4];
    s += kDigits[p[i] & 15];
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<const char*> pos;
  size_t arena_size = 262144;
  bool plain = false, external_context = true;
  long fault_step = -1;
  std::string fault_kind;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--arena") == 0 && i + 1 < argc) {
      arena_size = std::strtoul(argv[++i], nullptr, 10);
    } else if (std::strcmp(argv[i], "--plain") == 0) {
      plain = true;
    } else if (std::strcmp(argv[i], "--no-external-context") == 0) {
      external_context = false;
    } else if (std::strcmp(argv[i], "--stream-fault") == 0 && i + 1 < argc) {
      char* end = nullptr;
      fault_step = std::strtol(argv[++i], &end, 10);
      fault_kind = (end != nullptr && *end == ':') ? end + 1 : "";
      if (fault_kind != "bytes" && fault_kind != "magic" && fault_kind != "null") {
        std::fprintf(stderr, "--stream-fault STEP:bytes|magic|null, got %s\n", argv[i]);
        return 2;
      }
    } else {
      pos.push_back(argv[i]);
    }
  }
  if (pos.size() != 3) {
    std::fprintf(stderr,
                 "usage: %s MODEL.tflite STEPS.bin VARIABLES_OUT.bin [--arena BYTES] [--plain]\n",
                 argv[0]);
    return 2;
  }

  // --- model (16-byte aligned copy)
  std::vector<uint8_t> file;
  if (!ReadFile(pos[0], &file) || file.empty()) {
    std::fprintf(stderr, "cannot read model %s\n", pos[0]);
    return 2;
  }
  uint8_t* model_data = static_cast<uint8_t*>(std::aligned_alloc(16, (file.size() + 15) / 16 * 16));
  std::memcpy(model_data, file.data(), file.size());
  const tflite::Model* model = tflite::GetModel(model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    std::printf("model rejected: schema version %d, expected %d\n",
                static_cast<int>(model->version()), TFLITE_SCHEMA_VERSION);
    return 3;
  }
  if (tfmicro_train::CheckModel(model) != kTfLiteOk) {
    std::printf("model rejected by tfmicro_train::CheckModel (see stderr)\n");
    return 3;
  }
  const tflite::SubGraph* sg = model->subgraphs()->Get(0);
  // a streamed input: the image, the first input of every step, stays outside the arena
  const int32_t stream_bytes = tfmicro_train::StreamedInputBytes(model);
  const uint32_t ext = stream_bytes > 0 ? 1 : 0;  // step inputs before the model's inputs

  // --- steps
  std::vector<uint8_t> steps_file;
  if (!ReadFile(pos[1], &steps_file)) {
    std::fprintf(stderr, "cannot read %s\n", pos[1]);
    return 2;
  }
  Reader rd{steps_file};
  char magic[4] = {};
  rd.Take(magic, 4);
  const uint32_t version = rd.U32(), n_steps = rd.U32(), n_inputs = rd.U32();
  if (!rd.ok || std::memcmp(magic, "TMTI", 4) != 0 || version != 1) {
    std::fprintf(stderr, "%s is not a version 1 TMTI steps file\n", pos[1]);
    return 2;
  }
  std::vector<std::vector<StepInput>> steps(n_steps, std::vector<StepInput>(n_inputs));
  for (auto& step : steps) {
    for (auto& in : step) {
      rd.Take(&in.type, 4);
      in.bytes.resize(rd.U32());
      rd.Take(in.bytes.data(), in.bytes.size());
    }
  }
  if (!rd.ok || rd.pos != steps_file.size()) {
    std::fprintf(stderr, "%s: truncated or trailing bytes\n", pos[1]);
    return 2;
  }

  // --- resolver: builtins + TMT_* ops, with TMT_INIT wrapped to find the variable tensors
  static tflite::MicroMutableOpResolver<tfmicro_train::kNumTrainingBuiltins +
                                        tfmicro_train::kNumTrainingOps>
      resolver;
  if (tfmicro_train::AddTrainingBuiltins(resolver) != kTfLiteOk) {
    std::fprintf(stderr, "AddTrainingBuiltins failed\n");
    return 5;
  }
  const tfmicro_train::TrainingOpEntry* ops = tfmicro_train::TrainingOps();
  for (unsigned int i = 0; i < tfmicro_train::kNumTrainingOps; ++i) {
    TFLMRegistration r = ops[i].registration();
    if (std::strcmp(ops[i].name, "TMT_INIT") == 0) {
      g_init.real = r;
      r.invoke = CapturingInitEval;
    }
    if (resolver.AddCustom(ops[i].name, &r) != kTfLiteOk) {
      std::fprintf(stderr, "AddCustom(%s) failed\n", ops[i].name);
      return 5;
    }
  }

  // --- interpreter (no resource variables: the artifact has none)
  uint8_t* arena = static_cast<uint8_t*>(std::aligned_alloc(16, (arena_size + 15) / 16 * 16));
  tflite::RecordingMicroInterpreter* recording = nullptr;
  tflite::MicroInterpreter* interp;
  if (plain) {
    interp = new tflite::MicroInterpreter(model, resolver, arena, arena_size);
  } else {
    interp = recording = new tflite::RecordingMicroInterpreter(model, resolver, arena, arena_size);
  }
  tflite::MicroInterpreter& interpreter = *interp;
  static tfmicro_train::StreamedInput streamed;
  // a step's image (its first input) handed over in place, outside the arena
  auto hand_over = [](const StepInput& image) {
    streamed = tfmicro_train::StreamedInput();
    streamed.data = reinterpret_cast<const int8_t*>(image.bytes.data());
    streamed.bytes = static_cast<int32_t>(image.bytes.size());
  };
  if (ext && external_context &&
      tfmicro_train::SetStreamedInput(interpreter, &streamed) != kTfLiteOk) {
    std::printf("SetStreamedInput failed (see stderr)\n");
    return 5;
  }
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    std::printf("AllocateTensors() failed with a %zu-byte arena (see stderr)\n", arena_size);
    return 4;
  }
  size_t n_variables = 0, variable_bytes = 0;
  for (unsigned int i = 0; i < sg->tensors()->size(); ++i) {
    const tflite::Tensor* t = sg->tensors()->Get(i);
    if (!t->is_variable()) continue;
    ++n_variables;
    size_t bytes = 0, type_size = 0;
    if (tflite::BytesRequiredForTensor(*t, &bytes, &type_size) != kTfLiteOk) {
      std::printf("variable tensor %s has an unsupported type\n", TensorName(sg, i).c_str());
      return 4;
    }
    variable_bytes += bytes;
  }
  std::printf("model: %d operators, %d tensors, %zu variable tensors (%zu bytes)\n",
              static_cast<int>(sg->operators()->size()), static_cast<int>(sg->tensors()->size()),
              n_variables, variable_bytes);
  if (recording != nullptr) {
    const tflite::RecordingMicroAllocator& rec = recording->GetMicroAllocator();
    const auto* mem = rec.GetSimpleMemoryAllocator();
    const size_t recording_overhead = tflite::RecordingMicroAllocator::GetDefaultTailUsage() -
                                      tflite::MicroAllocator::GetDefaultTailUsage(false);
    std::printf(
        "arena: used %zu bytes (head %zu, tail %zu) of %zu; variable buffers %zu bytes; "
        "recording overhead %zu bytes\n",
        interpreter.arena_used_bytes(), mem->GetNonPersistentUsedBytes(),
        mem->GetPersistentUsedBytes(), arena_size,
        rec.GetRecordedAllocation(tflite::RecordedAllocationType::kTfLiteTensorVariableBufferData)
            .used_bytes,
        recording_overhead);
  } else {
    std::printf("arena: used %zu bytes of %zu (MicroInterpreter)\n", interpreter.arena_used_bytes(),
                arena_size);
  }
  if (ext) std::printf("streamed input: %d bytes outside the arena\n", static_cast<int>(stream_bytes));
  std::fflush(stdout);
  if (interpreter.inputs_size() + ext != n_inputs) {
    std::printf("the model has %zu inputs%s, %s gives %u per step\n", interpreter.inputs_size(),
                ext ? " and a streamed image" : "", pos[1], n_inputs);
    return 2;
  }
  if (n_inputs == 0) {
    std::printf("%s gives no inputs per step\n", pos[1]);
    return 2;
  }

  // --- steps
  int exit_code = 0;
  int first_good_step = -1;
  for (uint32_t k = 0; k < n_steps; ++k) {
    bool ok = true;
    const StepInput& image = steps[k][0];  // (n_inputs >= 1: checked above)
    if (ext && (image.type != kTfLiteInt8 ||
                image.bytes.size() != static_cast<size_t>(stream_bytes))) {
      std::printf("step %u rejected: the streamed image must be %s with %d bytes, got %s with %zu "
                  "bytes\n",
                  k, TypeName(kTfLiteInt8), static_cast<int>(stream_bytes), TypeName(image.type),
                  image.bytes.size());
      ok = false;
    }
    for (uint32_t i = ext; i < n_inputs && ok; ++i) {
      TfLiteTensor* t = interpreter.input(i - ext);
      const StepInput& in = steps[k][i];
      if (in.type != t->type || in.bytes.size() != t->bytes) {
        std::printf("step %u rejected: input %u '%s' must be %s with %zu bytes, got %s with %zu "
                    "bytes\n",
                    k, i, TensorName(sg, sg->inputs()->Get(i - ext)).c_str(), TypeName(t->type),
                    t->bytes, TypeName(in.type), in.bytes.size());
        ok = false;
      }
    }
    if (!ok) continue;
    for (uint32_t i = ext; i < n_inputs; ++i) {
      std::memcpy(interpreter.input(i - ext)->data.raw, steps[k][i].bytes.data(),
                  steps[k][i].bytes.size());
    }
    if (ext) {  // the step's bytes in place: no copy into the arena
      hand_over(image);
      if (static_cast<long>(k) == fault_step) {
        if (fault_kind == "bytes") streamed.bytes -= 1;
        if (fault_kind == "magic") streamed.magic = 0;
        if (fault_kind == "null") streamed.data = nullptr;
      }
    }
    const bool had_vars = g_init.captured;
    const Snapshot before = had_vars ? TakeSnapshot() : Snapshot();
    if (interpreter.Invoke() != kTfLiteOk) {
      std::string changed;
      if (had_vars) {
        const Snapshot after = TakeSnapshot();
        for (size_t v = 0; v < after.size(); ++v) {
          if (after[v] != before[v]) changed += " " + TensorName(sg, g_init.index[v]);
        }
      }
      if (!had_vars) {
        std::printf("step %u failed (Invoke); first invoke, no variables to compare\n", k);
      } else if (changed.empty()) {
        std::printf("step %u failed (Invoke); variables unchanged\n", k);
      } else {
        std::printf("step %u failed (Invoke); variables CHANGED:%s\n", k, changed.c_str());
        exit_code = 5;
      }
      std::fflush(stdout);
      continue;
    }
    if (first_good_step < 0) first_good_step = static_cast<int>(k);
    const TfLiteTensor* loss = interpreter.output(1);
    const TfLiteTensor* out0 = interpreter.output(0);
    float l = 0.0f;
    if (loss->type == kTfLiteFloat32 && loss->bytes == 4) std::memcpy(&l, loss->data.raw, 4);
    uint32_t bits;
    std::memcpy(&bits, &l, 4);
    // (an artifact with a feature cache has a third output: the frozen prefix's features)
    const std::string out2 = interpreter.outputs_size() > 2
                                 ? " out2 " + Hex(interpreter.output(2)->data.raw,
                                                  interpreter.output(2)->bytes)
                                 : std::string();
    std::printf("step %u ok loss 0x%08x %.9g out0 %s%s\n", k, bits, static_cast<double>(l),
                Hex(out0->data.raw, out0->bytes).c_str(), out2.c_str());
    std::fflush(stdout);
  }

  // --- every variable tensor must be one TMT_INIT fills (state + trainable parameters)
  if (!g_init.captured) {
    std::printf("no step ran: no variables written\n");
    return exit_code ? exit_code : 5;
  }
  if (g_init.var.size() != n_variables) {
    std::printf("the model has %zu variable tensors, TMT_INIT fills %zu\n", n_variables,
                g_init.var.size());
    exit_code = 5;
  }
  FILE* f = std::fopen(pos[2], "wb");
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", pos[2]);
    return 2;
  }
  auto put_u32 = [&](uint32_t v) { std::fwrite(&v, 4, 1, f); };
  std::fwrite("TMTV", 1, 4, f);
  put_u32(static_cast<uint32_t>(g_init.var.size()));
  for (size_t v = 0; v < g_init.var.size(); ++v) {
    const std::string name = TensorName(sg, g_init.index[v]);
    const TfLiteEvalTensor* t = g_init.var[v];
    put_u32(static_cast<uint32_t>(name.size()));
    std::fwrite(name.data(), 1, name.size(), f);
    const int32_t type = t->type;
    std::fwrite(&type, 4, 1, f);
    put_u32(static_cast<uint32_t>(Bytes(t)));
    std::fwrite(t->data.data, 1, Bytes(t), f);
  }
  std::fclose(f);

  // --- Reset(): ResetVariableTensors() zeroes the state, so the next invoke (an inference
  // call, lr = 0) restores every trainable parameter from its initial value.
  int lr_input = -1;
  for (uint32_t i = 0; i < n_inputs - ext; ++i) {
    const TfLiteTensor* t = interpreter.input(i);
    if (t->type == kTfLiteFloat32 && t->bytes == 4) lr_input = static_cast<int>(i);
  }
  if (first_good_step < 0 || lr_input < 0) {
    std::printf("reset: not checked (no successful step or no learning-rate input)\n");
    return exit_code;
  }
  if (interpreter.Reset() != kTfLiteOk) {
    std::printf("reset: FAILED: Reset() returned an error\n");
    return 5;
  }
  const int32_t* state = tflite::micro::GetTensorData<int32_t>(g_init.var[0]);
  const bool zeroed = state[0] == 0 && state[1] == 0;
  for (uint32_t i = ext; i < n_inputs; ++i) {
    const auto& b = steps[first_good_step][i].bytes;
    std::memcpy(interpreter.input(i - ext)->data.raw, b.data(), b.size());
  }
  if (ext) hand_over(steps[first_good_step][0]);
  const float zero = 0.0f;
  std::memcpy(interpreter.input(lr_input)->data.raw, &zero, 4);
  const TfLiteStatus st = interpreter.Invoke();
  std::string wrong;
  for (size_t v = 1; v < g_init.var.size(); ++v) {
    const size_t n = Bytes(g_init.var[v]);
    if (n != Bytes(g_init.init[v]) ||
        std::memcmp(g_init.var[v]->data.data, g_init.init[v]->data.data, n) != 0) {
      wrong += " " + TensorName(sg, g_init.index[v]);
    }
  }
  if (zeroed && st == kTfLiteOk && wrong.empty() && state[0] == kStateMagic && state[1] == 0) {
    std::printf("reset: ok (state zeroed by Reset(); %zu parameter tensors restored by the next "
                "invoke; state = {TMT1, 0})\n",
                g_init.var.size() - 1);
  } else {
    std::printf("reset: FAILED (state zeroed %d, invoke %d, state {%d, %d}, not restored:%s)\n",
                zeroed, static_cast<int>(st), static_cast<int>(state[0]),
                static_cast<int>(state[1]), wrong.c_str());
    exit_code = 5;
  }
  return exit_code;
}
