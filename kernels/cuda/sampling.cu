#include "kernels/cuda/sampling.h"

#include <cfloat>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"

namespace mesa::gpu {
namespace {

constexpr int kThreads = 1024;
constexpr float kCandidateWindow = 30.0f;  // engine/sampler.cc

// (value, id) with the larger value first, then the smaller id: max_element's first maximum.
struct Best {
  float value;
  int32_t id;
};

__device__ __forceinline__ Best Better(Best a, Best b) {
  if (a.value > b.value || (a.value == b.value && a.id < b.id)) return a;
  return b;
}

__device__ Best BlockBest(Best v, Best* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    Best other{__shfl_xor_sync(0xffffffffu, v.value, o), __shfl_xor_sync(0xffffffffu, v.id, o)};
    v = Better(v, other);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  Best total = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) total = Better(total, scratch[w]);
  return total;
}

// Exclusive prefix of `v` over the threads in thread order, and the total.
__device__ double BlockExclusiveSum(double v, double* scratch, double* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  double incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const double up = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  double before = 0.0, all = 0.0;
  for (int w = 0; w < kThreads / 32; ++w) {
    if (w < warp) before += scratch[w];
    all += scratch[w];
  }
  *total = all;
  return before + incl - v;
}

__device__ __forceinline__ float Prob(float z) { return static_cast<float>(exp(static_cast<double>(z))); }

// One block per row; thread t owns the ids [t * span, (t + 1) * span), so its part of the
// running sum in id order is one contiguous piece.
__global__ void __launch_bounds__(kThreads) SampleRowsKernel(SampleRowsParams p) {
  __shared__ Best best_scratch[kThreads / 32];
  __shared__ double sum_scratch[kThreads / 32];
  __shared__ int32_t found;
  const int row = blockIdx.x;
  const RowChoice c = p.choices[row];
  if (c.kind == 0) {
    if (threadIdx.x == 0) p.tokens[row] = -1;
    return;
  }
  const float* l = p.logits + static_cast<int64_t>(row) * p.vocab;
  const int n = c.valid_vocab > 0 && c.valid_vocab < p.vocab ? c.valid_vocab : p.vocab;
  const int span = (n + kThreads - 1) / kThreads;
  const int begin = min(n, static_cast<int>(threadIdx.x) * span), end = min(n, begin + span);
  Best mine{-FLT_MAX, n};
  for (int i = begin; i < end; ++i) mine = Better(mine, Best{l[i], i});
  const Best top = BlockBest(mine, best_scratch);
  if (c.kind == 1) {
    if (threadIdx.x == 0) p.tokens[row] = top.id;
    return;
  }
  const float inv_t = 1.0f / c.temperature;
  double part = 0.0;
  int32_t last = -1;  // the largest candidate id in this thread's range
  for (int i = begin; i < end; ++i) {
    const float z = __fmul_rn(__fsub_rn(l[i], top.value), inv_t);  // no contraction: as the CPU
    if (z > -kCandidateWindow) {
      part += Prob(z);
      last = i;
    }
  }
  double mass = 0.0;
  const double before = BlockExclusiveSum(part, sum_scratch, &mass);
  const double u = c.draw * mass;
  if (threadIdx.x == 0) found = -1;
  __syncthreads();
  if (u >= before && u < before + part) {
    double acc = before;
    for (int i = begin; i < end; ++i) {
      const float z = __fmul_rn(__fsub_rn(l[i], top.value), inv_t);
      if (z > -kCandidateWindow) {
        acc += Prob(z);
        if (u < acc) {
          atomicMax(&found, i);  // one thread finds it; max keeps the rule if rounding gave two
          break;
        }
      }
    }
  }
  // No crossing (u rounded to the total): the last candidate, as the CPU's default.
  const Best last_candidate = BlockBest(Best{static_cast<float>(last), last}, best_scratch);
  if (threadIdx.x == 0) p.tokens[row] = found >= 0 ? found : last_candidate.id;
}

}  // namespace

absl::Status SampleRows(const SampleRowsParams& p) {
  if (p.rows < 0 || p.vocab < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleRows: rows ", p.rows, " (>= 0) or vocab ", p.vocab, " (>= 1)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.logits == nullptr || p.choices == nullptr || p.tokens == nullptr) {
    return absl::InvalidArgumentError("SampleRows: a required pointer is null");
  }
  SampleRowsKernel<<<p.rows, kThreads, 0, p.stream>>>(p);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("SampleRowsKernel");
  return absl::OkStatus();
}

}  // namespace mesa::gpu
