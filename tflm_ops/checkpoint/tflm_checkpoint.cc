// Checkpoints of a training artifact in a TFLite Micro interpreter. See tflm_checkpoint.h.
#include "tflm_ops/checkpoint/tflm_checkpoint.h"

#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace tfmicro_train {
namespace {

CheckpointVariables* g_vars = nullptr;
TfLiteStatus (*g_init_eval)(TfLiteContext*, TfLiteNode*) = nullptr;

// TMT_INIT's Eval: bind every variable input of the node first, then initialise as usual.
TfLiteStatus BindingInitEval(TfLiteContext* context, TfLiteNode* node) {
  if (g_vars != nullptr && !g_vars->bound()) {
    for (int i = 0; i < node->inputs->size; ++i) {
      const int idx = node->inputs->data[i];
      if (idx < 0) continue;
      TfLiteEvalTensor* t = context->GetEvalTensor(context, idx);
      if (t != nullptr) g_vars->Bind(idx, t->data.data);
    }
  }
  return g_init_eval(context, node);
}

}  // namespace

TfLiteStatus CheckpointVariables::Init(const tflite::Model* model) {
  count_ = 0;
  if (model == nullptr || model->subgraphs() == nullptr || model->subgraphs()->size() == 0) {
    MicroPrintf("CheckpointVariables: model has no subgraph");
    return kTfLiteError;
  }
  const auto* tensors = model->subgraphs()->Get(0)->tensors();
  for (uint32_t i = 0; tensors != nullptr && i < tensors->size(); ++i) {
    const tflite::Tensor* t = tensors->Get(i);
    if (!t->is_variable()) continue;
    if (count_ == kMaxVariables) {
      MicroPrintf("CheckpointVariables: more than %d variable tensors", kMaxVariables);
      return kTfLiteError;
    }
    size_t bytes = 0, type_size = 0;
    if (tflite::BytesRequiredForTensor(*t, &bytes, &type_size) != kTfLiteOk) {
      MicroPrintf("CheckpointVariables: variable tensor %d has an unsupported type", i);
      return kTfLiteError;
    }
    tensor_index_[count_] = static_cast<int>(i);
    views_[count_] = {t->name() ? t->name()->c_str() : "", nullptr, static_cast<uint32_t>(bytes)};
    ++count_;
  }
  if (count_ == 0) {
    MicroPrintf("CheckpointVariables: the model has no variable tensors (not a training artifact?)");
    return kTfLiteError;
  }
  return kTfLiteOk;
}

bool CheckpointVariables::bound() const {
  if (count_ == 0) return false;
  for (int i = 0; i < count_; ++i) {
    if (views_[i].data == nullptr && views_[i].size != 0) return false;
  }
  return true;
}

void CheckpointVariables::Bind(int tensor_index, void* data) {
  for (int i = 0; i < count_; ++i) {
    if (tensor_index_[i] == tensor_index) views_[i].data = data;
  }
}

checkpoint::Status CheckpointVariables::Save(const checkpoint::Storage& storage,
                                             uint32_t* sequence, int* slot) const {
  if (!bound()) return checkpoint::Status::kBadArgument;
  return checkpoint::Save(views_, count_, storage, sequence, slot);
}

checkpoint::Status CheckpointVariables::Restore(const checkpoint::Storage& storage,
                                                uint32_t* sequence, int* slot) const {
  if (!bound()) return checkpoint::Status::kBadArgument;
  return checkpoint::Restore(views_, count_, storage, sequence, slot);
}

TFLMRegistration Register_TMT_INIT_Binding(CheckpointVariables* vars) {
  TFLMRegistration r = Register_TMT_INIT();
  g_vars = vars;
  g_init_eval = r.invoke;
  r.invoke = BindingInitEval;
  return r;
}

}  // namespace tfmicro_train
