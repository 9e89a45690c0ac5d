// The CUDA backend (docs/cuda-backend.md): the CPU runner's decode sequence on the kernels of
// kernels/cuda, with the weights uploaded once in the model dtype and the state pool in device
// memory, in the CPU runner's slot layout (fp32 H_kk, H_kv per layer and head, conv states).
// Every device allocation happens at creation; Decode only launches work and copies.
//
// Prefill runs the chunked form (spec section 4) through kernels/cuda/mesa_prefill.h, whose
// first version walks a sequence's chunks in order in one block per head (correct, not yet
// fast: see docs/cuda-backend.md).
//
// This header needs no CUDA headers: tools that only pick a backend can include it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/model_runner.h"
#include "models/mesa_weights.h"

namespace mesa {

// Rows up to which decode steps launch dependently by default (CudaRunnerOptions). H200,
// random 1.3B, steps alternated in one call (docs/benchmarks.md): batch 1 10-12 % faster,
// 2 and 4 3-5 %; at 8 and above it gained 0-3 % except batch 8 with 30 fixed CG steps, 3.5 %
// slower, so larger steps keep ordinary launches.
inline constexpr int32_t kCudaDependentLaunchRows = 4;

struct CudaRunnerOptions {
  // State slots; 0 = as many as fit the device's free memory after the weights, workspaces
  // and reserve_bytes, at most max_auto_slots (the runner's num_slots() tells the result).
  int32_t num_slots = 4;
  int32_t max_auto_slots = 256;
  // Rows of the largest decode step the workspaces are sized for (0: num_slots). A larger
  // batch is run in pieces of this size.
  int32_t max_decode_batch = 0;
  int32_t device = 0;  // CUDA device ordinal
  // Longest prefill segment in tokens (rounded down to a multiple of the 64-token chunk, at
  // least 64); longer prompts run in segments with the same result. Sizes the workspaces.
  // 2048: a 2048-token prompt of the 1.3B took 35.7 ms in one segment against 39.9 ms in four
  // of 512 (H200, mesaserve-bench model --prefill-segment, docs/benchmarks.md).
  int32_t max_prefill_tokens = 2048;
  // Replay decode steps as CUDA graphs, one per batch bucket (CudaDecodeBucket), captured at
  // creation (off: every step launches its kernels one by one; same results).
  bool cuda_graphs = true;
  // Decode steps of at most this many rows (their bucket) launch their kernels as programmatic
  // dependent launches (kernels/cuda/dependent_launch.h): each may start while the previous
  // one finishes, and the one-row GEMMs and the decode kernel load their weights and states
  // before waiting for it. 0: never (every kernel starts after the previous one has finished).
  // Same results either way.
  int32_t dependent_launch_rows = kCudaDependentLaunchRows;
  // 0: each GEMM uses cuBLASLt's choice for its row count, so a row's logits may change in
  // their last bits with the batch (the decode bucket, or the prompts packed into a prefill
  // launch). > 0: every decode GEMM uses the algorithm (without split-K) chosen for this many
  // rows, and every prefill GEMM the one chosen for the longest prefill segment, so each
  // sequence's logits and states are the same bit for bit whatever else runs with it (greedy
  // tokens never depend on the batch).
  int32_t batch_invariant_rows = 0;
  // Device memory left free after creation for what the runner does not allocate itself and
  // cannot count exactly: the CUDA context's growth, lazily loaded kernels and cuBLASLt's
  // internal allocations (its GEMM workspace is fixed and allocated before the free-memory
  // reading, so it is already excluded).
  size_t reserve_bytes = size_t{256} << 20;
};

// The batch_invariant_rows a batch-invariant server uses (serve --batch-invariant), whatever its
// slot count. 256 against 64 on an H200 (random 1.3B, 2026-11-26): 3.09 against 5.35 ms per
// decode step at B = 1, 16.6 against 20.7 ms at B = 256 (not pinned: 2.38 and 16.9 ms).
inline constexpr int32_t kCudaBatchInvariantRows = 256;

// The row count a decode step of `rows` rows runs at: pad rows fill it up to 1, 2, 4, then a
// multiple of 8 up to 64, then of 32 (never past max_batch). A step's cost barely changes with
// a few pad rows (their state is never touched; the GEMMs' m grows a little), and it bounds the
// CUDA graphs to about 17 for 256 rows, all captured at creation, none on the request path.
int64_t CudaDecodeBucket(int64_t rows, int64_t max_batch);

// Device memory the runner needs, by use (bytes).
struct CudaMemoryPlan {
  size_t weight_bytes = 0;
  size_t workspace_bytes = 0;  // activations, pointer tables, statistics for max_decode_batch
  size_t state_bytes_per_slot = 0;
  int32_t num_slots = 0;
  size_t reserve_bytes = 0;

  size_t total_bytes() const {
    return weight_bytes + workspace_bytes + state_bytes_per_slot * num_slots + reserve_bytes;
  }
};

// Checks that `plan` fits `free_bytes` (from cudaMemGetInfo). Otherwise kResourceExhausted
// naming the bytes needed, the bytes free and how many slots would fit. Device-free.
absl::Status CheckCudaMemoryPlan(const CudaMemoryPlan& plan, size_t free_bytes);

// The slots that fit `free_bytes` next to the plan's weights, workspaces and reserve (its
// num_slots is ignored), at most `cap`; kResourceExhausted with the numbers when not even one
// fits. Device-free.
absl::StatusOr<int32_t> CudaSlotsThatFit(const CudaMemoryPlan& plan, size_t free_bytes, int32_t cap);

// Bytes of recurrent and conv state one sequence needs (fp32; the CPU runner's slot layout).
size_t CudaStateBytesPerSlot(const MesaConfig& config);

class CudaModelRunner : public ModelRunner {
 public:
  // The slot's state as fp32, in the CPU runner's slot layout: per layer H_kk [H, K, K],
  // H_kv [H, K, K], conv_q [W-1, H*K], conv_k [W-1, H*K]. `out` has state_bytes_per_slot()/4
  // elements. For tests and debugging (a synchronous copy).
  virtual absl::Status ReadSlotState(SlotId slot, absl::Span<float> out) = 0;
  virtual const CudaMemoryPlan& memory_plan() const = 0;
};

// Uploads the weights, allocates the state pool and workspaces and runs a warm-up step (so that
// lazy allocations happen now, not on the first request). Errors: kUnavailable without a usable
// device, kResourceExhausted when the pool does not fit (see CheckCudaMemoryPlan),
// kInvalidArgument for options or shapes the kernels do not take.
absl::StatusOr<std::unique_ptr<CudaModelRunner>> CreateCudaModelRunner(
    MesaWeights weights, const CudaRunnerOptions& options);

}  // namespace mesa
