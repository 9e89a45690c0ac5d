// Picks and creates the model runner a command asked for (--device): the CPU reference backend
// or the CUDA backend. Kept apart from mesa_engine so that only binaries that link this
// library (mesaserve) pull in CUDA, and a build without nvcc still has a working --device cpu.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "engine/model_runner.h"
#include "models/mesa_weights.h"

namespace mesa {

enum class Device { kAuto, kCpu, kCuda };

// "auto", "cpu" or "cuda"; anything else is kInvalidArgument naming the choices.
absl::StatusOr<Device> ParseDevice(std::string_view name);
const char* DeviceName(Device device);

// Whether this binary has the CUDA backend and a usable device is present; `why` says why not.
bool CudaBackendUsable(std::string* why);

// kAuto becomes kCuda when CudaBackendUsable(), else kCpu.
Device ResolveDevice(Device device);

struct RunnerSpec {
  Device device = Device::kAuto;
  int32_t num_slots = 1;  // 0: the CUDA runner takes as many as fit its device (CPU: an error)
  // Decode results of a row that do not depend on the other rows of the step, bit for bit. The
  // CPU runner always has it; the CUDA runner then pins its decode GEMMs' algorithms
  // (kCudaBatchInvariantRows).
  bool batch_invariant = false;
};

// Creates the runner on the resolved device. --device cuda in a build without the CUDA backend
// is kFailedPrecondition; without a usable device, the CUDA runner's kUnavailable.
absl::StatusOr<std::unique_ptr<ModelRunner>> CreateModelRunner(MesaWeights weights,
                                                               const RunnerSpec& spec);

}  // namespace mesa
