// Checkpoints of a training artifact running in a TFLite Micro MicroInterpreter.
//
//   static tfmicro_train::CheckpointVariables vars;
//   vars.Init(model);                                     // names / sizes from the flatbuffer
//   tflite::MicroMutableOpResolver<N> resolver;
//   tfmicro_train::AddTrainingBuiltins(resolver);
//   tfmicro_train::RegisterTrainingOps(resolver, &vars);  // instead of RegisterTrainingOps(resolver)
//   tflite::MicroInterpreter interpreter(model, resolver, arena, kArenaSize);
//   interpreter.AllocateTensors();
//   ... one Invoke() (an inference call, lr = 0, is enough) binds `vars` to the variable tensors ...
//   auto storage = tfmicro_train::checkpoint::MemoryStorage(buf, size);  // or flash callbacks
//   vars.Restore(storage);    // at boot: continue from the newest valid checkpoint, if any
//   ... training steps ...
//   vars.Save(storage);       // e.g. every N steps; power-safe (A/B slots)
//
// TFLM has no public accessor for variable tensors (MicroInterpreter::GetTensor needs
// preserve_all_tensors, which disables arena reuse), so the binding is done by TMT_INIT: every
// variable tensor of an artifact is an input of TMT_INIT, which runs first in every Invoke. The
// registration above wraps TMT_INIT's Eval to record the tensors' data pointers (variable tensors
// are persistent: the pointers stay valid for the interpreter's lifetime). One CheckpointVariables
// can be bound per process at a time (the last RegisterTrainingOps(resolver, &vars) wins).
#ifndef TFLM_OPS_CHECKPOINT_TFLM_CHECKPOINT_H_
#define TFLM_OPS_CHECKPOINT_TFLM_CHECKPOINT_H_

#include <cstdint>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_common.h"
#include "tflm_ops/checkpoint/checkpoint.h"
#include "tflm_ops/tflm/training_ops.h"

namespace tflite {
struct Model;
}  // namespace tflite

// Variable tensors a CheckpointVariables can hold (16 bytes of RAM each on a 32-bit MCU).
#ifndef TMT_CHECKPOINT_MAX_VARIABLES
#define TMT_CHECKPOINT_MAX_VARIABLES 128
#endif

namespace tfmicro_train {

class CheckpointVariables {
 public:
  static constexpr int kMaxVariables = TMT_CHECKPOINT_MAX_VARIABLES;

  // Reads the variable tensors of subgraph 0 (in tensor order): names and byte sizes.
  // kTfLiteError if the model has none, more than kMaxVariables, or an unsupported type.
  TfLiteStatus Init(const tflite::Model* model);

  int count() const { return count_; }
  // True once every variable's data pointer is known (after the first Invoke).
  bool bound() const;
  const checkpoint::VariableView* views() const { return views_; }
  uint32_t slot_bytes() const { return checkpoint::SlotBytes(views_, count_); }

  // kBadArgument if not bound yet; otherwise as checkpoint::Save / Restore.
  checkpoint::Status Save(const checkpoint::Storage& storage, uint32_t* sequence = nullptr,
                          int* slot = nullptr) const;
  checkpoint::Status Restore(const checkpoint::Storage& storage, uint32_t* sequence = nullptr,
                             int* slot = nullptr) const;

  // Used by the wrapped TMT_INIT: records the data pointer of tensor `tensor_index`.
  void Bind(int tensor_index, void* data);

 private:
  int count_ = 0;
  int tensor_index_[kMaxVariables] = {};
  checkpoint::VariableView views_[kMaxVariables] = {};
};

// TMT_INIT's registration with its Eval wrapped to bind `vars` (see above).
TFLMRegistration Register_TMT_INIT_Binding(CheckpointVariables* vars);

// RegisterTrainingOps(resolver), with TMT_INIT binding `vars`.
template <typename Resolver>
TfLiteStatus RegisterTrainingOps(Resolver& resolver, CheckpointVariables* vars) {
  const TrainingOpEntry* ops = TrainingOps();
  for (unsigned int i = 0; i < kNumTrainingOps; ++i) {
    const TFLMRegistration r = ops[i].registration == Register_TMT_INIT
                                   ? Register_TMT_INIT_Binding(vars)
                                   : ops[i].registration();
    const TfLiteStatus s = resolver.AddCustom(ops[i].name, &r);
    if (s != kTfLiteOk) return s;
  }
  return kTfLiteOk;
}

template <typename Resolver>
TfLiteStatus RegisterTrainingOps(Resolver* resolver, CheckpointVariables* vars) {
  return RegisterTrainingOps(*resolver, vars);
}

}  // namespace tfmicro_train

#endif  // TFLM_OPS_CHECKPOINT_TFLM_CHECKPOINT_H_
