// How the CUDA runner (engine/cuda_model_runner.cc) lays out memory: the one device arena for
// the weights and the one for the workspaces (activations, per-step argument tables, token
// choice, prefill snapshots), the slot state layout, the pinned host staging buffer, and the
// kernel arguments of a token choice. Private to the runner (and its tests).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/plain_choice.h"
#include "kernels/cg_control.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/sampling.h"
#include "models/mesa_config.h"
#include "models/mesa_weights.h"

namespace mesa::cuda_runner {

// Offsets inside the device arenas are aligned like cudaMalloc's own results, so that every
// tensor can be read with the kernels' vector loads.
inline constexpr size_t kAlign = 256;
inline size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Seen tokens (for the penalties of device-chosen tokens) one decode call can upload: 4 MB on
// the device and pinned on the host. A call with more sends its penalised rows to the host.
inline constexpr int64_t kSeenCapacity = int64_t{1} << 19;

// Lays out many host arrays in one device allocation: one cudaMalloc for all weights, so the
// memory plan counts exactly what is allocated.
class ArenaLayout {
 public:
  // Reserves `bytes` (copied from `src` by Upload when src is not null); returns the offset.
  size_t Add(size_t bytes, const void* src = nullptr) {
    const size_t offset = size_;
    size_ = AlignUp(offset + bytes);
    if (src != nullptr && bytes > 0) copies_.push_back({src, bytes, offset});
    return offset;
  }
  size_t bytes() const { return size_; }
  absl::Status Upload(gpu::DeviceBuffer& buffer) const;

 private:
  struct Copy {
    const void* src;
    size_t bytes;
    size_t offset;
  };
  size_t size_ = 0;
  std::vector<Copy> copies_;
};

// A page-locked host buffer: device-to-host copies into it are true async DMA, and the
// per-step upload of pointer tables does not stage through a driver bounce buffer.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer();
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  absl::Status Allocate(size_t bytes);
  char* data() { return static_cast<char*>(ptr_); }
  const char* data() const { return static_cast<const char*>(ptr_); }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Offsets (in floats) of one layer's state inside a slot: the CPU runner's LayerStateLayout.
struct LayerStateLayout {
  int64_t h_kk = 0, h_kv = 0, conv_q = 0, conv_k = 0, stride = 0;
};

LayerStateLayout StateLayoutFor(const MesaConfig& c);

// Byte offsets of one layer's weights in the weight arena.
struct LayerWeightOffsets {
  size_t attn_norm, in_proj, a_bias, b_bias, lambda, q_conv, k_conv, o_norm, o_proj, mlp_norm,
      gate_up, down;
};

struct WeightOffsets {
  size_t embeddings = 0, final_norm = 0, output = 0;
  std::vector<LayerWeightOffsets> layers;
};

// Frees the host copies of the matrices once they are on the device (a large model would
// otherwise be held twice); rows, cols and type stay for the GEMM shapes.
void ReleaseHostData(MesaWeights& w);

// Every weight array in `arena`, in the order the runner reads them.
WeightOffsets LayOutWeights(const MesaWeights& w, ArenaLayout& arena);

// Byte offsets of the activations and per-step tables in the workspace arena, sized for
// `rows` rows. Activations "act" are in the model dtype, GEMM outputs fp32.
struct Workspace {
  size_t x, u, proj, q, k, v, z, mix, log_decay, beta, gemm_out, mlp, swiglu, logits, iters,
      residual, args, chosen, seen, logprobs, top;
  size_t args_bytes;
  // A prefill's own token choice (never ws.chosen, which the next started decode step may
  // still feed on): the row choices, the chosen ids, their logprobs and top logprobs.
  size_t prefill_choices, prefill_chosen, prefill_logprobs, prefill_top;
  // Prefill only: the chunk kernel's fp32 output, its workspace, and the call's token ids
  // (followed by the indices of its logit rows).
  size_t mix_f, prefill, prefill_tokens;
  int64_t prefill_max_tokens;
};

Workspace LayOutWorkspace(const MesaConfig& c, int64_t rows, ArenaLayout& arena);

// The per-step arguments uploaded in one copy, for a step of b rows: the state pointer tables
// [L][4][b] (h_kk, h_kv, conv_q, conv_k), the CG controls [b], the token ids [b], the token
// choices [b] the runner makes itself and the feed rows [b] (DecodeRow::feed_row, -1: none).
struct StepArgsLayout {
  size_t tables = 0, cg = 0, tokens = 0, choices = 0, feed = 0, bytes = 0;
  static StepArgsLayout For(int64_t layers, int64_t b);
};

// Byte offsets in the pinned host buffer: the step arguments staged for upload, then what comes
// back (logits, CG statistics, chosen tokens, logprobs) and the seen tokens staged for the
// penalties, for `rows` rows. `started`: for a started (pipelined) step, which brings back no
// logits and stages no seen tokens (those regions are empty).
struct HostStaging {
  size_t args = 0, logits = 0, iters = 0, residual = 0, chosen = 0, seen = 0, logprobs = 0, top = 0;
  size_t prefill_choices = 0;  // a prefill's row choices for upload (none when started)
  size_t bytes = 0;
  static HostStaging For(const MesaConfig& c, int64_t rows, size_t args_bytes, bool started = false);
};

// The kernel arguments of a token choice (kernels/cuda/sampling.h), without the seen-token
// offset and count, which depend on where the caller stages the seen tokens.
gpu::RowChoice RowChoiceFor(const PlainChoice& c);

}  // namespace mesa::cuda_runner
