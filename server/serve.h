// `mesaserve serve`: the production server. Returns the process exit code (0 after a clean
// drain on SIGTERM/SIGINT, 1 when it cannot start).
#pragma once

#include <string>
#include <vector>

namespace mesa::server {

int RunServe(const std::vector<std::string>& args);

}  // namespace mesa::server
