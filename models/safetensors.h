// Reader of the safetensors checkpoint format: an 8-byte little-endian header length N, N bytes
// of UTF-8 JSON describing the tensors, then the data section the tensors' offsets point into.
//
// The whole header is validated before a SafetensorsFile is handed out, so code that reads
// weights can trust every TensorInfo: the dtype is known, the shape's byte size matches the
// offsets, and the offsets lie inside the data section. A bad file is an error value naming the
// file, the tensor or field, and what was expected against what was found; nothing in a file's
// contents can crash the parser.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "models/dtype.h"
#include "models/mapped_file.h"

namespace mesa {

struct SafetensorsLimits {
  uint64_t max_header_bytes = 100'000'000;  // same bound as the reference implementation
  int32_t max_tensors = 100'000;
  int32_t max_rank = 8;
};

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the data section
  uint64_t end = 0;

  // Product of the dims (1 for a scalar). Parse() guarantees it fits; for a hand-built
  // TensorInfo with a negative dim or an overflowing product it returns -1.
  int64_t num_elements() const;
  uint64_t num_bytes() const { return end - begin; }
};

class SafetensorsFile {
 public:
  // Validates the whole header before returning. `bytes` must outlive the object.
  // `display_name` (usually the file path) is put in every error message.
  static absl::StatusOr<SafetensorsFile> Parse(absl::Span<const uint8_t> bytes,
                                               std::string display_name,
                                               const SafetensorsLimits& limits = {});

  // mmaps the file (owned by the object) and parses it; errors name the path.
  static absl::StatusOr<SafetensorsFile> Open(const std::filesystem::path& path,
                                              const SafetensorsLimits& limits = {});

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& display_name() const { return display_name_; }

  // nullptr if absent. Binary search: tensors() is sorted by name.
  const TensorInfo* Find(std::string_view name) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // "__metadata__", string -> string; empty when the header has none.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's bytes (little-endian elements, no alignment promised). `info` should come from
  // this file; offsets that do not fit its data section give an empty span rather than a read
  // out of bounds.
  absl::Span<const uint8_t> Data(const TensorInfo& info) const;

  // Offset of the data section from the start of the file (8 + header length).
  uint64_t data_offset() const { return data_offset_; }

 private:
  SafetensorsFile() = default;

  std::optional<MappedFile> mapping_;  // set by Open(); Parse() borrows the caller's bytes
  absl::Span<const uint8_t> data_;     // the data section
  uint64_t data_offset_ = 0;
  std::string display_name_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Converts a BF16/F16/F32 tensor's data to float (exact for all three); any other dtype is an
// InvalidArgument error naming the tensor and dtype. out.size() must equal num_elements (else
// error).
absl::Status CopyTensorToFloat(const SafetensorsFile& file, const TensorInfo& info,
                               absl::Span<float> out);

// Same, to bf16 bits: BF16 copied as is, F16 and F32 rounded to nearest even.
absl::Status CopyTensorToBf16(const SafetensorsFile& file, const TensorInfo& info,
                              absl::Span<uint16_t> out);

}  // namespace mesa
