#include "models/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <tuple>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/half.h"
#include "base/status_macros.h"

namespace mesa {

// The format stores elements little-endian and Data() hands them out unconverted.
static_assert(std::endian::native == std::endian::little,
              "safetensors reader assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr std::string_view kMetadataKey = "__metadata__";
constexpr size_t kLengthPrefixBytes = 8;
// Names and values quoted in error messages are cut to this many bytes: a header may hold a
// 100 MB string, and a message only has to identify it.
constexpr size_t kMaxQuotedBytes = 200;

// 'text', with control characters escaped and long text shortened.
std::string Quote(absl::string_view text) {
  if (text.size() <= kMaxQuotedBytes) return absl::StrCat("'", absl::Utf8SafeCHexEscape(text), "'");
  return absl::StrCat("'", absl::Utf8SafeCHexEscape(text.substr(0, kMaxQuotedBytes)), "'... (",
                      text.size(), " bytes)");
}

std::string TensorLabel(absl::string_view name) { return absl::StrCat("tensor ", Quote(name)); }

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

std::string OffsetsString(uint64_t begin, uint64_t end) {
  return absl::StrCat("[", begin, ", ", end, "]");
}

// Offset of the first byte that does not begin a well-formed UTF-8 sequence (Unicode 15,
// table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF), or nullopt.
std::optional<size_t> FindInvalidUtf8(absl::Span<const uint8_t> s) {
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80;  // allowed range of the second byte
    uint8_t hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c == 0xE0) {
      len = 3;
      lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      len = 3;
    } else if (c == 0xED) {
      len = 3;
      hi = 0x9F;
    } else if (c == 0xF0) {
      len = 4;
      lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      len = 4;
    } else if (c == 0xF4) {
      len = 4;
      hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len || s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
    }
    i += len;
  }
  return std::nullopt;
}

// Builds the tensor list straight from nlohmann's SAX events instead of a json DOM, because:
//   * the DOM keeps the last of duplicate keys without a word, and duplicates must be errors;
//   * the first error stops the parse, so a hostile 100 MB header never becomes a DOM many
//     times that size;
//   * every value is checked where it appears, so messages name the tensor and field.
// The accepted structure is exactly {name: {dtype, shape, data_offsets}, __metadata__: {k: v}},
// never deeper than three levels, so the state is one enum rather than a stack.
class HeaderHandler final : public nlohmann::json_sax<Json> {
 public:
  explicit HeaderHandler(const SafetensorsLimits& limits) : limits_(limits) {}

  const std::string& error() const { return error_; }
  bool done() const { return where_ == Where::kDone; }
  std::vector<TensorInfo>& tensors() { return tensors_; }
  std::map<std::string, std::string>& metadata() { return metadata_; }

  bool null() override { return Unexpected("null"); }
  bool boolean(bool value) override { return Unexpected(value ? "true" : "false"); }

  bool number_integer(number_integer_t value) override {
    // nlohmann reports only numbers written with a '-' here; "-0" is the one that is not
    // negative.
    if (value >= 0) return number_unsigned(static_cast<number_unsigned_t>(value));
    return Unexpected(absl::StrCat("number ", value));
  }

  bool number_unsigned(number_unsigned_t value) override {
    if (where_ == Where::kShape) return AddDim(value);
    if (where_ == Where::kOffsets) return AddOffset(value);
    return Unexpected(absl::StrCat("number ", value));
  }

  bool number_float(number_float_t /*value*/, const string_t& literal) override {
    // Integers too large for uint64 arrive here too; the literal shows which it was.
    return Unexpected(absl::StrCat("number ", literal));
  }

  bool string(string_t& value) override {
    if (where_ == Where::kTensor && field_ == Field::kDtype) {
      std::optional<DType> dtype = ParseDType(value);
      if (!dtype.has_value()) {
        return Fail(absl::StrCat(TensorLabel(current_.name), ": unknown dtype ", Quote(value),
                                 " (expected one of BOOL, U8, I8, I16, U16, F16, BF16, I32, U32, "
                                 "F32, F64, I64, U64, F8_E4M3, F8_E5M2)"));
      }
      current_.dtype = *dtype;
      return true;
    }
    if (where_ == Where::kMetadata) {
      metadata_.emplace(std::move(pending_key_), std::move(value));
      return true;
    }
    return Unexpected(absl::StrCat("string ", Quote(value)));
  }

  bool binary(binary_t& /*value*/) override { return Unexpected("binary data"); }

  bool start_object(std::size_t /*elements*/) override {
    switch (where_) {
      case Where::kStart:
        where_ = Where::kTop;
        return true;
      case Where::kTop:
        if (pending_key_ == kMetadataKey) {
          where_ = Where::kMetadata;
        } else {
          current_ = TensorInfo{};
          current_.name = std::move(pending_key_);
          has_dtype_ = has_shape_ = has_offsets_ = false;
          field_ = Field::kNone;
          where_ = Where::kTensor;
        }
        return true;
      default:
        return Unexpected("object");
    }
  }

  bool key(string_t& key) override {
    switch (where_) {
      case Where::kTop:
        if (key == kMetadataKey) {
          if (seen_metadata_) return Fail(absl::StrCat("duplicate key ", Quote(key)));
          seen_metadata_ = true;
        } else if (++num_tensors_ > static_cast<int64_t>(limits_.max_tensors)) {
          return Fail(
              absl::StrCat("header has more than ", limits_.max_tensors, " tensors, the limit"));
        }
        pending_key_ = std::move(key);
        return true;
      case Where::kTensor:
        return TensorKey(key);
      case Where::kMetadata:
        if (metadata_.count(key) != 0) {
          return Fail(absl::StrCat("'__metadata__': duplicate key ", Quote(key)));
        }
        pending_key_ = std::move(key);
        return true;
      default:  // keys only occur inside objects, and every object sets one of the above
        return Fail("internal error: key outside an object");
    }
  }

  bool end_object() override {
    switch (where_) {
      case Where::kTop:
        where_ = Where::kDone;
        return true;
      case Where::kMetadata:
        where_ = Where::kTop;
        return true;
      case Where::kTensor:
        return FinishTensor();
      default:
        return Fail("internal error: unbalanced object");
    }
  }

  bool start_array(std::size_t /*elements*/) override {
    if (where_ == Where::kTensor && field_ == Field::kShape) {
      where_ = Where::kShape;
      return true;
    }
    if (where_ == Where::kTensor && field_ == Field::kOffsets) {
      where_ = Where::kOffsets;
      num_offsets_ = 0;
      return true;
    }
    return Unexpected("array");
  }

  bool end_array() override {
    if (where_ == Where::kShape) {
      where_ = Where::kTensor;
      return true;
    }
    if (where_ == Where::kOffsets) {
      if (num_offsets_ != 2) {
        return Fail(absl::StrCat(TensorLabel(current_.name),
                                 ": 'data_offsets' must have exactly 2 elements, found ",
                                 num_offsets_));
      }
      where_ = Where::kTensor;
      return true;
    }
    return Fail("internal error: unbalanced array");
  }

  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::json::exception& ex) override {
    // what() reads "[json.exception.parse_error.101] parse error at line 1, column 9: ...";
    // the bracketed id means nothing to a user.
    absl::string_view what = ex.what();
    if (!what.empty() && what.front() == '[') {
      const size_t close = what.find("] ");
      if (close != absl::string_view::npos) what.remove_prefix(close + 2);
    }
    return Fail(
        absl::StrCat("header is not valid JSON (byte ", position, " of the header): ", what));
  }

 private:
  enum class Where { kStart, kTop, kTensor, kShape, kOffsets, kMetadata, kDone };
  enum class Field { kNone, kDtype, kShape, kOffsets };

  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  // A value of the wrong kind for the place it appears in; `found` describes it.
  bool Unexpected(absl::string_view found) {
    switch (where_) {
      case Where::kStart:
        return Fail(absl::StrCat("header must be a JSON object, found ", found));
      case Where::kTop:
        if (pending_key_ == kMetadataKey) {
          return Fail(absl::StrCat("'__metadata__' must be an object of strings, found ", found));
        }
        return Fail(absl::StrCat(TensorLabel(pending_key_),
                                 ": entry must be an object with dtype, shape and data_offsets, "
                                 "found ",
                                 found));
      case Where::kTensor:
        switch (field_) {
          case Field::kDtype:
            return Fail(absl::StrCat(TensorLabel(current_.name),
                                     ": 'dtype' must be a string, found ", found));
          case Field::kShape:
            return Fail(absl::StrCat(TensorLabel(current_.name),
                                     ": 'shape' must be an array of integers, found ", found));
          case Field::kOffsets:
            return Fail(absl::StrCat(TensorLabel(current_.name),
                                     ": 'data_offsets' must be an array of 2 integers, found ",
                                     found));
          case Field::kNone:
            break;
        }
        return Fail(absl::StrCat(TensorLabel(current_.name), ": unexpected ", found));
      case Where::kShape:
        return Fail(absl::StrCat(TensorLabel(current_.name), ": shape dimension ",
                                 current_.shape.size(),
                                 " must be an integer in [0, 2^63-1], found ", found));
      case Where::kOffsets:
        return Fail(absl::StrCat(TensorLabel(current_.name), ": data_offsets element ",
                                 num_offsets_, " must be an integer in [0, 2^64-1], found ",
                                 found));
      case Where::kMetadata:
        return Fail(absl::StrCat("'__metadata__' value for key ", Quote(pending_key_),
                                 " must be a string, found ", found));
      case Where::kDone:
        break;
    }
    return Fail(absl::StrCat("unexpected ", found, " after the header object"));
  }

  bool TensorKey(const std::string& key) {
    bool* seen;
    if (key == "dtype") {
      field_ = Field::kDtype;
      seen = &has_dtype_;
    } else if (key == "shape") {
      field_ = Field::kShape;
      seen = &has_shape_;
    } else if (key == "data_offsets") {
      field_ = Field::kOffsets;
      seen = &has_offsets_;
    } else {
      return Fail(absl::StrCat(TensorLabel(current_.name), ": unknown field ", Quote(key),
                               " (expected dtype, shape, data_offsets)"));
    }
    if (*seen) {
      return Fail(absl::StrCat(TensorLabel(current_.name), ": duplicate key ", Quote(key)));
    }
    *seen = true;
    return true;
  }

  bool AddDim(uint64_t dim) {
    const size_t max_rank = static_cast<size_t>(std::max<int32_t>(limits_.max_rank, 0));
    if (current_.shape.size() >= max_rank) {
      return Fail(absl::StrCat(TensorLabel(current_.name), ": shape has more than ", max_rank,
                               " dimensions, the limit"));
    }
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Unexpected(absl::StrCat("number ", dim));
    }
    current_.shape.push_back(static_cast<int64_t>(dim));
    return true;
  }

  bool AddOffset(uint64_t offset) {
    if (num_offsets_ >= 2) {
      return Fail(absl::StrCat(TensorLabel(current_.name),
                               ": 'data_offsets' must have exactly 2 elements, found more"));
    }
    (num_offsets_ == 0 ? current_.begin : current_.end) = offset;
    ++num_offsets_;
    return true;
  }

  bool FinishTensor() {
    std::vector<absl::string_view> missing;
    if (!has_dtype_) missing.push_back("'dtype'");
    if (!has_shape_) missing.push_back("'shape'");
    if (!has_offsets_) missing.push_back("'data_offsets'");
    if (!missing.empty()) {
      return Fail(absl::StrCat(TensorLabel(current_.name),
                               missing.size() == 1 ? ": missing field " : ": missing fields ",
                               absl::StrJoin(missing, ", ")));
    }
    tensors_.push_back(std::move(current_));
    field_ = Field::kNone;
    where_ = Where::kTop;
    return true;
  }

  const SafetensorsLimits& limits_;
  Where where_ = Where::kStart;
  Field field_ = Field::kNone;  // the tensor field whose value comes next
  std::string pending_key_;     // key whose value comes next, in the top object or metadata
  TensorInfo current_;
  bool has_dtype_ = false;
  bool has_shape_ = false;
  bool has_offsets_ = false;
  int num_offsets_ = 0;
  bool seen_metadata_ = false;
  int64_t num_tensors_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::string error_;
};

// Checks one tensor against its dtype and the data section, with every multiplication checked.
absl::Status CheckTensor(const TensorInfo& t, uint64_t data_size, const std::string& file) {
  uint64_t elements = 1;
  for (int64_t dim : t.shape) {
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(dim), &elements)) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", TensorLabel(t.name), ": shape ",
                                                     ShapeString(t.shape),
                                                     " has more than 2^64-1 elements"));
    }
  }
  uint64_t needed;
  if (__builtin_mul_overflow(elements, DTypeSize(t.dtype), &needed)) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", TensorLabel(t.name), ": shape ",
                                                   ShapeString(t.shape), " of ", DTypeName(t.dtype),
                                                   " needs more than 2^64-1 bytes"));
  }
  if (t.begin > t.end) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": ", TensorLabel(t.name),
                                                   ": data_offsets ", OffsetsString(t.begin, t.end),
                                                   " begin after they end"));
  }
  if (t.end - t.begin != needed) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": ", TensorLabel(t.name), ": data_offsets ",
                     OffsetsString(t.begin, t.end), " hold ", t.end - t.begin, " bytes but shape ",
                     ShapeString(t.shape), " of ", DTypeName(t.dtype), " needs ", needed));
  }
  if (t.end > data_size) {
    // The header is self-consistent but the bytes are not there: most likely a truncated file.
    return absl::DataLossError(absl::StrCat(
        file, ": ", TensorLabel(t.name), ": data_offsets ", OffsetsString(t.begin, t.end),
        " extend past the end of the ", data_size, "-byte data section (truncated file?)"));
  }
  return absl::OkStatus();
}

// The reference implementation requires the tensors to tile the data section exactly: sorted by
// offsets, each begins where the previous one ended, and the last ends at the section's end.
// Bytes that belong to no tensor are where a corrupted or hand-edited file would hide.
absl::Status CheckCoverage(const std::vector<TensorInfo>& tensors, uint64_t data_size,
                           const std::string& file) {
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(tensors.size());
  for (const TensorInfo& t : tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  uint64_t covered = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo* t : by_offset) {
    if (t->begin < covered) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": ", TensorLabel(t->name), ": data_offsets ",
                       OffsetsString(t->begin, t->end), " overlap ", TensorLabel(previous->name),
                       " at ", OffsetsString(previous->begin, previous->end)));
    }
    if (t->begin > covered) {
      const std::string before = previous == nullptr ? std::string("the start of the data section")
                                                     : absl::StrCat(TensorLabel(previous->name),
                                                                    " (ends at ", covered, ")");
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": data section bytes [", covered, ", ", t->begin,
                       ") belong to no tensor: gap between ", before, " and ", TensorLabel(t->name),
                       " (begins at ", t->begin, "); tensors must be contiguous"));
    }
    covered = t->end;
    previous = t;
  }
  if (covered != data_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": data section bytes [", covered, ", ", data_size,
                     ") belong to no tensor: the tensors end at byte ", covered,
                     " but the data section has ", data_size, " bytes"));
  }
  return absl::OkStatus();
}

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

float LoadF32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Shared checks of the Copy* functions: `out_size` elements wanted, data present in full.
absl::StatusOr<absl::Span<const uint8_t>> CheckedData(const SafetensorsFile& file,
                                                      const TensorInfo& info, size_t out_size,
                                                      absl::string_view out_type) {
  const int64_t elements = info.num_elements();
  if (elements < 0 || static_cast<uint64_t>(elements) != out_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        file.display_name(), ": ", TensorLabel(info.name), ": shape ", ShapeString(info.shape),
        " has ", elements, " elements but the output holds ", out_size, " ", out_type));
  }
  absl::Span<const uint8_t> data = file.Data(info);
  if (data.size() != out_size * DTypeSize(info.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.display_name(), ": ", TensorLabel(info.name), ": data_offsets ",
                     OffsetsString(info.begin, info.end), " do not hold ", out_size, " ",
                     DTypeName(info.dtype), " elements inside this file's data section"));
  }
  return data;
}

absl::Status UnsupportedDType(const SafetensorsFile& file, const TensorInfo& info,
                              absl::string_view target) {
  return absl::InvalidArgumentError(absl::StrCat(
      file.display_name(), ": ", TensorLabel(info.name), ": dtype ", DTypeName(info.dtype),
      " cannot be converted to ", target, " (supported: BF16, F16, F32)"));
}

}  // namespace

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(n, dim, &n)) return -1;
  }
  return n;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Parse(absl::Span<const uint8_t> bytes,
                                                       std::string display_name,
                                                       const SafetensorsLimits& limits) {
  const std::string& file = display_name;
  if (bytes.size() < kLengthPrefixBytes) {
    return absl::DataLossError(absl::StrCat(file, ": file is ", bytes.size(),
                                            " bytes, shorter than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (size_t i = 0; i < kLengthPrefixBytes; ++i) {
    header_len |= static_cast<uint64_t>(bytes[i]) << (8 * i);
  }
  const uint64_t remaining = bytes.size() - kLengthPrefixBytes;
  if (header_len == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": header length is 0; a header holds at least \"{}\""));
  }
  if (header_len > limits.max_header_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": header length ", header_len,
                                                   " exceeds the limit of ",
                                                   limits.max_header_bytes, " bytes"));
  }
  if (header_len > remaining) {
    return absl::DataLossError(absl::StrCat(file, ": header length ", header_len,
                                            " exceeds the file's remaining ", remaining, " bytes"));
  }
  const absl::Span<const uint8_t> header = bytes.subspan(kLengthPrefixBytes, header_len);
  if (std::optional<size_t> bad = FindInvalidUtf8(header); bad.has_value()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: header is not valid UTF-8: byte 0x%02X at header offset %d (file offset %d)", file,
        header[*bad], *bad, *bad + kLengthPrefixBytes));
  }

  HeaderHandler handler(limits);
  try {
    const char* begin = reinterpret_cast<const char*>(header.data());
    const bool ok = Json::sax_parse(begin, begin + header.size(), &handler);
    if (!ok || !handler.done()) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": ", handler.error().empty() ? "header is not valid JSON" : handler.error()));
    }
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(file, ": out of memory parsing the ", header_len, "-byte header"));
  } catch (const std::exception& e) {
    // nlohmann reports syntax errors through parse_error(), so this is not expected; it is
    // caught so that no exception ever leaves the API.
    return absl::InvalidArgumentError(absl::StrCat(file, ": header is not valid JSON: ", e.what()));
  }

  SafetensorsFile result;
  result.tensors_ = std::move(handler.tensors());
  result.metadata_ = std::move(handler.metadata());
  std::sort(result.tensors_.begin(), result.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (size_t i = 1; i < result.tensors_.size(); ++i) {
    if (result.tensors_[i].name == result.tensors_[i - 1].name) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": duplicate key ",
                                                     Quote(result.tensors_[i].name),
                                                     ": tensor names must be unique"));
    }
  }

  result.data_offset_ = kLengthPrefixBytes + header_len;
  result.data_ = bytes.subspan(result.data_offset_);
  for (const TensorInfo& t : result.tensors_) {
    MESA_RETURN_IF_ERROR(CheckTensor(t, result.data_.size(), file));
  }
  MESA_RETURN_IF_ERROR(CheckCoverage(result.tensors_, result.data_.size(), file));
  result.display_name_ = std::move(display_name);
  return result;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::filesystem::path& path,
                                                      const SafetensorsLimits& limits) {
  MESA_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::Open(path));
  MESA_ASSIGN_OR_RETURN(SafetensorsFile file, Parse(mapped.bytes(), path.string(), limits));
  // Moving the mapping leaves its address unchanged, so the spans in `file` stay valid.
  file.mapping_.emplace(std::move(mapped));
  return file;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

absl::Span<const uint8_t> SafetensorsFile::Data(const TensorInfo& info) const {
  if (info.begin > info.end || info.end > data_.size()) return {};
  return data_.subspan(info.begin, info.end - info.begin);
}

absl::Status CopyTensorToFloat(const SafetensorsFile& file, const TensorInfo& info,
                               absl::Span<float> out) {
  if (info.dtype != DType::kBF16 && info.dtype != DType::kF16 && info.dtype != DType::kF32) {
    return UnsupportedDType(file, info, "float");
  }
  MESA_ASSIGN_OR_RETURN(absl::Span<const uint8_t> data,
                        CheckedData(file, info, out.size(), "floats"));
  const uint8_t* p = data.data();
  switch (info.dtype) {
    case DType::kBF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = Bf16ToFloat(LoadU16(p + 2 * i));
      break;
    case DType::kF16:
      for (size_t i = 0; i < out.size(); ++i) out[i] = Fp16ToFloat(LoadU16(p + 2 * i));
      break;
    default:  // kF32, the only one left
      if (!out.empty()) std::memcpy(out.data(), p, out.size() * sizeof(float));
      break;
  }
  return absl::OkStatus();
}

absl::Status CopyTensorToBf16(const SafetensorsFile& file, const TensorInfo& info,
                              absl::Span<uint16_t> out) {
  if (info.dtype != DType::kBF16 && info.dtype != DType::kF16 && info.dtype != DType::kF32) {
    return UnsupportedDType(file, info, "bf16");
  }
  MESA_ASSIGN_OR_RETURN(absl::Span<const uint8_t> data,
                        CheckedData(file, info, out.size(), "bf16 values"));
  const uint8_t* p = data.data();
  switch (info.dtype) {
    case DType::kBF16:
      if (!out.empty()) std::memcpy(out.data(), p, out.size() * sizeof(uint16_t));
      break;
    case DType::kF16:
      // fp16 -> fp32 is exact, so this rounds once, from the fp16 value to bf16.
      for (size_t i = 0; i < out.size(); ++i) {
        out[i] = FloatToBf16(Fp16ToFloat(LoadU16(p + 2 * i)));
      }
      break;
    default:  // kF32
      for (size_t i = 0; i < out.size(); ++i) out[i] = FloatToBf16(LoadF32(p + 4 * i));
      break;
  }
  return absl::OkStatus();
}

}  // namespace mesa
