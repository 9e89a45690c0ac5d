// Builds safetensors files: for tests (including deliberately corrupt files) and small tools.
// Not meant for writing multi-gigabyte checkpoints: the whole file is assembled in memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "models/dtype.h"

namespace mesa {

class SafetensorsWriter {
 public:
  // Adds a tensor whose little-endian element bytes are `bytes`. Nothing is checked, so a test
  // can write a shape that disagrees with the byte count; a second Add of the same name replaces
  // the first. A tensor may not be named "__metadata__" (that key holds the metadata).
  void Add(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<uint8_t> bytes);

  // Conveniences that encode float values: F32 as is; BF16 and F16 rounded to nearest even
  // (F16 overflows to +-inf).
  void AddFloat32(std::string name, std::vector<int64_t> shape, absl::Span<const float> values);
  void AddBf16(std::string name, std::vector<int64_t> shape, absl::Span<const float> values);
  void AddFloat16(std::string name, std::vector<int64_t> shape, absl::Span<const float> values);
  // Stores raw 16-bit patterns (bf16 or fp16 per `dtype`), for exact special values.
  void AddBits16(std::string name, DType dtype, std::vector<int64_t> shape,
                 absl::Span<const uint16_t> bits);

  // An entry of "__metadata__"; a second call with the same key replaces the value.
  void SetMetadata(std::string key, std::string value);

  // The file: length prefix, header JSON padded with spaces to a multiple of 8 bytes (so the
  // data section is 8-byte aligned), then the tensors' bytes in name order, contiguous.
  // Names or metadata that are not valid UTF-8 are written with U+FFFD in place of the bad
  // bytes (JSON cannot carry them); use RawFile() to write such a header.
  std::vector<uint8_t> Serialize() const;

  // Writes Serialize() to `path` through a temporary file in the same directory and a rename,
  // so readers never see a half-written checkpoint. Errors name the path and errno text.
  absl::Status WriteFile(const std::filesystem::path& path) const;

  // A file made of the 8-byte little-endian length of `header_json`, `header_json` unchanged
  // (no padding, no checks), then `data`: for hand-crafting malformed files.
  static std::vector<uint8_t> RawFile(std::string_view header_json,
                                      absl::Span<const uint8_t> data = {});

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::map<std::string, Entry> tensors_;  // sorted by name, as the file stores them
  std::map<std::string, std::string> metadata_;
};

}  // namespace mesa
