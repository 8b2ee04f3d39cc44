// TFLite Micro kernels of the TMT_* training ops (docs/contract.md).
//
//   #include "tflm_ops/tflm/training_ops.h"
//   const tflite::Model* model = tflite::GetModel(artifact);
//   if (tfmicro_train::CheckModel(model) != kTfLiteOk) { ... }  // TMT_* op versions
//   tflite::MicroMutableOpResolver<kMyBuiltinOps + tfmicro_train::kNumTrainingOps> resolver;
//   ... resolver.AddConv2D(); ...   // or tfmicro_train::AddTrainingBuiltins(resolver)
//   if (tfmicro_train::RegisterTrainingOps(resolver) != kTfLiteOk) { ... }
//   tflite::MicroInterpreter interpreter(model, resolver, arena, arena_size);  // no resource
//   // variables: trainable parameters are plain variable tensors (is_variable)
//
// Inputs of a training artifact: [image int8, label int32 [1] (or target int8 for MSE),
// learning_rate float32 [1]]; outputs: [probabilities / prediction int8, loss float32 [1]].
// An artifact converted with stream_input=True has no image input (see StreamedInput below).
// A failed Invoke() (label out of range, lr < 0 or NaN) leaves every trainable parameter
// and the step counter unchanged: the loss op validates before any update op runs.
//
// Each op reads its flexbuffer custom options from the model (flash) in Prepare and again in
// each Eval, keeping no op data (only TMT_MSE_GRAD and an op asking for scratch keep 32
// bytes), checks tensor types and shapes in Prepare (errors name the op and the tensor via
// MicroPrintf), and calls the portable core (tflm_ops/core/) in Eval. Learning-rate gate: lr == 0 makes
// every op return at once (the loss ops write loss 0 and gradient scale 0); the loss
// ops fail on lr < 0 or NaN. The stochastic-rounding counter is the training-step
// counter in the artifact's `tmt/state` variable tensor: the loss op advances it after
// validating its inputs, the update ops read it. TMT_INIT fills the trainable variable
// tensors from their constant initial values on the first Invoke.
//
// fp32 backward (docs/contract.md, "fp32 backward"; convert(..., backward="fp32")): each
// gradient/update op dispatches on the type of its gradient tensor (input 0; output 0 for the
// loss ops), as TFLM's builtins dispatch on tensor type. A float32 gradient selects the variant
// of tflm_ops/core/training_ops_f32.h: the scale inputs keep their positions but must be absent
// (-1), the scale outputs are dropped (the loss ops output [grad, loss]), TMT_CONV/DW_INPUT_GRAD
// take `wscale` float32 [CO] instead of `wmul` and no `w_scale_max`, and nothing needs scratch.
//
// Optional custom option on the ops with a dyn-quantized output (GRAD_ADD, AVGPOOL_GRAD,
// MAXPOOL_GRAD, CONV/DW_INPUT_GRAD): `use_scratch` (int, default 0). 0 needs no memory (every
// accumulator computed twice; the input gradients: once, plus the few largest again); 1
// requests an int64 arena scratch buffer of the output's element count and computes once.
// Results are identical.
#ifndef TFLM_OPS_TFLM_TRAINING_OPS_H_
#define TFLM_OPS_TFLM_TRAINING_OPS_H_

#include <cstdint>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_common.h"

namespace tflite {
struct Model;
}  // namespace tflite

namespace tfmicro_train {

TFLMRegistration Register_TMT_INIT();
TFLMRegistration Register_TMT_FUSED_IRB();
TFLMRegistration Register_TMT_CONV();  // tflm_ops/tflm/conv_op.cc
TFLMRegistration Register_TMT_MEAN();  // tflm_ops/tflm/conv_op.cc
TFLMRegistration Register_TMT_SOFTMAX_CE_GRAD();
TFLMRegistration Register_TMT_MSE_GRAD();
TFLMRegistration Register_TMT_ACT_GRAD();
TFLMRegistration Register_TMT_MASK_PACK();
TFLMRegistration Register_TMT_MASK_GRAD();
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
constexpr unsigned int kNumTrainingOps = 20;

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

// The version of the TMT_* ops this build implements (OperatorCode.version in the artifact).
constexpr int kTrainingOpVersion = 1;

// Checks what TFLM's resolver does not: the resolver finds a custom op by name only and
// ignores OperatorCode.version, so an artifact written for other semantics of a TMT_* op
// would run silently. Returns kTfLiteError (and MicroPrintf's the operator code, its name
// and version) if a TMT_* op has a version other than kTrainingOpVersion or a name this
// build does not know, or if the model has no subgraph. Call it before building the
// interpreter.
TfLiteStatus CheckModel(const tflite::Model* model);

// The builtin ops the converter's artifacts may contain (the ops tfmicro_train's
// HostSimulator implements): CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MUL, PAD,
// PADV2, MEAN, AVERAGE_POOL_2D, MAX_POOL_2D, RESHAPE, SOFTMAX, LOGISTIC, QUANTIZE,
// DEQUANTIZE, CONCATENATION, RELU, RELU6. Each Add links the kernel in; to save flash,
// add only those your artifact uses instead (a Conv/DW/residual CNN classifier needs
// CONV_2D, DEPTHWISE_CONV_2D, ADD, MAX_POOL_2D or AVERAGE_POOL_2D (+ PAD), RESHAPE or
// MEAN, FULLY_CONNECTED, SOFTMAX).
constexpr unsigned int kNumTrainingBuiltins = 18;

template <typename Resolver>
TfLiteStatus AddTrainingBuiltins(Resolver& r) {
  const TfLiteStatus s[kNumTrainingBuiltins] = {
      r.AddConv2D(),         r.AddDepthwiseConv2D(), r.AddFullyConnected(), r.AddAdd(),
      r.AddMul(),            r.AddPad(),             r.AddPadV2(),          r.AddMean(),
      r.AddAveragePool2D(),  r.AddMaxPool2D(),       r.AddReshape(),        r.AddSoftmax(),
      r.AddLogistic(),       r.AddQuantize(),        r.AddDequantize(),     r.AddConcatenation(),
      r.AddRelu(),           r.AddRelu6(),
  };
  for (TfLiteStatus x : s) {
    if (x != kTfLiteOk) return x;
  }
  return kTfLiteOk;
}

template <typename Resolver>
TfLiteStatus AddTrainingBuiltins(Resolver* resolver) {
  return AddTrainingBuiltins(*resolver);
}

// Streamed input (convert(..., stream_input=True)): the int8 image is no tensor of the arena.
// The first TMT_FUSED_IRB (option x_external) reads it from memory the application owns
// (memory-mapped flash, external PSRAM, a camera driver's buffer), whose address it hands over
// through TFLM's external context, once, before AllocateTensors():
//
//   static tfmicro_train::StreamedInput image;   // must outlive the interpreter
//   tfmicro_train::SetStreamedInput(interpreter, &image);
//   interpreter.AllocateTensors();
//   image.data = sample; image.bytes = tfmicro_train::StreamedInputBytes(model);  // each step
//   // input(0): int32 label, input(1): float32 learning rate
//   interpreter.Invoke();
//
// TFLM keeps one external context per interpreter, set once: change `data` (and `bytes`)
// between invocations, not the pointer. Prepare fails when no StreamedInput is set (checked by
// its magic); Eval fails, writing nothing, when `bytes` is not the image's H * W * C or `data`
// is null. The image is read during the first operator of each Invoke only.
constexpr uint32_t kStreamedInputMagic = 0x544D5349;  // "TMSI"

struct StreamedInput {
  uint32_t magic = kStreamedInputMagic;
  const int8_t* data = nullptr;  // H * W * C int8 values, HWC order, the image's quantization
  int32_t bytes = 0;             // must equal StreamedInputBytes(model)
};

// Sets `input` as the interpreter's external context (a tflite::MicroInterpreter).
template <typename Interpreter>
TfLiteStatus SetStreamedInput(Interpreter& interpreter, StreamedInput* input) {
  return interpreter.SetMicroExternalContext(input);
}

// Bytes of the image an artifact streams (H * W * C of its TMT_FUSED_IRB with x_external), or 0
// when its image is an ordinary input tensor.
int32_t StreamedInputBytes(const tflite::Model* model);

}  // namespace tfmicro_train

#endif  // TFLM_OPS_TFLM_TRAINING_OPS_H_
