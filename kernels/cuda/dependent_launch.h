// Programmatic dependent launch (Hopper): a kernel launched with it may start while the
// kernel before it in the stream is still running, so that its launch and whatever it can do
// without that kernel's results (loading weights, or a decode step's states) overlap the tail
// of the previous kernel instead of following it. At batch 1 a decode step is about 220 short
// kernels in a chain, and each boundary otherwise costs the drain of one grid and the start
// of the next.
//
// The contract, for every kernel launched through LaunchKernel:
//  * device side, WaitForPriorKernels() before reading anything an earlier kernel of the
//    stream wrote and before writing any global memory (an earlier kernel may still read it).
//    Only inputs that no kernel still running or queued before it writes may be read (or
//    prefetched) before it: weights, the step's argument tables copied before the step, and
//    state only an earlier step wrote (the decode kernel's recurrent states, the mixer-input
//    kernel's conv states). It returns once the previous kernel has finished
//    and its writes are visible; since that kernel waited for its own predecessor, so are all
//    earlier ones. A kernel launched without the attribute passes it at once.
//  * StartNextKernel() lets the next kernel launch once every block of this one has called it
//    (or exited); called right after the wait, the next kernel's blocks arrive while this one
//    runs and wait in turn.
// Launches are dependent only inside a DependentLaunchScope (the CUDA runner's decode step);
// elsewhere LaunchKernel is an ordinary launch.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_status.h"

namespace mesa::gpu {

// Whether LaunchKernel on this thread launches dependently.
bool DependentLaunchOn();

// Makes LaunchKernel on this thread dependent (when `on`) until the scope ends; scopes nest.
class DependentLaunchScope {
 public:
  explicit DependentLaunchScope(bool on);
  ~DependentLaunchScope();
  DependentLaunchScope(const DependentLaunchScope&) = delete;
  DependentLaunchScope& operator=(const DependentLaunchScope&) = delete;

 private:
  bool previous_;
};

#ifdef __CUDACC__

__device__ __forceinline__ void WaitForPriorKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void StartNextKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, smem, stream>>>(args...), dependent inside a DependentLaunchScope.
// `name` names the kernel in the error.
template <typename... Params, typename... Args>
absl::Status LaunchKernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                          size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = DependentLaunchOn() ? 1 : 0;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  if (err != cudaSuccess) {
    cudaGetLastError();  // cleared unless sticky (then it stays, as after any launch)
    return CudaErrorToStatus(err, name, __FILE__, __LINE__);
  }
  return LastLaunchStatus(name, __FILE__, __LINE__);
}

#endif  // __CUDACC__

}  // namespace mesa::gpu
