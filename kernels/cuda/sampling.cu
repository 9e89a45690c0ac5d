#include "kernels/cuda/sampling.h"

#include <cfloat>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_math.cuh"

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

// The ids [0, n) a row's choice may take: its valid_vocab when set and shorter than the row.
__device__ __forceinline__ int ChoosableIds(const RowChoice& c, int vocab) {
  return c.valid_vocab > 0 && c.valid_vocab < vocab ? c.valid_vocab : vocab;
}

__device__ __forceinline__ float Prob(float z) { return static_cast<float>(exp(static_cast<double>(z))); }

// Penalties of the rows that have them, in place (tokens are distinct within a row).
__global__ void ApplyPenaltiesKernel(SampleRowsParams p) {
  const int row = blockIdx.x;
  const RowChoice c = p.choices[row];
  if (c.kind == 0 || c.seen_count == 0) return;
  float* l = p.logits + static_cast<int64_t>(row) * p.vocab;
  const int n = ChoosableIds(c, p.vocab);
  for (int e = threadIdx.x; e < c.seen_count; e += blockDim.x) {
    const SeenEntry s = p.seen[c.seen_offset + e];
    if (s.token < 0 || s.token >= n) continue;
    float v = l[s.token];
    if (c.repetition_penalty != 1.0f) {
      v = v > 0.0f ? __fdiv_rn(v, c.repetition_penalty) : __fmul_rn(v, c.repetition_penalty);
    }
    l[s.token] = __fsub_rn(v, fmaf(c.frequency_penalty, static_cast<float>(s.count), c.presence_penalty));
  }
}

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
  if (c.kind == 3) return;  // TruncatedSampleKernel
  const float* l = p.logits + static_cast<int64_t>(row) * p.vocab;
  const int n = ChoosableIds(c, p.vocab);
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

// ---------------------------------------------------------------------------------------------
// Truncated softmax (kind 3). The row's candidate probabilities go to shared memory once; a
// candidate's rank is its key (bits of p << 32 | ~id): a larger key is a larger p, or the same p
// and a smaller id, which is the CPU's order. Every cut and the final draw are "the first key,
// in decreasing order, where a running weight reaches a target", found by a radix descent over
// the 64-bit key, 8 bits per pass, with a 256-bin histogram of the weights (counts, or masses in
// fixed point: integer sums are exact, so the result does not depend on the order of atomics).

constexpr double kMassScale = 17592186044416.0;  // 2^44: 49,152 masses of at most 1 stay < 2^60

__device__ __forceinline__ uint64_t KeyOf(float prob, int id) {
  return (static_cast<uint64_t>(__float_as_uint(prob)) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}
__device__ __forceinline__ uint64_t MassOf(float prob) {
  return static_cast<uint64_t>(static_cast<double>(prob) * kMassScale + 0.5);
}

struct DescentScratch {
  unsigned long long hist[256];
  unsigned long long prefix, above, total;
  int count;
};

// An element of a descent: entry(i, &key, &weight) says whether id i takes part and with which
// key and weight.
template <typename Entry>
__device__ uint64_t WeightFrom(int n, uint64_t floor_key, Entry entry, DescentScratch& s) {
  if (threadIdx.x == 0) s.total = 0;
  __syncthreads();
  unsigned long long mine = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    uint64_t key, weight;
    if (entry(i, &key, &weight) && key >= floor_key) mine += weight;
  }
  atomicAdd(&s.total, mine);
  __syncthreads();
  const uint64_t total = s.total;
  __syncthreads();
  return total;
}

// The largest key among the entries with key >= floor_key whose running weight, summed in
// decreasing key order up to and including it, reaches `target`; the smallest such key when
// the target is beyond the total.
template <typename Entry>
__device__ uint64_t Descend(int n, uint64_t floor_key, uint64_t target, Entry entry,
                            DescentScratch& s) {
  uint64_t prefix = 0, above = 0;
  for (int pass = 0; pass < 8; ++pass) {
    const int shift = 56 - 8 * pass;
    for (int d = threadIdx.x; d < 256; d += blockDim.x) s.hist[d] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      uint64_t key, weight;
      if (!entry(i, &key, &weight) || key < floor_key) continue;
      if (pass > 0 && (key >> (shift + 8)) != (prefix >> (shift + 8))) continue;
      atomicAdd(&s.hist[(key >> shift) & 255], static_cast<unsigned long long>(weight));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int chosen = -1, lowest = -1;
      for (int d = 255; d >= 0; --d) {
        const uint64_t h = s.hist[d];
        if (h == 0) continue;
        lowest = d;
        if (above + h >= target) {
          chosen = d;
          break;
        }
        above += h;
      }
      if (chosen < 0 && lowest >= 0) {  // target beyond the total: the smallest key
        chosen = lowest;
        above -= s.hist[lowest];
      }
      s.prefix = prefix | (static_cast<uint64_t>(chosen < 0 ? 0 : chosen) << shift);
      s.above = above;
    }
    __syncthreads();
    prefix = s.prefix;
    above = s.above;
    __syncthreads();
  }
  return prefix;
}

__global__ void __launch_bounds__(kThreads) TruncatedSampleKernel(SampleRowsParams p) {
  extern __shared__ float probs[];  // [n]: p of the candidates, 0 elsewhere
  __shared__ DescentScratch s;
  __shared__ Best best_scratch[kThreads / 32];
  const int row = blockIdx.x;
  const RowChoice c = p.choices[row];
  if (c.kind != 3) return;
  const float* l = p.logits + static_cast<int64_t>(row) * p.vocab;
  const int n = ChoosableIds(c, p.vocab);
  Best mine{-FLT_MAX, n};
  for (int i = threadIdx.x; i < n; i += blockDim.x) mine = Better(mine, Best{l[i], i});
  const float top = BlockBest(mine, best_scratch).value;
  const float inv_t = 1.0f / c.temperature;
  if (threadIdx.x == 0) s.count = 0;
  __syncthreads();
  int candidates = 0, above_min_p = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float z = __fmul_rn(__fsub_rn(l[i], top), inv_t);
    const float pr = z > -kCandidateWindow ? Prob(z) : 0.0f;
    probs[i] = pr;
    candidates += pr > 0.0f;
  }
  atomicAdd(&s.count, candidates);
  __syncthreads();
  int keep = s.count;
  __syncthreads();
  if (c.top_k > 0) keep = min(keep, c.top_k);
  if (c.min_p > 0.0f) {
    // p_max is exp(0) = 1 (the top logit's z is 0), as the CPU's max over the candidates.
    const float threshold = c.min_p * 1.0f;
    if (threadIdx.x == 0) s.count = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) above_min_p += probs[i] > 0.0f && probs[i] >= threshold;
    atomicAdd(&s.count, above_min_p);
    __syncthreads();
    keep = min(keep, max(1, s.count));
    __syncthreads();
  }
  auto counted = [&](int i, uint64_t* key, uint64_t* weight) {
    const float pr = probs[i];
    *key = KeyOf(pr, i);
    *weight = 1;
    return pr > 0.0f;
  };
  auto weighed = [&](int i, uint64_t* key, uint64_t* weight) {
    const float pr = probs[i];
    *key = KeyOf(pr, i);
    *weight = MassOf(pr);
    return pr > 0.0f;
  };
  // The keep-th key: the count cut (top-k, min-p).
  uint64_t cut = Descend(n, 0, static_cast<uint64_t>(keep), counted, s);
  if (c.top_p < 1.0f) {
    // The shortest prefix whose mass reaches top_p of the kept mass.
    const uint64_t kept = WeightFrom(n, cut, weighed, s);
    const uint64_t target = max(1ull, static_cast<unsigned long long>(ceil(static_cast<double>(c.top_p) * kept)));
    cut = Descend(n, cut, target, weighed, s);
  }
  // The draw: the first key whose running mass exceeds u = draw * mass.
  const uint64_t mass = WeightFrom(n, cut, weighed, s);
  const uint64_t target = static_cast<uint64_t>(floor(c.draw * static_cast<double>(mass))) + 1;
  const uint64_t chosen = Descend(n, cut, target, weighed, s);
  if (threadIdx.x == 0) p.tokens[row] = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(chosen));
}

// ---------------------------------------------------------------------------------------------
// Log-probabilities (rows with top_logprobs > 0, after the token is chosen): log_z = max +
// log(sum exp(l - max)) over the raw row (the host sums in id order in fp32, this in a tree:
// the values agree to about 1e-6), the chosen token's l - log_z, and the top_logprobs largest
// logits: a count descent finds the n-th largest (logit, id) key, the n keys at or above it
// are collected and sorted.

// Orders like the float: flips the sign bit of positives and all bits of negatives.
__device__ __forceinline__ uint32_t OrderedBits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads) LogprobsKernel(SampleRowsParams p) {
  __shared__ DescentScratch s;
  __shared__ Best best_scratch[kThreads / 32];
  __shared__ float sum_scratch[kThreads / 32];
  __shared__ uint64_t picked[kMaxTopLogprobs];
  __shared__ int picked_count;
  const int row = blockIdx.x;
  const RowChoice c = p.choices[row];
  if (c.kind == 0 || c.top_logprobs <= 0) return;
  const float* l = p.logits + static_cast<int64_t>(row) * p.vocab;
  const int n = ChoosableIds(c, p.vocab);
  Best mine{-FLT_MAX, n};
  for (int i = threadIdx.x; i < n; i += blockDim.x) mine = Better(mine, Best{l[i], i});
  const float mx = BlockBest(mine, best_scratch).value;
  float part = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) part += expf(l[i] - mx);
  part = WarpSum(part);
  if ((threadIdx.x & 31) == 0) sum_scratch[threadIdx.x >> 5] = part;
  __syncthreads();
  float sum = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) sum += sum_scratch[w];
  const float log_z = mx + logf(sum);
  if (threadIdx.x == 0) p.logprobs[row] = l[p.tokens[row]] - log_z;

  const int m = min(min(c.top_logprobs, kMaxTopLogprobs), n);
  auto keyed = [&](int i, uint64_t* key, uint64_t* weight) {
    *key = (static_cast<uint64_t>(OrderedBits(l[i])) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
    *weight = 1;
    return true;
  };
  const uint64_t floor_key = Descend(n, 0, static_cast<uint64_t>(m), keyed, s);
  if (threadIdx.x == 0) picked_count = 0;
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    uint64_t key, weight;
    keyed(i, &key, &weight);
    if (key >= floor_key) {
      const int slot = atomicAdd(&picked_count, 1);
      if (slot < kMaxTopLogprobs) picked[slot] = key;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int k = min(picked_count, m);
    for (int a = 1; a < k; ++a) {  // insertion sort, largest key first
      const uint64_t v = picked[a];
      int b = a - 1;
      while (b >= 0 && picked[b] < v) {
        picked[b + 1] = picked[b];
        --b;
      }
      picked[b + 1] = v;
    }
    for (int a = 0; a < k; ++a) {
      const int id = static_cast<int>(0xffffffffu - static_cast<uint32_t>(picked[a]));
      p.top[static_cast<int64_t>(row) * kMaxTopLogprobs + a] = TopLogprob{id, l[id] - log_z};
    }
  }
}

}  // namespace

absl::Status SampleRows(const SampleRowsParams& p) {
  if (p.rows < 0 || p.vocab < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("SampleRows: rows ", p.rows, " (>= 0) or vocab ", p.vocab, " (>= 1)"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.logits == nullptr || p.choices == nullptr || p.tokens == nullptr ||
      (p.any_penalties && p.seen == nullptr)) {
    return absl::InvalidArgumentError("SampleRows: a required pointer is null");
  }
  if (p.any_penalties) {
    ApplyPenaltiesKernel<<<p.rows, 256, 0, p.stream>>>(p);
    MESA_CUDA_RETURN_IF_LAUNCH_FAILED("ApplyPenaltiesKernel");
  }
  SampleRowsKernel<<<p.rows, kThreads, 0, p.stream>>>(p);
  MESA_CUDA_RETURN_IF_LAUNCH_FAILED("SampleRowsKernel");
  if (p.any_truncated) {
    if (p.vocab > kMaxTruncatedSampleVocab) {
      return absl::InvalidArgumentError(absl::StrCat("SampleRows: truncated sampling takes rows of at most ",
                                                     kMaxTruncatedSampleVocab, " ids, not ", p.vocab));
    }
    const int smem = static_cast<int>(p.vocab * sizeof(float));
    static const cudaError_t attr = cudaFuncSetAttribute(
        TruncatedSampleKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
        static_cast<int>(kMaxTruncatedSampleVocab * sizeof(float)));
    MESA_CUDA_RETURN_IF_ERROR(attr);
    TruncatedSampleKernel<<<p.rows, kThreads, smem, p.stream>>>(p);
    MESA_CUDA_RETURN_IF_LAUNCH_FAILED("TruncatedSampleKernel");
  }
  if (p.any_logprobs) {
    if (p.logprobs == nullptr || p.top == nullptr) {
      return absl::InvalidArgumentError("SampleRows: logprobs asked for without output buffers");
    }
    LogprobsKernel<<<p.rows, kThreads, 0, p.stream>>>(p);
    MESA_CUDA_RETURN_IF_LAUNCH_FAILED("LogprobsKernel");
  }
  return absl::OkStatus();
}

}  // namespace mesa::gpu
