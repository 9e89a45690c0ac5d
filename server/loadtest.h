// `mesaserve loadtest`: a closed-loop gRPC load generator for mesa.v1.Generation.
//
// N worker threads each keep one call in flight (GenerateStream or Generate) until the
// request count or the duration is reached, and the client measures what a caller sees:
// time to first token, inter-token latency, end-to-end latency, throughput, errors by status
// code, and the CG work the server reports. It doubles as the C++ client test of the server
// (tests/integration/loadtest_client_test.sh).
#pragma once

#include <string>
#include <vector>

namespace mesa::server {

// Exit code 0 when every request succeeded (and returned the tokens it should), 1 otherwise
// (including bad flags and an unreachable server).
int RunLoadTest(const std::vector<std::string>& args);

}  // namespace mesa::server
