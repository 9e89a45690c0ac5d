// mesaserve-bench model: whole-model prefill and decode steps of the CUDA runner
// (engine/cuda_model_runner.h) against the card's floors, measured in the same run: a decode
// step must read the weights (everything but the embedding table) and read and write every
// row's recurrent state, at the device-to-device copy bandwidth; a prefill must do the dense
// projections' 2 x parameters x tokens FLOPs, at the rate of a large bf16 cuBLASLt GEMM. Links
// the engine and the checkpoint loader but no gRPC, sentencepiece or protobuf, so it runs on a
// bare CUDA machine.
//
//   mesaserve-bench model --model DIR       a checkpoint in fla's layout (e.g. the bundled one)
//   mesaserve-bench model --random-1.3b     fla's MesaNet defaults with random bf16 weights
//   [--batches 1,8,64,256] [--steps 20] [--eager] [--prefill 2048]
//   [--prefill-segment N] [--prefill-seqs S] [--batch-invariant-rows R] [--dependent-launch-rows N]
//   (--eager: no CUDA graphs; --dependent-launch-rows N: steps of up to N rows launch their
//   kernels dependently, 0 = none, CudaRunnerOptions::dependent_launch_rows; --prefill T: also time one T-token prefill at B = 1, 0 = skip;
//   --prefill-segment: the runner's longest prefill segment, CudaRunnerOptions::max_prefill_tokens;
//   --prefill-seqs S: the T tokens as S prompts of T / S in S slots, in one Prefill call (packed
//   launches), and also as one call per prompt; --batch-invariant-rows R: decode GEMMs with the
//   algorithm chosen for R rows at every batch, CudaRunnerOptions::batch_invariant_rows)
//
// A step is one ModelRunner::DecodeAndChoose call as the engine makes it for greedy requests:
// the per-row tables go up, every layer runs, the tokens are chosen on the device, the token ids
// and the CG statistics come back, the stream is synchronised. Median wall time over `steps` steps after 3 warm-up steps, each row in its own
// slot, states carried over from step to step (all slots start empty).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/half.h"
#include "engine/cuda_model_runner.h"
#include "kernels/cuda/gemm.h"
#include "models/checkpoint.h"
#include "tools/bench/bench_commands.h"

namespace mesa {
namespace {

[[noreturn]] void Die(const std::string& msg) {
  std::fprintf(stderr, "mesa_model_bench: %s\n", msg.c_str());
  std::exit(1);
}

struct Args {
  std::string model;
  bool random_13b = false;
  bool eager = false;  // no CUDA graphs
  int dependent_launch_rows = kCudaDependentLaunchRows;
  int prefill = 2048;  // prompt length of the prefill timing (0: none)
  int prefill_segment = 0;  // 0: the runner's default
  int prefill_seqs = 1;
  int batch_invariant_rows = 0;
  std::vector<int> batches = {1, 8, 64, 256};
  int steps = 20;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
    if (flag == "--model" && value != nullptr) {
      a.model = value;
      ++i;
    } else if (flag == "--random-1.3b") {
      a.random_13b = true;
    } else if (flag == "--eager") {
      a.eager = true;
    } else if (flag == "--dependent-launch-rows" && value != nullptr &&
               absl::SimpleAtoi(value, &a.dependent_launch_rows) && a.dependent_launch_rows >= 0) {
      ++i;
    } else if (flag == "--prefill" && value != nullptr && absl::SimpleAtoi(value, &a.prefill) && a.prefill >= 0) {
      ++i;
    } else if (flag == "--prefill-segment" && value != nullptr &&
               absl::SimpleAtoi(value, &a.prefill_segment) && a.prefill_segment > 0) {
      ++i;
    } else if (flag == "--prefill-seqs" && value != nullptr &&
               absl::SimpleAtoi(value, &a.prefill_seqs) && a.prefill_seqs > 0) {
      ++i;
    } else if (flag == "--batch-invariant-rows" && value != nullptr &&
               absl::SimpleAtoi(value, &a.batch_invariant_rows) && a.batch_invariant_rows >= 0) {
      ++i;
    } else if (flag == "--steps" && value != nullptr && absl::SimpleAtoi(value, &a.steps) && a.steps > 0) {
      ++i;
    } else if (flag == "--batches" && value != nullptr) {
      a.batches.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int b = 0;
        if (!absl::SimpleAtoi(part, &b) || b <= 0) Die("--batches: '" + std::string(part) + "' is not a positive integer");
        a.batches.push_back(b);
      }
      ++i;
    } else {
      Die("usage: mesaserve-bench model (--model DIR | --random-1.3b) [--batches 1,8,64,256] [--steps N] [--eager] [--prefill T] [--prefill-segment N] [--prefill-seqs S] [--batch-invariant-rows R] [--dependent-launch-rows N]");
    }
  }
  if (a.model.empty() == !a.random_13b) Die("give exactly one of --model DIR and --random-1.3b");
  return a;
}

// Fast deterministic uniform values in [-scale, scale) (xorshift; quality is irrelevant here).
struct Rng {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  float Next(float scale) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return scale * (static_cast<float>(s >> 40) / 8388608.0f - 1.0f);
  }
};

WeightMatrix RandomMatrix(Rng& rng, int64_t rows, int64_t cols, float scale) {
  WeightMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.type = ScalarType::kBf16;
  m.half.resize(static_cast<size_t>(rows) * cols);
  for (uint16_t& v : m.half) v = FloatToBf16(rng.Next(scale));
  return m;
}

// fla's MesaNet defaults (performance-targets.md's "1.3B"): hidden 2048, 24 layers, 16 x 128,
// MLP 5632, vocab 32000, untied, conv 4, bf16; weights uniform with a 1/sqrt(fan-in) scale.
MesaWeights Random13b() {
  MesaWeights w;
  MesaConfig& c = w.config;
  c.intermediate_size = 5632;
  const int64_t d = c.hidden_size, dk = c.key_dim(), h = c.num_heads, im = c.intermediate_size;
  Rng rng;
  const float sd = 1.0f / std::sqrt(static_cast<float>(d));
  w.embeddings = RandomMatrix(rng, c.vocab_size, d, 0.02f);
  w.lm_head = RandomMatrix(rng, c.vocab_size, d, sd);
  w.final_norm.assign(d, 1.0f);
  const InProjLayout lay = InProjLayout::For(c);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    MesaLayerWeights lw;
    lw.attn_norm.assign(d, 1.0f);
    lw.in_proj = RandomMatrix(rng, lay.rows, d, sd);
    lw.a_bias.assign(h, 3.0f);  // decay sigmoid(3) = 0.95
    lw.b_bias.assign(h, 0.0f);
    lw.lambda.assign(h * c.head_dim, 0.25f + 0.6931f);  // softplus(0) + lower bound
    lw.q_conv.resize(dk * c.conv_size);
    lw.k_conv.resize(dk * c.conv_size);
    for (float& v : lw.q_conv) v = rng.Next(0.5f);
    for (float& v : lw.k_conv) v = rng.Next(0.5f);
    lw.o_norm.assign(c.head_dim, 1.0f);
    lw.o_proj = RandomMatrix(rng, d, dk, 1.0f / std::sqrt(static_cast<float>(dk)));
    lw.mlp_norm.assign(d, 1.0f);
    lw.gate_up = RandomMatrix(rng, 2 * im, d, sd);
    lw.down = RandomMatrix(rng, d, im, 1.0f / std::sqrt(static_cast<float>(im)));
    w.layers.push_back(std::move(lw));
  }
  return w;
}

// Dense bf16 GEMM rate (FLOP/s) of this card through the runner's own GEMM path (cuBLASLt,
// fp32 accumulation): the median of 10 products of 8192 x 8192 x 8192.
double GemmRate() {
  constexpr int64_t n = 8192;
  auto handle = gpu::CublasHandle::Create();
  if (!handle.ok()) Die(handle.status().ToString());
  void *x = nullptr, *w = nullptr, *y = nullptr;
  if (cudaMalloc(&x, n * n * 2) != cudaSuccess || cudaMalloc(&w, n * n * 2) != cudaSuccess ||
      cudaMalloc(&y, n * n * 4) != cudaSuccess) {
    Die("cudaMalloc failed");
  }
  cudaMemset(x, 0, n * n * 2);
  cudaMemset(w, 0, n * n * 2);
  gpu::GemmParams p;
  p.m = p.n = p.k = n;
  p.x = x;
  p.w = w;
  p.y = y;
  std::vector<double> t;
  for (int i = 0; i < 12; ++i) {
    cudaDeviceSynchronize();
    const auto t0 = std::chrono::steady_clock::now();
    const absl::Status s = gpu::Gemm(*handle, p);
    if (!s.ok()) Die(s.ToString());
    cudaDeviceSynchronize();
    if (i >= 2) t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  cudaFree(x);
  cudaFree(w);
  cudaFree(y);
  std::sort(t.begin(), t.end());
  return 2.0 * n * n * n / t[t.size() / 2];
}

double CopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) Die("cudaMalloc failed");
  cudaMemset(a, 0, bytes);
  std::vector<double> t;
  for (int i = 0; i < 15; ++i) {
    cudaDeviceSynchronize();
    const auto t0 = std::chrono::steady_clock::now();
    cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
    cudaDeviceSynchronize();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  cudaFree(a);
  cudaFree(b);
  std::sort(t.begin(), t.end());
  return 2.0 * bytes / t[t.size() / 2];
}

}  // namespace

namespace bench {

int ModelMain(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) Die("no usable CUDA device");
  const double bw = CopyBandwidth();
  const double gemm_rate = GemmRate();

  absl::StatusOr<MesaWeights> weights = args.random_13b ? absl::StatusOr<MesaWeights>(Random13b())
                                                         : LoadMesaWeights(args.model);
  if (!weights.ok()) Die(weights.status().ToString());
  const MesaConfig config = weights->config;
  const double read_bytes = static_cast<double>(weights->bytes() - weights->embeddings.bytes() +
                                                (config.tie_word_embeddings ? weights->embeddings.bytes() : 0));
  double dense_params = 0.0;  // per-layer projection weights (lm_head runs for one row only)
  for (const MesaLayerWeights& l : weights->layers) {
    for (const WeightMatrix* m : {&l.in_proj, &l.o_proj, &l.gate_up, &l.down}) {
      dense_params += static_cast<double>(m->rows) * m->cols;
    }
  }
  const int max_b = *std::max_element(args.batches.begin(), args.batches.end());
  CudaRunnerOptions options;
  options.num_slots = std::max(max_b, args.prefill_seqs);
  options.cuda_graphs = !args.eager;
  options.dependent_launch_rows = args.dependent_launch_rows;
  options.batch_invariant_rows = args.batch_invariant_rows;
  if (args.prefill_segment > 0) options.max_prefill_tokens = args.prefill_segment;
  auto runner = CreateCudaModelRunner(std::move(*weights), options);
  if (!runner.ok()) Die(runner.status().ToString());
  const double state_bytes = static_cast<double>((*runner)->state_bytes_per_slot());

  std::printf("# mesaserve-bench model on %s: %s, %s, dependent launch up to %d rows\n\ncopy bandwidth (read + write): %.0f GB/s; "
              "bf16 GEMM %.0f TFLOP/s; weights read per step %.3f GB; state %.1f MB per sequence\n\n",
              prop.name, args.random_13b ? "random 1.3B (fla defaults)" : args.model.c_str(),
              args.eager ? "eager launches"
              : args.batch_invariant_rows > 0
                  ? absl::StrCat("CUDA graphs, decode GEMMs pinned to ", args.batch_invariant_rows, " rows").c_str()
                  : "CUDA graphs",
              args.dependent_launch_rows, bw / 1e9, gemm_rate / 1e12, read_bytes / 1e9, state_bytes / 1e6);
  if (args.prefill > 0) {
    // The dense projections' FLOPs (every weight matrix but the tables, once per token) at the
    // measured GEMM rate: what no prefill can beat (the chunk kernel's work comes on top).
    const double prefill_floor_s = 2.0 * dense_params * args.prefill / gemm_rate;
    // S prompts (the last takes the remainder), slot s for prompt s.
    const int S = std::min(args.prefill_seqs, args.prefill);
    std::vector<std::vector<int32_t>> prompts(S);
    for (int i = 0; i < args.prefill; ++i) {
      prompts[std::min(i / (args.prefill / S), S - 1)].push_back((31 * i + 7) % config.vocab_size);
    }
    // Median of 3 of all prompts from fresh slots, in one call or in one call per prompt.
    auto time_prefill = [&](const CgControl& cg, bool one_call) {
      std::vector<double> t;
      for (int rep = 0; rep < 3; ++rep) {
        std::vector<PrefillRequest> reqs(S);
        for (int s = 0; s < S; ++s) {
          if (!(*runner)->ResetSlot(s).ok()) Die("ResetSlot failed");
          reqs[s].slot = s;
          reqs[s].tokens = prompts[s];
          reqs[s].cg = cg;
        }
        std::vector<PrefillResult> res(S);
        const auto t0 = std::chrono::steady_clock::now();
        if (one_call) {
          const absl::Status st = (*runner)->Prefill(reqs, absl::MakeSpan(res));
          if (!st.ok()) Die(st.ToString());
        } else {
          for (int s = 0; s < S; ++s) {
            const absl::Status st = (*runner)->Prefill({&reqs[s], 1}, {&res[s], 1});
            if (!st.ok()) Die(st.ToString());
          }
        }
        t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(t.begin(), t.end());
      return t[1];
    };
    for (const CgControl& cg : {CgControl{CgMode::kFixed, 30, 0.0f}, CgControl{CgMode::kAdaptive, 30, 1e-3f}}) {
      const char* name = cg.mode == CgMode::kFixed ? "fixed 30" : "adaptive 1e-3";
      const double t = time_prefill(cg, true);
      if (S == 1) {
        std::printf("prefill of %d tokens, B = 1, segments of %d, CG %s: %.1f ms (median of 3; %.0f tokens/s); "
                    "GEMM floor %.2f ms, %.1fx\n",
                    args.prefill, options.max_prefill_tokens, name, 1e3 * t, args.prefill / t,
                    1e3 * prefill_floor_s, t / prefill_floor_s);
      } else {
        const double each = time_prefill(cg, false);
        std::printf("prefill of %d prompts of %d tokens, segments of %d, CG %s: one call %.1f ms "
                    "(%.0f tokens/s), one call per prompt %.1f ms (median of 3)\n",
                    S, args.prefill / S, options.max_prefill_tokens, name, 1e3 * t,
                    args.prefill / t, 1e3 * each);
      }
    }
    std::printf("\n");
  }
  std::printf("| B | CG | ms per step | tokens/s | mean CG steps | floor ms | x floor |\n");
  std::printf("|---:|---|---:|---:|---:|---:|---:|\n");
  struct Case {
    const char* name;
    CgControl cg;
  };
  const Case cases[] = {{"fixed 30", {CgMode::kFixed, 30, 0.0f}},
                        {"adaptive 1e-3", {CgMode::kAdaptive, 30, 1e-3f}}};
  for (int b : args.batches) {
    for (const Case& c : cases) {
      std::vector<DecodeRow> rows(b);
      for (int i = 0; i < b; ++i) {
        if (!(*runner)->ResetSlot(i).ok()) Die("ResetSlot failed");
        rows[i] = DecodeRow{i, (7 * i + 11) % config.vocab_size, c.cg};
      }
      // Greedy choices on the device, as the engine asks for greedy requests.
      PlainChoice greedy;
      greedy.kind = PlainChoice::Kind::kGreedy;
      greedy.valid_vocab = config.vocab_size;
      const std::vector<PlainChoice> choices(b, greedy);
      DecodeResult result;
      std::vector<double> t;
      double iters = 0.0;
      for (int s = 0; s < args.steps + 3; ++s) {
        const auto t0 = std::chrono::steady_clock::now();
        const absl::Status st = (*runner)->DecodeAndChoose(rows, choices, &result);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (!st.ok()) Die(st.ToString());
        if (s >= 3) t.push_back(dt);
        for (int i = 0; i < b; ++i) rows[i].token = result.tokens[i];  // fed back, as greedy decoding does
        if (s == args.steps + 2) {
          double sum = 0.0;
          for (int32_t x : result.stats.iters) sum += x;
          iters = result.stats.iters.empty() ? 0.0 : sum / result.stats.iters.size();
        }
      }
      std::sort(t.begin(), t.end());
      const double ms = 1e3 * t[t.size() / 2];
      const double floor_ms = 1e3 * (read_bytes + 2.0 * state_bytes * b) / bw;
      std::printf("| %d | %s | %.3f | %.0f | %.1f | %.3f | %.2f |\n", b, c.name, ms, b / (ms * 1e-3),
                  iters, floor_ms, ms / floor_ms);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace bench
}  // namespace mesa
