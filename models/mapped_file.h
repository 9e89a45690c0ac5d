// A whole file mapped read-only into memory, so checkpoints of many gigabytes are read lazily by
// the page cache instead of being copied onto the heap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace mesa {

// Move-only owner of the mapping; the bytes stay valid (and at the same address, across moves)
// until the owning object is destroyed.
//
// The mapping is of the file as it is on disk: if another process truncates the file while it
// is mapped, reading the lost pages raises SIGBUS. Checkpoints are not rewritten in place, so
// this is accepted rather than paid for with a copy.
class MappedFile {
 public:
  // Maps the whole regular file at `path`. Errors name the path and the errno text. An empty
  // file gives an empty span (mmap rejects a length of 0).
  static absl::StatusOr<MappedFile> Open(const std::filesystem::path& path);

  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  absl::Span<const uint8_t> bytes() const {
    return absl::Span<const uint8_t>(static_cast<const uint8_t*>(data_), size_);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  MappedFile(std::filesystem::path path, void* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  void Unmap();

  std::filesystem::path path_;
  void* data_ = nullptr;  // nullptr when the file is empty or the object was moved from
  size_t size_ = 0;
};

}  // namespace mesa
