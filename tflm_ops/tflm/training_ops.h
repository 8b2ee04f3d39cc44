// TFLite Micro kernels of the TMT_* training ops (docs/contract.md).
//
//   #include "tflm_ops/tflm/training_ops.h"
//   tflite::MicroMutableOpResolver<kMyBuiltinOps + tfmicro_train::kNumTrainingOps> resolver;
//   ... resolver.AddConv2D(); ...
//   if (tfmicro_train::RegisterTrainingOps(resolver) != kTfLiteOk) { ... }
//
// Each op parses its flexbuffer custom options in Init, checks tensor types and
// shapes in Prepare (errors name the op and the tensor via MicroPrintf), and calls
// the portable core (tflm_ops/core/) in Eval. Learning-rate gate: lr == 0 makes
// every op return at once (the loss ops write loss 0 and gradient scale 0); the loss
// ops fail on lr < 0 or NaN. The stochastic-rounding counter is the training-step
// counter in the artifact's `tmt/state` variable tensor: the loss op advances it after
// validating its inputs, the update ops read it. TMT_INIT fills the trainable variable
// tensors from their constant initial values on the first Invoke.
//
// Optional custom option on the ops with a dyn-quantized output (GRAD_ADD, AVGPOOL_GRAD,
// MAXPOOL_GRAD, CONV/DW_INPUT_GRAD): `use_scratch` (int, default 0). 0 computes every
// accumulator twice and needs no memory; 1 requests an int64 arena scratch buffer of the
// output's element count and computes once. Results are identical.
#ifndef TFLM_OPS_TFLM_TRAINING_OPS_H_
#define TFLM_OPS_TFLM_TRAINING_OPS_H_

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_common.h"

namespace tfmicro_train {

TFLMRegistration Register_TMT_INIT();
TFLMRegistration Register_TMT_SOFTMAX_CE_GRAD();
TFLMRegistration Register_TMT_MSE_GRAD();
TFLMRegistration Register_TMT_ACT_GRAD();
TFLMRegistration Register_TMT_GRAD_ADD();
TFLMRegistration Register_TMT_MEAN_GRAD();
TFLMRegistration Register_TMT_PAD_GRAD();
TFLMRegistration Register_TMT_RESHAPE_GRAD();
TFLMRegistration Register_TMT_AVGPOOL_GRAD();
TFLMRegistration Register_TMT_MAXPOOL_GRAD();
TFLMRegistration Register_TMT_CONV_INPUT_GRAD();
TFLMRegistration Register_TMT_DW_INPUT_GRAD();
TFLMRegistration Register_TMT_CONV_WEIGHT_UPDATE();
TFLMRegistration Register_TMT_DW_WEIGHT_UPDATE();
TFLMRegistration Register_TMT_BIAS_UPDATE();

struct TrainingOpEntry {
  const char* name;  // the custom op name, "TMT_..."
  TFLMRegistration (*registration)();
};

// Number of TMT_* ops: reserve that many slots in the MicroMutableOpResolver.
constexpr unsigned int kNumTrainingOps = 15;

// All TMT_* ops (kNumTrainingOps entries).
const TrainingOpEntry* TrainingOps();

// Adds every TMT_* op to a tflite::MicroMutableOpResolver<N> (by reference or pointer).
template <typename Resolver>
TfLiteStatus RegisterTrainingOps(Resolver& resolver) {
  const TrainingOpEntry* ops = TrainingOps();
  for (unsigned int i = 0; i < kNumTrainingOps; ++i) {
    const TFLMRegistration r = ops[i].registration();  // AddCustom copies it
    const TfLiteStatus s = resolver.AddCustom(ops[i].name, &r);
    if (s != kTfLiteOk) return s;
  }
  return kTfLiteOk;
}

template <typename Resolver>
TfLiteStatus RegisterTrainingOps(Resolver* resolver) {
  return RegisterTrainingOps(*resolver);
}

}  // namespace tfmicro_train

#endif  // TFLM_OPS_TFLM_TRAINING_OPS_H_
