#include "models/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/half.h"

namespace mesa {
namespace {

void AppendU16(std::vector<uint8_t>& out, uint16_t v) {
  out.push_back(static_cast<uint8_t>(v & 0xff));
  out.push_back(static_cast<uint8_t>(v >> 8));
}

void AppendLengthPrefix(std::vector<uint8_t>& out, uint64_t n) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
}

absl::Status WriteAll(int fd, const std::vector<uint8_t>& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::ErrnoToStatus(errno, "write");
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace

void SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                            std::vector<uint8_t> bytes) {
  tensors_.insert_or_assign(std::move(name), Entry{dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::AddFloat32(std::string name, std::vector<int64_t> shape,
                                   absl::Span<const float> values) {
  std::vector<uint8_t> bytes(values.size() * sizeof(float));
  // The host is little-endian, like the format (safetensors.cc asserts it).
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  Add(std::move(name), DType::kF32, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::AddBf16(std::string name, std::vector<int64_t> shape,
                                absl::Span<const float> values) {
  std::vector<uint8_t> bytes;
  bytes.reserve(values.size() * 2);
  for (float v : values) AppendU16(bytes, FloatToBf16(v));
  Add(std::move(name), DType::kBF16, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::AddFloat16(std::string name, std::vector<int64_t> shape,
                                   absl::Span<const float> values) {
  std::vector<uint8_t> bytes;
  bytes.reserve(values.size() * 2);
  for (float v : values) AppendU16(bytes, FloatToFp16(v));
  Add(std::move(name), DType::kF16, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::AddBits16(std::string name, DType dtype, std::vector<int64_t> shape,
                                  absl::Span<const uint16_t> bits) {
  std::vector<uint8_t> bytes;
  bytes.reserve(bits.size() * 2);
  for (uint16_t b : bits) AppendU16(bytes, b);
  Add(std::move(name), dtype, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::SetMetadata(std::string key, std::string value) {
  metadata_.insert_or_assign(std::move(key), std::move(value));
}

std::vector<uint8_t> SafetensorsWriter::Serialize() const {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata_.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [key, value] : metadata_) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& [name, entry] : tensors_) {
    const uint64_t end = offset + entry.bytes.size();
    header[name] = {{"dtype", std::string(DTypeName(entry.dtype))},
                    {"shape", entry.shape},
                    {"data_offsets", {offset, end}}};
    offset = end;
  }
  // error_handler_t::replace: dump() would otherwise throw on invalid UTF-8.
  std::string text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  text.resize((text.size() + 7) / 8 * 8, ' ');

  std::vector<uint8_t> out;
  out.reserve(8 + text.size() + offset);
  AppendLengthPrefix(out, text.size());
  out.insert(out.end(), text.begin(), text.end());
  for (const auto& [name, entry] : tensors_) {
    out.insert(out.end(), entry.bytes.begin(), entry.bytes.end());
  }
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::filesystem::path& path) const {
  const std::vector<uint8_t> bytes = Serialize();
  std::filesystem::path tmp = path;
  tmp += absl::StrCat(".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot create '", tmp.string(), "'"));
  }
  absl::Status status = WriteAll(fd, bytes);
  if (::close(fd) != 0 && status.ok()) status = absl::ErrnoToStatus(errno, "close");
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename to '", path.string(), "'"));
  }
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return absl::Status(status.code(),
                        absl::StrCat("cannot write '", path.string(), "': ", status.message()));
  }
  return absl::OkStatus();
}

std::vector<uint8_t> SafetensorsWriter::RawFile(std::string_view header_json,
                                                absl::Span<const uint8_t> data) {
  std::vector<uint8_t> out;
  out.reserve(8 + header_json.size() + data.size());
  AppendLengthPrefix(out, header_json.size());
  out.insert(out.end(), header_json.begin(), header_json.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

}  // namespace mesa
