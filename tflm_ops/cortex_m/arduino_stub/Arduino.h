// A minimal Arduino core for building sketches as plain C++ programs (tests only): Serial
// prints to stdout (semihosting under QEMU), setup() and loop() are called by arduino_main.cc.
#ifndef TFLM_OPS_CORTEX_M_ARDUINO_STUB_ARDUINO_H_
#define TFLM_OPS_CORTEX_M_ARDUINO_STUB_ARDUINO_H_

#include <cstdint>
#include <cstdio>
#include <cstring>

class StubSerial {
 public:
  void begin(unsigned long) {}
  explicit operator bool() const { return true; }
  void print(const char* s) { std::fputs(s, stdout); }
  void print(char c) { std::fputc(c, stdout); }
  void print(int v) { std::printf("%d", v); }
  void print(unsigned v) { std::printf("%u", v); }
  void print(long v) { std::printf("%ld", v); }
  void print(unsigned long v) { std::printf("%lu", v); }
  void print(double v, int digits = 2) { std::printf("%.*f", digits, v); }
  template <typename T>
  void println(T v) {
    print(v);
    std::fputc('\n', stdout);
  }
  void println(double v, int digits) {
    print(v, digits);
    std::fputc('\n', stdout);
  }
  void println() { std::fputc('\n', stdout); }
};

extern StubSerial Serial;

void setup();
void loop();

#endif  // TFLM_OPS_CORTEX_M_ARDUINO_STUB_ARDUINO_H_
