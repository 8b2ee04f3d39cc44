// TfMicroTrain: on-device training for TensorFlow Lite Micro (Arduino library entry header).
//
//   #include <TensorFlowLite.h>   // the TFLite Micro Arduino library
//   #include <TfMicroTrain.h>
//   #include "model_data.h"       // written by TrainingModel.export_c("model_data.h")
//
//   static tfmicro_train::CheckpointVariables vars;
//   static tflite::MicroMutableOpResolver<tfmicro_train::kNumTrainingBuiltins +
//                                         tfmicro_train::kNumTrainingOps> resolver;
//   const tflite::Model* model = tflite::GetModel(g_model);
//   tfmicro_train::CheckModel(model);               // TMT_* op names and versions
//   vars.Init(model);
//   tfmicro_train::AddTrainingBuiltins(resolver);   // or only the builtins the model uses
//   tfmicro_train::RegisterTrainingOps(resolver, &vars);
//   static tflite::MicroInterpreter interpreter(model, resolver, arena, sizeof(arena));
//   interpreter.AllocateTensors();
//   // inputs: 0 = int8 image, 1 = int32 label (or int8 target), 2 = float32 learning rate.
//   // lr > 0: one training step (forward, loss, backward, update in place); output 1 = loss.
//   // lr = 0: inference only (output 0 = int8 scores); the first Invoke binds `vars`.
//   auto storage = tfmicro_train::checkpoint::MemoryStorage(buf, size);  // or flash callbacks
//   vars.Save(storage);  vars.Restore(storage);
//
// See tflm_ops/tflm/training_ops.h, tflm_ops/checkpoint/checkpoint.h and tflm_checkpoint.h.
// The sources under tflm_ops/ are copies of the tfmicro-train repository's (kept identical by
// arduino/extras/make_library.py sync and checked by tests/test_codegen.py).
#ifndef TFMICROTRAIN_H_
#define TFMICROTRAIN_H_

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tflm_ops/checkpoint/checkpoint.h"
#include "tflm_ops/checkpoint/tflm_checkpoint.h"
#include "tflm_ops/tflm/training_ops.h"

#endif  // TFMICROTRAIN_H_
