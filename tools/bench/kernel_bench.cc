// mesaserve-bench kernels: times the fused decode kernel (kernels/cuda/mesa_decode.cu) for one layer
// step against the card's measured copy bandwidth, the byte floor of that step, and the chunked
// prefill (kernels/cuda/mesa_prefill.cu) of one layer at B = 1 with its tensor-core FLOP rate. Links only the
// kernels and base (no gRPC, sentencepiece or protobuf), so it runs on a bare CUDA machine.
//
//   mesaserve-bench kernels [--heads 16] [--head-dim 128] [--batches 1,8,64,256] [--reps 50]
//                           [--prefill 2048,8192] (prompt lengths; 0 = no prefill timing)
//                           [--prefill-seqs 1,16] (the tokens split into that many sequences,
//                                 packed in one launch, and also timed as one launch each)
//
// Each case: 5 warm-up launches, then `reps` launches each timed with CUDA events; the median
// is printed. The states are realistic SPD systems (a decayed sum of l2-normalised rank-1
// updates, lambda 0.25), one head's matrices copied to every (row, head), so adaptive CG does
// what it would on such a state. The kernel updates the states in place; the decay keeps them
// bounded over the repetitions.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "base/half.h"
#include "kernels/cg_control.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/mesa_decode.h"
#include "kernels/cuda/mesa_prefill.h"
#include "tools/bench/bench_commands.h"

namespace mesa::gpu {
namespace {

#define BENCH_CHECK(expr)                                                       \
  do {                                                                          \
    const absl::Status s_ = (expr);                                             \
    if (!s_.ok()) {                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, s_.ToString().c_str()); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)
#define BENCH_CUDA(expr)                                                                 \
  do {                                                                                   \
    const cudaError_t e_ = (expr);                                                       \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

struct Args {
  int heads = 16;
  int head_dim = 128;
  std::vector<int> batches = {1, 8, 64, 256};
  std::vector<int> prefill = {2048, 8192};
  std::vector<int> prefill_seqs = {1};
  int reps = 50;
};

std::vector<int> ParseList(const std::string& flag, const char* value, bool allow_zero) {
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(value, ',')) {
    int b = 0;
    if (!absl::SimpleAtoi(part, &b) || b < 0 || (b == 0 && !allow_zero)) {
      std::fprintf(stderr, "%s: '%s' is not a %s integer\n", flag.c_str(), std::string(part).c_str(),
                   allow_zero ? "non-negative" : "positive");
      std::exit(2);
    }
    if (b > 0) out.push_back(b);
  }
  return out;
}

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    auto need = [&](int* out) {
      if (value == nullptr || !absl::SimpleAtoi(value, out) || *out <= 0) {
        std::fprintf(stderr, "%s needs a positive integer\n", flag.c_str());
        std::exit(2);
      }
      ++i;
    };
    if (flag == "--heads") {
      need(&a.heads);
    } else if (flag == "--head-dim") {
      need(&a.head_dim);
    } else if (flag == "--reps") {
      need(&a.reps);
    } else if (flag == "--batches" && value != nullptr) {
      a.batches = ParseList(flag, value, false);
      ++i;
    } else if (flag == "--prefill" && value != nullptr) {
      a.prefill = ParseList(flag, value, true);
      ++i;
    } else if (flag == "--prefill-seqs" && value != nullptr) {
      a.prefill_seqs = ParseList(flag, value, false);
      for (int s : a.prefill_seqs) {
        if (s > kMaxPackedSeqs) {
          std::fprintf(stderr, "--prefill-seqs: %d exceeds the %d sequences one launch takes\n", s,
                       kMaxPackedSeqs);
          std::exit(2);
        }
      }
      ++i;
    } else {
      std::fprintf(stderr,
                   "usage: mesaserve-bench kernels [--heads N] [--head-dim K] [--batches 1,8,64,256] [--reps N] [--prefill 2048,8192] [--prefill-seqs 1,16]\n");
      std::exit(2);
    }
  }
  return a;
}

// Median of `reps` event-timed runs of `fn` (microseconds), after 5 warm-up runs.
template <typename Fn>
double MedianMicros(int reps, Fn fn) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < 5; ++i) fn();
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(start));
    fn();
    BENCH_CUDA(cudaEventRecord(stop));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0.0f;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    t.push_back(1e3 * ms);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Device-to-device copy bandwidth (bytes read + written per second) of 1 GiB buffers.
double CopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  absl::StatusOr<DeviceBuffer> a = DeviceBuffer::Allocate(bytes);
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  BENCH_CHECK(a.status());
  BENCH_CHECK(b.status());
  BENCH_CHECK(a->Zero());
  const double us = MedianMicros(20, [&] {
    BENCH_CUDA(cudaMemcpyAsync(b->data(), a->data(), bytes, cudaMemcpyDeviceToDevice));
  });
  return 2.0 * bytes / (us * 1e-6);
}

// One head's state: H_kk = sum_t gamma^(T-t) k_t k_t^T (SPD), H_kv likewise with v_t.
void MakeHeadState(int K, std::vector<float>* hkk, std::vector<float>* hkv) {
  std::mt19937 rng(7);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  hkk->assign(static_cast<size_t>(K) * K, 0.0f);
  hkv->assign(static_cast<size_t>(K) * K, 0.0f);
  const float gamma = 0.98f;
  std::vector<float> k(K), v(K);
  for (int t = 0; t < 300; ++t) {
    double norm = 0.0;
    for (int i = 0; i < K; ++i) {
      k[i] = n01(rng);
      v[i] = n01(rng);
      norm += k[i] * k[i];
    }
    for (float& x : k) x /= static_cast<float>(std::sqrt(norm));
    for (int i = 0; i < K; ++i) {
      for (int j = 0; j < K; ++j) {
        (*hkk)[i * K + j] = gamma * (*hkk)[i * K + j] + k[i] * k[j];
        (*hkv)[i * K + j] = gamma * (*hkv)[i * K + j] + k[i] * v[j];
      }
    }
  }
}

std::vector<uint16_t> RandomBf16(std::mt19937& rng, size_t n, bool unit_rows, int row) {
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = n01(rng);
  if (unit_rows) {
    for (size_t r = 0; r < n / row; ++r) {
      double s = 0.0;
      for (int i = 0; i < row; ++i) s += x[r * row + i] * x[r * row + i];
      for (int i = 0; i < row; ++i) x[r * row + i] /= static_cast<float>(std::sqrt(s));
    }
  }
  std::vector<uint16_t> bits(n);
  for (size_t i = 0; i < n; ++i) bits[i] = FloatToBf16(x[i]);
  return bits;
}

DeviceBuffer AllocateOrDie(size_t bytes) {
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(bytes);
  BENCH_CHECK(b.status());
  return std::move(*b);
}

template <typename T>
DeviceBuffer UploadVec(const std::vector<T>& v) {
  DeviceBuffer b = AllocateOrDie(v.size() * sizeof(T));
  BENCH_CHECK(b.CopyFromHost(v.data(), v.size() * sizeof(T)));
  return b;
}

// Mean of the n int32 CG iteration counts in `iters` (device).
double MeanIters(const DeviceBuffer& iters, size_t n) {
  std::vector<int32_t> it(n);
  BENCH_CHECK(iters.CopyToHost(it.data(), n * sizeof(int32_t)));
  double mean = 0.0;
  for (int32_t x : it) mean += x;
  return mean / static_cast<double>(n);
}

struct CgCase {
  const char* name;
  CgControl cg;
};
// The decode table's CG settings; the prefill table takes the first four.
const CgCase kCgCases[] = {{"fixed 0", {CgMode::kFixed, 0, 0.0f}},
                           {"fixed 10", {CgMode::kFixed, 10, 0.0f}},
                           {"fixed 30", {CgMode::kFixed, 30, 0.0f}},
                           {"adaptive 1e-3", {CgMode::kAdaptive, 30, 1e-3f}},
                           {"adaptive 1e-2", {CgMode::kAdaptive, 30, 1e-2f}}};

void BenchDecode(const Args& a, double bandwidth) {
  const int H = a.heads, K = a.head_dim;
  const size_t head_floats = static_cast<size_t>(K) * K;
  const size_t slot_floats = head_floats * H;
  std::vector<float> hkk, hkv;
  MakeHeadState(K, &hkk, &hkv);
  std::printf("\n## Decode layer-step: %d heads x head_dim %d, bf16 q/k/v/o, fp32 states, lambda 0.25\n\n", H, K);
  std::printf("| B | CG | median us | mean CG steps | state GB/s | floor us | x floor |\n");
  std::printf("|---:|---|---:|---:|---:|---:|---:|\n");
  for (int B : a.batches) {
    std::vector<float> slot_kk(slot_floats), slot_kv(slot_floats);
    for (int h = 0; h < H; ++h) {
      std::copy(hkk.begin(), hkk.end(), slot_kk.begin() + h * head_floats);
      std::copy(hkv.begin(), hkv.end(), slot_kv.begin() + h * head_floats);
    }
    absl::StatusOr<DeviceBuffer> d_kk = DeviceBuffer::Allocate(slot_floats * 4 * B);
    absl::StatusOr<DeviceBuffer> d_kv = DeviceBuffer::Allocate(slot_floats * 4 * B);
    BENCH_CHECK(d_kk.status());
    BENCH_CHECK(d_kv.status());
    std::vector<float*> kk_ptrs(B), kv_ptrs(B);
    for (int b = 0; b < B; ++b) {
      BENCH_CHECK(d_kk->CopyFromHost(slot_kk.data(), slot_floats * 4, slot_floats * 4 * b));
      BENCH_CHECK(d_kv->CopyFromHost(slot_kv.data(), slot_floats * 4, slot_floats * 4 * b));
      kk_ptrs[b] = d_kk->as<float>() + slot_floats * b;
      kv_ptrs[b] = d_kv->as<float>() + slot_floats * b;
    }
    std::mt19937 rng(11 + B);
    DeviceBuffer p_kk = UploadVec(kk_ptrs), p_kv = UploadVec(kv_ptrs);
    DeviceBuffer q = UploadVec(RandomBf16(rng, static_cast<size_t>(B) * H * K, true, K));
    DeviceBuffer k = UploadVec(RandomBf16(rng, static_cast<size_t>(B) * H * K, true, K));
    DeviceBuffer v = UploadVec(RandomBf16(rng, static_cast<size_t>(B) * H * K, false, K));
    DeviceBuffer g = UploadVec(std::vector<float>(static_cast<size_t>(B) * H, std::log(0.98f)));
    DeviceBuffer beta = UploadVec(std::vector<float>(static_cast<size_t>(B) * H, 1.0f));
    DeviceBuffer lambda = UploadVec(std::vector<float>(static_cast<size_t>(H) * K, 0.25f));
    DeviceBuffer out = AllocateOrDie(static_cast<size_t>(B) * H * K * 2);
    DeviceBuffer iters = AllocateOrDie(static_cast<size_t>(B) * H * 4);
    for (const CgCase& c : kCgCases) {
      DeviceBuffer cg = UploadVec(std::vector<CgControl>(B, c.cg));
      MesaDecodeParams p;
      p.batch = B;
      p.num_heads = H;
      p.head_dim = K;
      p.h_kk = p_kk.as<float*>();
      p.h_kv = p_kv.as<float*>();
      p.q = q.data();
      p.k = k.data();
      p.v = v.data();
      p.log_decay = g.as<float>();
      p.beta = beta.as<float>();
      p.lambda = lambda.as<float>();
      p.cg = cg.as<CgControl>();
      p.out = out.data();
      p.act = ScalarType::kBf16;
      p.cg_iters = iters.as<int32_t>();
      const double us = MedianMicros(a.reps, [&] { BENCH_CHECK(MesaDecodeStep(p)); });
      const double mean = MeanIters(iters, static_cast<size_t>(B) * H);
      const double bytes = 2.0 * 2.0 * static_cast<double>(slot_floats) * 4.0 * B;  // 2 states, read+write
      const double floor_us = bytes / bandwidth * 1e6;
      std::printf("| %d | %s | %.1f | %.1f | %.0f | %.2f | %.1f |\n", B, c.name, us, mean,
                  bytes / (us * 1e-6) / 1e9, floor_us, us / floor_us);
    }
  }
}


// One layer's chunked prefill from empty states: q, k unit rows rounded to fp16 (as the
// mixer-input kernel leaves them), v bf16 values, decay exp(-0.05), beta 0.9, lambda 0.25. T
// tokens as S sequences of T / S (the last takes the remainder), all in one launch, and for
// S > 1 also one launch per sequence (what a runner without packing does).
// GFLOP/s counts the chunk products a CG step makes (scores, scores x k, state product: 2 C K
// (2 C + K) per chunk and head) times the mean CG steps, plus the readout's.
void BenchPrefill(const Args& a) {
  if (a.prefill.empty()) return;
  const int H = a.heads, K = a.head_dim;
  const size_t state_floats = static_cast<size_t>(H) * K * K;
  std::printf("\n## Chunked prefill, one layer: %d heads x head_dim %d, bf16 values, fp32 states\n\n", H, K);
  std::printf("| T | sequences | CG | median us (one launch) | mean CG steps | tokens/s | product GFLOP/s | one launch per sequence, us |\n");
  std::printf("|---:|---:|---|---:|---:|---:|---:|---:|\n");
  for (int T : a.prefill) {
    std::mt19937 rng(29 + T);
    const size_t n = static_cast<size_t>(T) * H * K;
    auto values = [&](bool unit_rows, bool fp16) {
      const std::vector<uint16_t> bits = RandomBf16(rng, n, unit_rows, K);
      std::vector<float> f(n);
      for (size_t i = 0; i < n; ++i) f[i] = fp16 ? RoundFp16(Bf16ToFloat(bits[i])) : Bf16ToFloat(bits[i]);
      return f;
    };
    DeviceBuffer q = UploadVec(values(true, true)), k = UploadVec(values(true, true)),
                 v = UploadVec(values(false, false));
    DeviceBuffer g = UploadVec(std::vector<float>(static_cast<size_t>(T) * H, -0.05f));
    DeviceBuffer beta = UploadVec(std::vector<float>(static_cast<size_t>(T) * H, 0.9f));
    DeviceBuffer lambda = UploadVec(std::vector<float>(static_cast<size_t>(H) * K, 0.25f));
    DeviceBuffer out = AllocateOrDie(n * 4);
    DeviceBuffer iters = AllocateOrDie(static_cast<size_t>(T) * H * 4);
    for (int S : a.prefill_seqs) {
      if (S > T) continue;
      std::vector<int> lens(S, T / S);
      lens.back() += T % S;
      int chunks = 0;
      for (int len : lens) chunks += (len + kPrefillChunk - 1) / kPrefillChunk;
      DeviceBuffer states = AllocateOrDie(2 * S * state_floats * 4);
      DeviceBuffer ws = AllocateOrDie(MesaPrefillWorkspaceBytes(H, K, chunks * kPrefillChunk));
      for (int ci = 0; ci < 4; ++ci) {
        const CgCase& c = kCgCases[ci];
        // Sequences [s0, s1) in one launch, their rows from row r0 on.
        auto params = [&](int s0, int s1, int r0) {
          MesaPrefillParams p;
          for (int s = s0; s < s1; ++s) {
            float* kk = states.as<float>() + 2 * s * state_floats;
            p.AddSequence(lens[s], kk, kk + state_floats, c.cg);
          }
          const int64_t ld = static_cast<int64_t>(H) * K;
          p.num_heads = H;
          p.head_dim = K;
          p.q = q.as<float>() + r0 * ld;
          p.k = k.as<float>() + r0 * ld;
          p.v = v.as<float>() + r0 * ld;
          p.ld_in = ld;
          p.log_decay = g.as<float>() + r0 * H;
          p.beta = beta.as<float>() + r0 * H;
          p.lambda = lambda.as<float>();
          p.value_rounding = Rounding::kBf16;
          p.out = out.as<float>() + r0 * ld;
          p.ld_out = ld;
          p.cg_iters = iters.as<int32_t>() + r0 * H;
          p.workspace_rows = chunks * kPrefillChunk;
          p.workspace = ws.data();
          return p;
        };
        const MesaPrefillParams packed = params(0, S, 0);
        const double us = MedianMicros(a.reps, [&] {
          BENCH_CHECK(states.Zero());
          BENCH_CHECK(MesaPrefill(packed));
        });
        const double mean = MeanIters(iters, static_cast<size_t>(T) * H);
        std::string separate = "-";
        if (S > 1) {
          std::vector<MesaPrefillParams> each;
          for (int s = 0, r0 = 0; s < S; r0 += lens[s], ++s) each.push_back(params(s, s + 1, r0));
          const double sep_us = MedianMicros(a.reps, [&] {
            BENCH_CHECK(states.Zero());
            for (const MesaPrefillParams& p : each) BENCH_CHECK(MesaPrefill(p));
          });
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%.1f", sep_us);
          separate = buf;
        }
        const double flops = static_cast<double>(chunks) * H * 2.0 * 64 * K * (2.0 * 64 + K) * (mean + 1.0);
        std::printf("| %d | %d | %s | %.1f | %.2f | %.0f | %.0f | %s |\n", T, S, c.name, us, mean,
                    T / (us * 1e-6), flops / (us * 1e-6) / 1e9, separate.c_str());
      }
    }
  }
}

}  // namespace
}  // namespace mesa::gpu

namespace mesa::bench {

int KernelsMain(int argc, char** argv) {
  using namespace mesa::gpu;
  const Args args = ParseArgs(argc, argv);
  int device = 0;
  cudaDeviceProp prop;
  if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    std::fprintf(stderr, "mesaserve-bench kernels: no usable CUDA device\n");
    return 1;
  }
  const double bw = CopyBandwidth();
  std::printf("# mesaserve-bench kernels on %s (%d SMs)\n\ncopy bandwidth (read + write): %.0f GB/s\n",
              prop.name, prop.multiProcessorCount, bw / 1e9);
  BenchDecode(args, bw);
  BenchPrefill(args);
  return 0;
}

}  // namespace mesa::bench
