#include "server/health_client.h"

#include <grpcpp/grpcpp.h>

#include <cstdio>

#include "base/flags.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace mesa::server {

int RunHealthCheck(const std::vector<std::string>& args) {
  std::string address = "127.0.0.1:50051", service;
  double timeout = 2.0;
  FlagSet f("health", "Asks a server's grpc.health.v1 service whether it is SERVING.\n"
                      "Exit code 0 when it is, 1 otherwise.");
  f.String("address", &address, "server address host:port");
  f.String("service", &service, "service name to check; empty = the whole server");
  f.Float("timeout", &timeout, "seconds to wait for the answer");
  if (absl::Status st = f.Parse(args); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  if (f.help_requested()) {
    std::fputs(f.Usage().c_str(), stdout);
    return 0;
  }
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(timeout * 1000)));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "unhealthy: %s\n", status.error_message().c_str());
    return 1;
  }
  const bool serving = response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()).c_str());
  return serving ? 0 : 1;
}

}  // namespace mesa::server
