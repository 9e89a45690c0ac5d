#include "server/status_mapping.h"

#include <string>

#include "base/utf8.h"

namespace mesa::server {
namespace {

constexpr size_t kMaxMessageBytes = 1024;

// Replaces invalid UTF-8 with '?' and cuts the message at a character boundary.
std::string SafeMessage(std::string_view in) {
  std::string out;
  size_t i = 0;
  while (i < in.size() && out.size() < kMaxMessageBytes) {
    const size_t n = Utf8SequenceLength(in, i);
    if (n == 0) {
      out.push_back('?');
      ++i;
    } else {
      out.append(in.substr(i, n));
      i += n;
    }
  }
  if (i < in.size()) out += "...";
  return out;
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const std::string_view message(status.message().data(), status.message().size());
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), SafeMessage(message));
}

}  // namespace mesa::server
