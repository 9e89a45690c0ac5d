#include "engine/runner_factory.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/cpu_model_runner.h"

#if MESA_HAVE_CUDA
#include "engine/cuda_model_runner.h"
#include "kernels/cuda/cuda_status.h"
#endif

namespace mesa {

absl::StatusOr<Device> ParseDevice(std::string_view name) {
  if (name == "auto") return Device::kAuto;
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", std::string(name), "' is not one of auto, cpu, cuda"));
}

const char* DeviceName(Device device) {
  switch (device) {
    case Device::kAuto: return "auto";
    case Device::kCpu: return "cpu";
    case Device::kCuda: return "cuda";
  }
  return "?";
}

bool CudaBackendUsable(std::string* why) {
#if MESA_HAVE_CUDA
  const absl::StatusOr<int> count = gpu::CudaDeviceCount();
  if (count.ok() && *count > 0) return true;
  if (why != nullptr) {
    *why = count.ok() ? "no CUDA device found" : std::string(count.status().message());
  }
  return false;
#else
  if (why != nullptr) *why = "this mesaserve was built without the CUDA backend (no nvcc, or MESA_WITH_CUDA=OFF)";
  return false;
#endif
}

Device ResolveDevice(Device device) {
  if (device != Device::kAuto) return device;
  return CudaBackendUsable(nullptr) ? Device::kCuda : Device::kCpu;
}

absl::StatusOr<std::unique_ptr<ModelRunner>> CreateModelRunner(MesaWeights weights,
                                                               const RunnerSpec& spec) {
  const Device device = ResolveDevice(spec.device);
  if (device == Device::kCpu) {
    CpuRunnerOptions options;
    options.num_slots = spec.num_slots;
    return CreateCpuModelRunner(std::move(weights), options);
  }
#if MESA_HAVE_CUDA
  CudaRunnerOptions options;
  options.num_slots = spec.num_slots;
  options.batch_invariant_rows = spec.batch_invariant ? kCudaBatchInvariantRows : 0;
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<CudaModelRunner> runner,
                        CreateCudaModelRunner(std::move(weights), options));
  return std::unique_ptr<ModelRunner>(std::move(runner));
#else
  std::string why;
  CudaBackendUsable(&why);
  return absl::FailedPreconditionError(absl::StrCat("--device cuda: ", why));
#endif
}

}  // namespace mesa
