// Element types of checkpoint tensors, named as the safetensors format spells them.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace mesa {

enum class DType {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2,
};

// Bytes per element.
size_t DTypeSize(DType dtype);

// The safetensors spelling: "BOOL", "U8", ..., "BF16", "F8_E4M3". A static NUL-terminated string
// (never null) rather than a string_view, because Debian's Abseil has its own absl::string_view
// that std::string_view does not convert to, and the name goes into absl::StrCat everywhere.
const char* DTypeName(DType dtype);

// Inverse of DTypeName. Case-sensitive, as the reference implementation is; nullopt for any
// other string.
std::optional<DType> ParseDType(std::string_view name);

}  // namespace mesa
