// Finds FlexBuffers in either layout of TFLite Micro:
//  * the Arduino library (tflite-micro-arduino-examples): src/third_party/flatbuffers/include/...
//  * a tflite-micro checkout: tensorflow/lite/micro/tools/make/downloads/flatbuffers/include
//    on the include path (the next "flatbuffers/flexbuffers.h" after this one).
#ifndef TFMICROTRAIN_FLEXBUFFERS_SHIM_H_
#define TFMICROTRAIN_FLEXBUFFERS_SHIM_H_

#if defined(__has_include) && __has_include("third_party/flatbuffers/include/flatbuffers/flexbuffers.h")
#include "third_party/flatbuffers/include/flatbuffers/flexbuffers.h"
#else
#include_next <flatbuffers/flexbuffers.h>
#endif

#endif  // TFMICROTRAIN_FLEXBUFFERS_SHIM_H_
