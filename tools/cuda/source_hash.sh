#!/usr/bin/env bash
# One hash over every source the GPU kernel tests are built from, so that device_check.sh can
# tell whether the carried prebuilt binary matches the tree it runs in. Run from the repo root.
set -euo pipefail
find base kernels tests/kernels -type f \( -name '*.h' -o -name '*.cc' -o -name '*.cu' \
     -o -name '*.cuh' -o -name 'CMakeLists.txt' \) -print0 | LC_ALL=C sort -z |
  xargs -0 sha256sum | sha256sum | cut -d' ' -f1
