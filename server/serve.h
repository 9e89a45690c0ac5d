// `mesaserve serve`: the production server. Returns the process exit code: 0 after a clean
// drain on SIGTERM/SIGINT, 1 when it cannot start, kExitEngineFailed after a fatal engine
// failure (ServeConfig::fatal_exit_after_seconds).
#pragma once

#include <string>
#include <vector>

namespace mesa::server {

inline constexpr int kExitEngineFailed = 3;

int RunServe(const std::vector<std::string>& args);

}  // namespace mesa::server
