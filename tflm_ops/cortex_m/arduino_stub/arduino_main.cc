// main() of a sketch built as a plain program (tests): TFLM log to stdout, setup(), one loop().
#include "Arduino.h"

#if defined(__arm__)
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
static void Log(const char* s) { std::fputs(s, stdout); }
#endif

StubSerial Serial;

int main() {
#if defined(__arm__)
  RegisterDebugLogCallback(Log);
#endif
  setup();
  loop();
  std::fflush(stdout);
  return 0;
}
