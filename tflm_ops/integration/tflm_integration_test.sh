#!/usr/bin/env bash
# Bazel wrapper of tests/test_tflm_integration.py: runs it with the Bazel-built train_driver.
set -euo pipefail

driver="${TEST_SRCDIR}/${TEST_WORKSPACE}/tflm_ops/integration/train_driver"
if [[ ! -x "${driver}" ]]; then
  echo "train_driver not found at ${driver}" >&2
  exit 1
fi
# This script is a symlink into the source tree: the workspace root is two levels up.
root="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)"
test_file="${root}/tests/test_tflm_integration.py"
if [[ ! -f "${test_file}" ]]; then
  echo "cannot find ${test_file} (workspace root guessed as ${root})" >&2
  exit 1
fi
python="${TMT_PYTHON:-python3}"
export TMT_TRAIN_DRIVER="${driver}"
export TMPDIR="${TEST_TMPDIR}"
export PYTHONDONTWRITEBYTECODE=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
echo "python: $(command -v "${python}") ; driver: ${driver} ; tests: ${test_file}"
cd "${root}"
exec "${python}" -m pytest -q -s -p no:cacheprovider "${test_file}"
