// Minimal NumPy .npy reader/writer (version 1.0/2.0 headers, little-endian, C order) for the
// `logits` command and for test goldens.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mesa {

struct NpyArray {
  std::vector<int64_t> shape;
  std::string descr;             // "<f4", "<f2", "<i4", "<i8"
  std::vector<float> f32;        // filled for "<f4" and "<f2"
  std::vector<int64_t> ints;     // filled for "<i4" / "<i8"
  int64_t num_elements() const;
};

absl::Status WriteNpyFloat32(const std::filesystem::path& path, const float* data,
                             const std::vector<int64_t>& shape);
absl::StatusOr<NpyArray> ReadNpy(const std::filesystem::path& path);

}  // namespace mesa
