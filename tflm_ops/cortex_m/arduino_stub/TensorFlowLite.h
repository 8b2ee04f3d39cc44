// Stand-in for the TFLite Micro Arduino library's umbrella header (tests build against a
// tflite-micro checkout, whose headers the sketch's other includes pull in directly).
#ifndef TFLM_OPS_CORTEX_M_ARDUINO_STUB_TENSORFLOWLITE_H_
#define TFLM_OPS_CORTEX_M_ARDUINO_STUB_TENSORFLOWLITE_H_
#endif  // TFLM_OPS_CORTEX_M_ARDUINO_STUB_TENSORFLOWLITE_H_
