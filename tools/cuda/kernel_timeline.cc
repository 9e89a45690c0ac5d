// A CUDA injection library that writes every kernel's start and end time (GPU clock, ns) to a
// CSV file: a timeline of what ran, for machines without Nsight Systems. Kernels replayed from
// CUDA graphs are included, so a decode step's gaps and overlaps (dependent launches) can be
// measured at full clocks, which Nsight Compute (one kernel at a time) cannot show.
//
//   MESA_TIMELINE_OUT=/tmp/timeline.csv CUDA_INJECTION64_PATH=/path/libmesa_kernel_timeline.so \
//     mesaserve-bench model ...
//   python3 tools/cuda/timeline_steps.py /tmp/timeline.csv
//
// Built by tools/cuda/build_kernel_timeline.sh against CUPTI (CUDA's profiling interface);
// not part of the server or the tests.
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace {

constexpr size_t kBufferBytes = 8 << 20;

std::mutex file_mu;
FILE* out = nullptr;

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  std::lock_guard<std::mutex> lock(file_mu);
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
    if (out != nullptr) {
      std::fprintf(out, "%llu,%llu,%u,%d,%d,%s\n", static_cast<unsigned long long>(k->start),
                   static_cast<unsigned long long>(k->end), k->streamId, k->gridX * k->gridY * k->gridZ,
                   k->blockX * k->blockY * k->blockZ, k->name != nullptr ? k->name : "?");
    }
  }
  free(buffer);
}

void Finish() {
  cuptiActivityFlushAll(1);
  std::lock_guard<std::mutex> lock(file_mu);
  if (out != nullptr) std::fclose(out);
  out = nullptr;
}

}  // namespace

extern "C" int InitializeInjection() {
  const char* path = std::getenv("MESA_TIMELINE_OUT");
  out = std::fopen(path != nullptr ? path : "kernel_timeline.csv", "w");
  if (out == nullptr) return 0;
  std::fprintf(out, "start_ns,end_ns,stream,blocks,threads,name\n");
  if (cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel_timeline: CUPTI activity tracing could not be enabled\n");
    return 0;
  }
  std::atexit(Finish);
  return 1;
}
