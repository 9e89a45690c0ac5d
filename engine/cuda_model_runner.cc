#include "engine/cuda_model_runner.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/cuda_runner_impl.h"

namespace mesa {
namespace cuda_runner {

static_assert(gpu::kMaxTopLogprobs == kMaxDeviceTopLogprobs, "one limit for both layers");
static_assert(sizeof(gpu::TopLogprob) == sizeof(TokenLogprob), "same (token, logprob) layout");

absl::Status CudaModelRunnerImpl::Init() {
  MESA_ASSIGN_OR_RETURN(const int devices, gpu::CudaDeviceCount());
  if (options_.device < 0 || options_.device >= devices) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", options_.device,
                                                   " does not exist (", devices, " found)"));
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  if (c_.head_dim > gpu::kMaxDecodeHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", c_.head_dim,
                                                   " exceeds the decode kernel's limit ",
                                                   gpu::kMaxDecodeHeadDim));
  }
  const bool auto_slots = options_.num_slots == 0;
  const int32_t slot_bound = auto_slots ? options_.max_auto_slots : options_.num_slots;
  max_batch_ = options_.max_decode_batch > 0 ? options_.max_decode_batch : slot_bound;
  max_batch_ = std::min<int64_t>(max_batch_, 65535);  // the kernels' grid.y limit
  prefill_rows_ = std::max<int64_t>(gpu::kPrefillChunk, options_.max_prefill_tokens /
                                                            gpu::kPrefillChunk * gpu::kPrefillChunk);
  ws_rows_ = std::max(max_batch_, prefill_rows_);
  // The stream and cuBLAS handle first: they take device memory of their own, which the free
  // figure below must already exclude.
  MESA_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  MESA_ASSIGN_OR_RETURN(cublas_, gpu::CublasHandle::Create());

  ArenaLayout weight_arena, workspace_arena;
  wo_ = LayOutWeights(w_, weight_arena);
  ws_ = LayOutWorkspace(c_, ws_rows_, workspace_arena);
  plan_.weight_bytes = weight_arena.bytes();
  plan_.workspace_bytes = workspace_arena.bytes();
  plan_.state_bytes_per_slot = slot_floats_ * sizeof(float);
  plan_.reserve_bytes = options_.reserve_bytes;
  size_t free_bytes = 0, total_bytes = 0;
  MESA_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (auto_slots) {
    MESA_ASSIGN_OR_RETURN(options_.num_slots, CudaSlotsThatFit(plan_, free_bytes, slot_bound));
  }
  plan_.num_slots = options_.num_slots;
  MESA_RETURN_IF_ERROR(CheckCudaMemoryPlan(plan_, free_bytes));
  positions_.assign(options_.num_slots, 0);  // after the check: num_slots may be absurd

  MESA_ASSIGN_OR_RETURN(weights_, DeviceBuffer::Allocate(plan_.weight_bytes));
  MESA_RETURN_IF_ERROR(weight_arena.Upload(weights_));
  MESA_ASSIGN_OR_RETURN(workspace_, DeviceBuffer::Allocate(plan_.workspace_bytes));
  MESA_RETURN_IF_ERROR(workspace_.Zero());
  MESA_ASSIGN_OR_RETURN(states_, DeviceBuffer::Allocate(plan_.state_bytes_per_slot *
                                                        static_cast<size_t>(options_.num_slots)));
  MESA_RETURN_IF_ERROR(states_.Zero());
  // DeviceBuffer copies and memsets go to the legacy default stream, which a non-blocking
  // stream does not wait for (and cudaMemset returns before it is done): wait here, once.
  MESA_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  ReleaseHostData(w_);

  hs_ = HostStaging::For(c_, ws_rows_, ws_.args_bytes);
  MESA_RETURN_IF_ERROR(host_.Allocate(hs_.bytes));
  ps_ = HostStaging::For(c_, max_batch_, ws_.args_bytes, /*started=*/true);
  for (PipelinedBuffer& p : pipelined_) {
    MESA_RETURN_IF_ERROR(p.host.Allocate(ps_.bytes));
    MESA_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&p.done, cudaEventDisableTiming));
  }

  // Warm-up: all-pad steps (no state is read or written) at every bucket, twice with CUDA
  // graphs (the first runs eagerly, the second captures), so that lazy kernel loading,
  // cuBLASLt's per-shape plans and every graph are made here rather than on a request.
  for (int64_t b = 1; b <= max_batch_; b = CudaDecodeBucket(b, max_batch_) + 1) {
    const int64_t bucket = CudaDecodeBucket(b, max_batch_);
    std::vector<DecodeRow> pads(bucket);
    DecodeResult ignored;
    for (int pass = 0; pass < (options_.cuda_graphs ? 2 : 1); ++pass) {
      MESA_RETURN_IF_ERROR(DecodeChunk(pads, {}, true, 0, &ignored));
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::ResetSlot(SlotId slot) {
  MESA_RETURN_IF_ERROR(Enter());
  MESA_RETURN_IF_ERROR(CheckSlot(slot));
  absl::Status s = [&]() -> absl::Status {
    // Stream-ordered, no wait: a started step that still uses the slot runs first, and
    // whatever is enqueued next (a new sequence's prefill) sees zeros.
    MESA_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(SlotState(slot), 0, slot_floats_ * sizeof(float), stream_));
    return absl::OkStatus();
  }();
  MESA_RETURN_IF_ERROR(NoteFailure(std::move(s)));
  positions_[slot] = 0;
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::ReadSlotState(SlotId slot, absl::Span<float> out) {
  MESA_RETURN_IF_ERROR(Enter());
  MESA_RETURN_IF_ERROR(CheckSlot(slot));
  if (static_cast<int64_t>(out.size()) != slot_floats_) {
    return absl::InvalidArgumentError(absl::StrCat("ReadSlotState: output has ", out.size(),
                                                   " floats, a slot has ", slot_floats_));
  }
  absl::Status s = [&]() -> absl::Status {
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data(), SlotState(slot),
                                              slot_floats_ * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream_));
    MESA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    return absl::OkStatus();
  }();
  return NoteFailure(std::move(s));
}

void CudaModelRunnerImpl::CopyStats(const char* host, const HostStaging& hs, int64_t rows,
                                    int64_t src_row, int64_t count, int64_t dst_row,
                                    CgStats* stats) const {
  const int64_t L = c_.num_hidden_layers, H = c_.num_heads;
  const auto* iters = reinterpret_cast<const int32_t*>(host + hs.iters);
  const auto* residual = reinterpret_cast<const float*>(host + hs.residual);
  for (int64_t l = 0; l < L; ++l) {
    for (int64_t r = 0; r < count; ++r) {
      for (int64_t h = 0; h < H; ++h) {
        const int64_t idx = stats->index(static_cast<int32_t>(dst_row + r), static_cast<int32_t>(l),
                                         static_cast<int32_t>(h));
        const int64_t src = (l * rows + src_row + r) * H + h;
        stats->iters[idx] = iters[src];
        stats->residual[idx] = residual[src];
      }
    }
  }
}

}  // namespace cuda_runner

absl::StatusOr<std::unique_ptr<CudaModelRunner>> CreateCudaModelRunner(
    MesaWeights weights, const CudaRunnerOptions& options) {
  if (options.num_slots < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_slots must be at least 1 (or 0: as many as fit), got ", options.num_slots));
  }
  if (options.num_slots == 0 && options.max_auto_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_auto_slots must be at least 1, got ", options.max_auto_slots));
  }
  if (options.max_decode_batch < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max_decode_batch must not be negative, got ",
                                                   options.max_decode_batch));
  }
  if (options.batch_invariant_rows < 0 || options.batch_invariant_rows > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("batch_invariant_rows ", options.batch_invariant_rows,
                                                   " is outside [0, 65535]"));
  }
  if (options.dependent_launch_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("dependent_launch_rows ", options.dependent_launch_rows,
                                                   " is negative"));
  }
  auto runner = std::make_unique<cuda_runner::CudaModelRunnerImpl>(std::move(weights), options);
  MESA_RETURN_IF_ERROR(runner->Init());
  return std::unique_ptr<CudaModelRunner>(std::move(runner));
}

}  // namespace mesa
