// `mesaserve health`: a gRPC health-check client for container health checks and probes.
#pragma once

#include <string>
#include <vector>

namespace mesa::server {

// Exit code 0 when the server reports SERVING, 1 otherwise (with the reason on stderr).
int RunHealthCheck(const std::vector<std::string>& args);

}  // namespace mesa::server
