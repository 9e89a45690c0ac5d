#pragma once

#include <filesystem>
#include <string>

#include "absl/status/statusor.h"

namespace mesa {

// Reads a whole (small) file; errors name the path. Refuses files over `max_bytes`.
absl::StatusOr<std::string> ReadFileToString(const std::filesystem::path& path,
                                             size_t max_bytes = 64u << 20);

}  // namespace mesa
