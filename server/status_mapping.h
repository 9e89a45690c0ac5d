// The one place where engine errors (absl::Status) become gRPC statuses. The codes are the
// same numbers; messages are made safe to send (valid UTF-8, bounded length).
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mesa::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace mesa::server
