#include "models/dtype.h"

#include <array>

namespace mesa {
namespace {

struct DTypeEntry {
  DType dtype;
  const char* name;
  size_t size;
};

// Indexed by the enum's value; the static_asserts below keep the two in step.
constexpr std::array<DTypeEntry, 15> kDTypes = {{
    {DType::kBool, "BOOL", 1},
    {DType::kU8, "U8", 1},
    {DType::kI8, "I8", 1},
    {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},
    {DType::kF32, "F32", 4},
    {DType::kF64, "F64", 8},
    {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
}};

constexpr bool TableMatchesEnum() {
  for (size_t i = 0; i < kDTypes.size(); ++i) {
    if (static_cast<size_t>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableMatchesEnum(), "kDTypes must list the DType values in declaration order");
static_assert(static_cast<size_t>(DType::kF8E5M2) + 1 == kDTypes.size(),
              "a DType was added without a kDTypes entry");

const DTypeEntry* Lookup(DType dtype) {
  const auto index = static_cast<size_t>(dtype);
  // An out-of-range value can only come from a bad cast; answer it without reading past the
  // table.
  return index < kDTypes.size() ? &kDTypes[index] : nullptr;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  const DTypeEntry* entry = Lookup(dtype);
  return entry != nullptr ? entry->size : 0;
}

const char* DTypeName(DType dtype) {
  const DTypeEntry* entry = Lookup(dtype);
  return entry != nullptr ? entry->name : "INVALID";
}

std::optional<DType> ParseDType(std::string_view name) {
  for (const DTypeEntry& entry : kDTypes) {
    if (name == entry.name) return entry.dtype;
  }
  return std::nullopt;
}

}  // namespace mesa
