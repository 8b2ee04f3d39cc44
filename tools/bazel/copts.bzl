"""Compiler flags shared by the tflm_ops targets."""

# Portable kernel cores and the TFLM glue: what a microcontroller build would use.
KERNEL_COPTS = [
    "-std=c++17",
    "-fno-exceptions",
    "-fno-rtti",
    "-ffp-contract=off",
    "-Wall",
    "-Wextra",
    "-Werror=return-type",
]

# Host-side tests (may use the heap, iostream, exceptions).
TEST_COPTS = [
    "-std=c++17",
    "-ffp-contract=off",
    "-Wall",
]
