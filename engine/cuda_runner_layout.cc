#include "engine/cuda_runner_layout.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/cuda_model_runner.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mesa_prefill.h"

namespace mesa {
namespace cuda_runner {

absl::Status ArenaLayout::Upload(gpu::DeviceBuffer& buffer) const {
  for (const Copy& c : copies_) MESA_RETURN_IF_ERROR(buffer.CopyFromHost(c.src, c.bytes, c.offset));
  return absl::OkStatus();
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_ != nullptr) cudaFreeHost(ptr_);  // errors cannot be reported from here
}

absl::Status PinnedBuffer::Allocate(size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  MESA_CUDA_RETURN_IF_ERROR(cudaMallocHost(&ptr_, bytes));
  gpu::CountAllocation();
  bytes_ = bytes;
  return absl::OkStatus();
}

LayerStateLayout StateLayoutFor(const MesaConfig& c) {
  const int64_t kk = static_cast<int64_t>(c.num_heads) * c.head_dim * c.head_dim;
  const int64_t conv = static_cast<int64_t>(c.conv_size - 1) * c.key_dim();
  LayerStateLayout l;
  l.h_kk = 0;
  l.h_kv = kk;
  l.conv_q = 2 * kk;
  l.conv_k = 2 * kk + conv;
  l.stride = 2 * kk + 2 * conv;
  return l;
}

void ReleaseHostData(MesaWeights& w) {
  auto release = [](WeightMatrix& m) {
    std::vector<uint16_t>().swap(m.half);
    std::vector<float>().swap(m.full);
  };
  release(w.embeddings);
  release(w.lm_head);
  for (MesaLayerWeights& l : w.layers) {
    release(l.in_proj);
    release(l.o_proj);
    release(l.gate_up);
    release(l.down);
  }
}

namespace {

template <typename T>
size_t AddVector(ArenaLayout& arena, const std::vector<T>& v) {
  return arena.Add(v.size() * sizeof(T), v.data());
}
size_t AddMatrix(ArenaLayout& arena, const WeightMatrix& m) { return arena.Add(m.bytes(), m.data()); }

}  // namespace

WeightOffsets LayOutWeights(const MesaWeights& w, ArenaLayout& arena) {
  WeightOffsets o;
  o.embeddings = AddMatrix(arena, w.embeddings);
  o.final_norm = AddVector(arena, w.final_norm);
  o.output = w.config.tie_word_embeddings ? o.embeddings : AddMatrix(arena, w.lm_head);
  for (const MesaLayerWeights& l : w.layers) {
    LayerWeightOffsets lo;
    lo.attn_norm = AddVector(arena, l.attn_norm);
    lo.in_proj = AddMatrix(arena, l.in_proj);
    lo.a_bias = AddVector(arena, l.a_bias);
    lo.b_bias = AddVector(arena, l.b_bias);
    lo.lambda = AddVector(arena, l.lambda);
    lo.q_conv = AddVector(arena, l.q_conv);
    lo.k_conv = AddVector(arena, l.k_conv);
    lo.o_norm = AddVector(arena, l.o_norm);
    lo.o_proj = AddMatrix(arena, l.o_proj);
    lo.mlp_norm = AddVector(arena, l.mlp_norm);
    lo.gate_up = AddMatrix(arena, l.gate_up);
    lo.down = AddMatrix(arena, l.down);
    o.layers.push_back(lo);
  }
  return o;
}

StepArgsLayout StepArgsLayout::For(int64_t layers, int64_t b) {
  StepArgsLayout a;
  a.tables = 0;
  a.cg = AlignUp(static_cast<size_t>(layers) * 4 * b * sizeof(float*));
  a.tokens = AlignUp(a.cg + b * sizeof(CgControl));
  a.choices = AlignUp(a.tokens + b * sizeof(int32_t));
  a.feed = AlignUp(a.choices + b * sizeof(gpu::RowChoice));
  a.bytes = a.feed + b * sizeof(int32_t);
  return a;
}

Workspace LayOutWorkspace(const MesaConfig& c, int64_t rows, ArenaLayout& arena) {
  const size_t act = c.dtype == ScalarType::kFp32 ? 4 : 2;
  const int64_t d = c.hidden_size, dk = c.key_dim(), inter = c.intermediate_size;
  const int64_t H = c.num_heads, L = c.num_hidden_layers;
  const int64_t proj_rows = InProjLayout::For(c).rows;
  Workspace ws;
  ws.x = arena.Add(rows * d * act);
  ws.u = arena.Add(rows * d * act);
  ws.proj = arena.Add(rows * proj_rows * sizeof(float));
  // q, k, v: the model dtype in decode, fp32 in prefill (what the chunk kernel reads).
  ws.q = arena.Add(rows * dk * sizeof(float));
  ws.k = arena.Add(rows * dk * sizeof(float));
  ws.v = arena.Add(rows * dk * sizeof(float));
  ws.z = arena.Add(rows * dk * act);
  ws.mix = arena.Add(rows * dk * act);
  ws.log_decay = arena.Add(rows * H * sizeof(float));
  ws.beta = arena.Add(rows * H * sizeof(float));
  ws.gemm_out = arena.Add(rows * d * sizeof(float));
  ws.mlp = arena.Add(rows * 2 * inter * sizeof(float));
  ws.swiglu = arena.Add(rows * inter * act);
  ws.logits = arena.Add(rows * static_cast<int64_t>(c.vocab_size) * sizeof(float));
  ws.iters = arena.Add(L * rows * H * sizeof(int32_t));
  ws.residual = arena.Add(L * rows * H * sizeof(float));
  ws.args_bytes = StepArgsLayout::For(L, rows).bytes;
  ws.args = arena.Add(ws.args_bytes);
  ws.chosen = arena.Add(rows * sizeof(int32_t));
  ws.seen = arena.Add(kSeenCapacity * sizeof(gpu::SeenEntry));
  ws.logprobs = arena.Add(rows * sizeof(float));
  ws.top = arena.Add(rows * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob));
  ws.prefill_choices = arena.Add(rows * sizeof(gpu::RowChoice));
  ws.prefill_chosen = arena.Add(rows * sizeof(int32_t));
  ws.prefill_logprobs = arena.Add(rows * sizeof(float));
  ws.prefill_top = arena.Add(rows * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob));
  ws.mix_f = arena.Add(rows * dk * sizeof(float));
  ws.prefill = arena.Add(gpu::MesaPrefillWorkspaceBytes(static_cast<int32_t>(H), c.head_dim,
                                                         static_cast<int32_t>(rows)));
  ws.prefill_max_tokens = rows;
  // The call's token ids [rows], then the rows whose logits it makes [rows]: one upload.
  ws.prefill_tokens = arena.Add(2 * rows * sizeof(int32_t));
  return ws;
}

HostStaging HostStaging::For(const MesaConfig& c, int64_t rows, size_t args_bytes, bool started) {
  const int64_t H = c.num_heads, L = c.num_hidden_layers;
  HostStaging s;
  s.args = 0;
  s.logits = AlignUp(args_bytes);
  s.iters = AlignUp(s.logits + (started ? 0 : rows * c.vocab_size * sizeof(float)));
  s.residual = AlignUp(s.iters + L * rows * H * sizeof(int32_t));
  s.chosen = AlignUp(s.residual + L * rows * H * sizeof(float));
  s.seen = AlignUp(s.chosen + rows * sizeof(int32_t));
  s.logprobs = AlignUp(s.seen + (started ? 0 : kSeenCapacity) * sizeof(gpu::SeenEntry));
  s.top = AlignUp(s.logprobs + rows * sizeof(float));
  s.prefill_choices = AlignUp(s.top + rows * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob));
  s.bytes = s.prefill_choices + (started ? 0 : rows * sizeof(gpu::RowChoice));
  return s;
}

gpu::RowChoice RowChoiceFor(const PlainChoice& c) {
  gpu::RowChoice rc;
  rc.kind = static_cast<int32_t>(c.kind);
  rc.temperature = c.temperature;
  rc.draw = c.draw;
  rc.valid_vocab = c.valid_vocab;
  rc.top_k = c.top_k;
  rc.top_p = c.top_p;
  rc.min_p = c.min_p;
  rc.top_logprobs = std::min(c.top_logprobs, gpu::kMaxTopLogprobs);
  if (!c.seen.empty()) {
    rc.repetition_penalty = c.repetition_penalty;
    rc.presence_penalty = c.presence_penalty;
    rc.frequency_penalty = c.frequency_penalty;
  }
  return rc;
}

}  // namespace cuda_runner

// The sizing functions of engine/cuda_model_runner.h.

int64_t CudaDecodeBucket(int64_t rows, int64_t max_batch) {
  int64_t bucket = rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4
                 : rows <= 64 ? (rows + 7) / 8 * 8 : (rows + 31) / 32 * 32;
  return std::max<int64_t>(rows, std::min(bucket, max_batch));
}

size_t CudaStateBytesPerSlot(const MesaConfig& c) {
  return static_cast<size_t>(cuda_runner::StateLayoutFor(c).stride) * c.num_hidden_layers * sizeof(float);
}

namespace {

// Bytes the plan needs besides its slots, and how many slots fit next to them in free_bytes.
size_t FixedBytes(const CudaMemoryPlan& plan) {
  return plan.weight_bytes + plan.workspace_bytes + plan.reserve_bytes;
}
size_t SlotsFitting(const CudaMemoryPlan& plan, size_t free_bytes) {
  const size_t fixed = FixedBytes(plan);
  return free_bytes > fixed && plan.state_bytes_per_slot > 0
             ? (free_bytes - fixed) / plan.state_bytes_per_slot
             : 0;
}

}  // namespace

absl::Status CheckCudaMemoryPlan(const CudaMemoryPlan& plan, size_t free_bytes) {
  if (plan.total_bytes() <= free_bytes) return absl::OkStatus();
  const size_t fit = SlotsFitting(plan, free_bytes);
  constexpr double kMiB = 1024.0 * 1024.0;
  return absl::ResourceExhaustedError(absl::StrCat(
      "CUDA state pool does not fit: ", plan.num_slots, " slots need ", plan.total_bytes(),
      " bytes (", plan.total_bytes() / kMiB, " MiB: weights ", plan.weight_bytes,
      ", workspaces ", plan.workspace_bytes, ", ", plan.state_bytes_per_slot,
      " per slot, reserve ", plan.reserve_bytes, ") but ", free_bytes, " bytes (",
      free_bytes / kMiB, " MiB) are free on the device; ", fit,
      " slots would fit (lower --slots)"));
}

absl::StatusOr<int32_t> CudaSlotsThatFit(const CudaMemoryPlan& plan, size_t free_bytes, int32_t cap) {
  const size_t fixed = FixedBytes(plan);
  const size_t fit = SlotsFitting(plan, free_bytes);
  if (fit < 1) {
    constexpr double kMiB = 1024.0 * 1024.0;
    return absl::ResourceExhaustedError(absl::StrCat(
        "no CUDA state slot fits: weights ", plan.weight_bytes, " + workspaces ",
        plan.workspace_bytes, " + reserve ", plan.reserve_bytes, " bytes leave ",
        free_bytes > fixed ? free_bytes - fixed : 0, " of the ", free_bytes, " bytes (",
        free_bytes / kMiB, " MiB) free on the device, and one slot needs ",
        plan.state_bytes_per_slot));
  }
  return static_cast<int32_t>(std::min<size_t>(fit, static_cast<size_t>(cap)));
}

}  // namespace mesa
