#include "base/npy.h"

#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "base/file_util.h"
#include "base/half.h"
#include "base/status_macros.h"

namespace mesa {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::Status Malformed(const std::filesystem::path& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path.string(), ": not a supported .npy file: ", what));
}

// Returns the text after `key':` up to the matching delimiter, from a header like
// {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
std::string HeaderField(const std::string& header, const std::string& key) {
  const std::string needle = "'" + key + "':";
  const size_t at = header.find(needle);
  if (at == std::string::npos) return "";
  size_t i = at + needle.size();
  while (i < header.size() && header[i] == ' ') ++i;
  if (i >= header.size()) return "";
  if (header[i] == '\'') {
    const size_t end = header.find('\'', i + 1);
    return end == std::string::npos ? "" : header.substr(i + 1, end - i - 1);
  }
  if (header[i] == '(') {
    const size_t end = header.find(')', i);
    return end == std::string::npos ? "" : header.substr(i, end - i + 1);
  }
  const size_t end = header.find_first_of(",}", i);
  return header.substr(i, end - i);
}

}  // namespace

int64_t NpyArray::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status WriteNpyFloat32(const std::filesystem::path& path, const float* data,
                             const std::vector<int64_t>& shape) {
  std::string shape_text = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) shape_text += ",";
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (",
                                    shape_text, "), }");
  // Pad so that magic(6) + version(2) + length(2) + header is a multiple of 64, ending in \n.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path.string(), ": cannot create"));
  out.write(kMagic, 6);
  const char version[2] = {1, 0};
  out.write(version, 2);
  const uint16_t len = static_cast<uint16_t>(header.size());
  const char len_bytes[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_bytes, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(n * sizeof(float)));
  if (!out) return absl::DataLossError(absl::StrCat(path.string(), ": write failed"));
  return absl::OkStatus();
}

absl::StatusOr<NpyArray> ReadNpy(const std::filesystem::path& path) {
  MESA_ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path, 1u << 30));
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) return Malformed(path, "bad magic");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len = 0, offset = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Malformed(path, "truncated header");
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  } else {
    return Malformed(path, absl::StrCat("version ", major));
  }
  if (offset + header_len > bytes.size()) return Malformed(path, "truncated header");
  const std::string header = bytes.substr(offset, header_len);
  NpyArray a;
  a.descr = HeaderField(header, "descr");
  if (HeaderField(header, "fortran_order") != "False") return Malformed(path, "fortran order");
  std::string shape = HeaderField(header, "shape");
  if (shape.size() < 2) return Malformed(path, "no shape");
  shape = shape.substr(1, shape.size() - 2);
  size_t pos = 0;
  while (pos < shape.size()) {
    const size_t comma = shape.find(',', pos);
    std::string item = shape.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (!item.empty()) {
      int64_t dim = 0;
      if (!absl::SimpleAtoi(item, &dim) || dim < 0) {
        return Malformed(path, absl::StrCat("shape entry '", item, "' is not a dimension"));
      }
      a.shape.push_back(dim);
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  // The element count must fit the file (at most 1 GiB), so a product past 2^31 is an error
  // before it can overflow.
  int64_t n = 1;
  for (int64_t d : a.shape) {
    if (d != 0 && n > (int64_t{1} << 31) / d) return Malformed(path, "shape has more than 2^31 elements");
    n *= d;
  }
  const char* data = bytes.data() + offset + header_len;
  const size_t avail = bytes.size() - offset - header_len;
  if (a.descr == "<f4") {
    if (avail < static_cast<size_t>(n) * 4) return Malformed(path, "truncated data");
    a.f32.resize(n);
    if (n > 0) std::memcpy(a.f32.data(), data, n * 4);  // data() of an empty vector may be null
  } else if (a.descr == "<f2") {
    // Half-precision storage of bf16 logits (exact for magnitudes in fp16's normal range).
    if (avail < static_cast<size_t>(n) * 2) return Malformed(path, "truncated data");
    a.f32.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      a.f32[i] = Fp16ToFloat(h);
    }
  } else if (a.descr == "<i4") {
    if (avail < static_cast<size_t>(n) * 4) return Malformed(path, "truncated data");
    std::vector<int32_t> v(n);
    if (n > 0) std::memcpy(v.data(), data, n * 4);
    a.ints.assign(v.begin(), v.end());
  } else if (a.descr == "<i8") {
    if (avail < static_cast<size_t>(n) * 8) return Malformed(path, "truncated data");
    a.ints.resize(n);
    if (n > 0) std::memcpy(a.ints.data(), data, n * 8);
  } else {
    return Malformed(path, absl::StrCat("dtype ", a.descr));
  }
  return a;
}

}  // namespace mesa
