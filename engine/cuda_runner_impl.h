// The CUDA model runner's implementation class, shared by its source files (engine/
// cuda_model_runner.cc: creation, the memory plan, slots; cuda_runner_prefill.cc: prefill;
// cuda_runner_decode.cc: decode steps, pipelined ones included, and the layers they run).
// Private to the runner: users include engine/cuda_model_runner.h.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/cuda_model_runner.h"
#include "engine/cuda_runner_layout.h"
#include "engine/prefill_packing.h"
#include "engine/runner_checks.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dependent_launch.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/gemv.h"
#include "kernels/cuda/mesa_decode.h"
#include "kernels/cuda/mesa_prefill.h"
#include "kernels/cuda/mixer_inputs.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/sampling.h"

namespace mesa::cuda_runner {

using gpu::DeviceBuffer;

class CudaModelRunnerImpl final : public CudaModelRunner {
 public:
  CudaModelRunnerImpl(MesaWeights weights, const CudaRunnerOptions& options)
      : w_(std::move(weights)),
        c_(w_.config),
        options_(options),
        inproj_(InProjLayout::For(c_)),
        layer_(StateLayoutFor(c_)),
        slot_floats_(layer_.stride * c_.num_hidden_layers) {}

  ~CudaModelRunnerImpl() override {
    // Work still queued must finish before its buffers are freed (errors are moot here).
    // The cuBLAS handle goes before the stream it was last bound to.
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (auto& [b, g] : graphs_) {
      if (g.exec != nullptr) cudaGraphExecDestroy(g.exec);
    }
    cublas_ = gpu::CublasHandle();
    for (PipelinedBuffer& p : pipelined_) {
      if (p.done != nullptr) cudaEventDestroy(p.done);
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init();

  const MesaConfig& config() const override { return c_; }
  const char* backend_name() const override { return "cuda"; }
  int32_t num_slots() const override { return options_.num_slots; }
  size_t state_bytes_per_slot() const override { return slot_floats_ * sizeof(float); }
  size_t weight_bytes() const override { return plan_.weight_bytes; }
  bool poisoned() const override { return poisoned_; }
  const CudaMemoryPlan& memory_plan() const override { return plan_; }

  absl::Status ResetSlot(SlotId slot) override;
  int64_t SlotPosition(SlotId slot) const override {
    return slot >= 0 && slot < options_.num_slots ? positions_[slot] : -1;
  }
  absl::Status Prefill(absl::Span<const PrefillRequest> requests,
                       absl::Span<PrefillResult> results) override;
  absl::Status Decode(absl::Span<const DecodeRow> rows, DecodeResult* result) override {
    return DecodeAndChoose(rows, {}, result);
  }
  absl::Status DecodeAndChoose(absl::Span<const DecodeRow> rows,
                               absl::Span<const PlainChoice> choices,
                               DecodeResult* result) override;
  absl::Status ReadSlotState(SlotId slot, absl::Span<float> out) override;
  int32_t PipelinedDecodeRows() const override { return static_cast<int32_t>(max_batch_); }
  bool ChoosesAhead(const PlainChoice& c) const override {
    // No penalties: their seen tokens would miss the token of the step before.
    return DeviceChooses(c, /*penalties_fit=*/false) && !HasPenalties(c);
  }
  absl::Status StartDecode(absl::Span<const DecodeRow> rows,
                           absl::Span<const PlainChoice> choices) override;
  absl::Status FinishDecode(DecodeResult* result) override;

 private:
  absl::Status CheckSlot(SlotId slot) const { return CheckSlotInPool(slot, options_.num_slots); }
  // Whether SampleRows makes this choice (truncation keeps a row in shared memory, so long
  // vocabularies go to the host; penalties need their seen tokens uploaded, which a call can do
  // for kSeenCapacity in all: `penalties_fit`).
  bool DeviceChooses(const PlainChoice& c, bool penalties_fit) const {
    return c.kind != PlainChoice::Kind::kHost &&
           (c.kind != PlainChoice::Kind::kTruncated || c_.vocab_size <= gpu::kMaxTruncatedSampleVocab) &&
           (c.seen.empty() || penalties_fit);
  }
  // Every entry point: refuse after a sticky fault, and make the runner's device current on the
  // calling thread (the CUDA runtime's current device is per thread, and the engine thread is
  // not the one that created the runner).
  absl::Status Enter() const {
    if (poisoned_) {
      return absl::FailedPreconditionError(
          "the CUDA runner hit a sticky device fault earlier; restart the process");
    }
    MESA_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
    return absl::OkStatus();
  }
  // After a failed call: a sticky fault leaves the context unusable, so the runner poisons
  // itself; any other error fails only this call.
  absl::Status NoteFailure(absl::Status s) {
    if (s.ok()) return s;
    const cudaError_t now = cudaStreamSynchronize(stream_);
    if (gpu::IsStickyCudaError(now) || absl::StrContains(s.message(), "sticky")) poisoned_ = true;
    if (!gpu::IsStickyCudaError(now)) cudaGetLastError();  // clear a non-sticky error
    return s;
  }

  float* SlotState(SlotId slot) { return states_.as<float>() + int64_t{slot} * slot_floats_; }
  // Typed device pointers into the workspace and weight arenas (offsets are kAlign-aligned).
  template <typename T = void>
  T* Ws(size_t offset) { return static_cast<T*>(static_cast<void*>(workspace_.as<char>() + offset)); }
  template <typename T = void>
  const T* Wt(size_t offset) const {
    return static_cast<const T*>(static_cast<const void*>(weights_.as<char>() + offset));
  }

  gpu::GemmParams GemmFor(void* y, const void* x, int64_t m, const WeightMatrix& w, size_t offset,
                          ScalarType out_type = ScalarType::kFp32) {
    gpu::GemmParams p;
    p.m = m;
    p.n = w.rows;
    p.k = w.cols;
    p.x = x;
    p.w = Wt(offset);
    p.y = y;
    p.in_type = c_.dtype;
    p.out_type = out_type;
    p.stream = stream_;
    p.algo_rows = gemm_algo_rows_;
    return p;
  }
  absl::Status Gemm(void* y, const void* x, int64_t m, const WeightMatrix& w, size_t offset,
                    ScalarType out_type = ScalarType::kFp32) {
    return gpu::Gemm(cublas_, GemmFor(y, x, m, w, offset, out_type));
  }

  // One decode step of at most max_batch_ rows (choices: one per row, or none; penalties_fit:
  // DeviceChooses' argument); result rows start at `row0`.
  absl::Status DecodeChunk(absl::Span<const DecodeRow> rows, absl::Span<const PlainChoice> choices,
                           bool penalties_fit, int64_t row0, DecodeResult* result);
  // What collecting an enqueued step needs besides its host staging.
  struct EnqueuedStep {
    std::vector<SlotId> slots;  // per row (kPadSlot: a pad)
    int64_t n = 0;              // its bucket
    bool any_logprobs = false;  // a row asked for logprobs (started steps only)
    int buffer = 0;             // started steps: its pipelined_ buffer
  };
  // Stages a step's arguments in `host` (laid out as `hs`), uploads them, enqueues the step and
  // the copies of its results back to `host`; nothing waits.
  absl::Status EnqueueDecode(absl::Span<const DecodeRow> rows, absl::Span<const PlainChoice> choices,
                             bool penalties_fit, char* host, const HostStaging& hs,
                             EnqueuedStep* step);
  // Fills result rows row0.. from an enqueued step's results, once the stream is past them.
  void CollectDecode(const EnqueuedStep& step, const char* host, const HostStaging& hs,
                     int64_t row0, DecodeResult* result) const;
  absl::Status Layer(int layer, int64_t b, const StepArgsLayout& args);
  // The part of a layer before the token mixer on `b` rows: u = attn_norm(x), proj = u W_in^T
  // (fp32; the mixer-input kernels add the gate biases and round).
  absl::Status LayerHead(int layer, int64_t b);
  // The part of a layer after the token mixer (o_norm, o_proj, residual, MLP) on `b` rows.
  absl::Status LayerTail(int layer, int64_t b);
  // The fields the decode and prefill mixer-input kernels share (model shape, in_proj column
  // layout, gate biases, conv taps, workspace outputs); the caller sets the rest.
  template <typename MixerParams>
  void SetMixerInputs(const LayerWeightOffsets& lo, MixerParams& mi) {
    mi.num_heads = c_.num_heads;
    mi.head_dim = c_.head_dim;
    mi.conv_size = c_.conv_size;
    mi.proj = Ws<float>(ws_.proj);
    mi.ld_proj = inproj_.rows;
    mi.q_col = inproj_.q;
    mi.k_col = inproj_.k;
    mi.v_col = inproj_.v;
    mi.g_col = c_.use_output_gate ? inproj_.g : -1;
    mi.a_col = inproj_.a;
    mi.b_col = inproj_.b;
    mi.a_bias = Wt<float>(lo.a_bias);
    mi.b_bias = Wt<float>(lo.b_bias);
    mi.q_conv = Wt<float>(lo.q_conv);
    mi.k_conv = Wt<float>(lo.k_conv);
    mi.z = c_.use_output_gate ? Ws(ws_.z) : nullptr;
    mi.log_decay = Ws<float>(ws_.log_decay);
    mi.beta = Ws<float>(ws_.beta);
    mi.act = c_.dtype;
    mi.stream = stream_;
  }
  // Copies the CG statistics of `count` rows from row `src_row` of a step of `rows` rows,
  // staged in `host` (laid out as `hs`) as [layer, row, head], into rows dst_row.. of `stats`.
  void CopyStats(const char* host, const HostStaging& hs, int64_t rows, int64_t src_row,
                 int64_t count, int64_t dst_row, CgStats* stats) const;
  // One prefill launch: pieces of up to gpu::kMaxPackedSeqs requests packed back to back in
  // the rows (engine/prefill_packing.h), every layer over all of them at once.
  absl::Status PrefillPackStep(absl::Span<const PrefillRequest> requests, const PrefillPack& pack,
                               absl::Span<PrefillResult> results);
  // The device work of one step between the argument upload and the result download: the
  // embedding, every layer, the final norm, lm_head and the rounding of the logits.
  absl::Status StepKernels(int64_t b, const StepArgsLayout& args);
  // StepKernels through a CUDA graph per bucket (b is always one): the first step of a bucket
  // runs eagerly (cuBLASLt chooses its plans, lazy kernels load), the second captures and
  // instantiates the graph, later ones replay it: one launch instead of about 11 per layer.
  // Init runs both for every bucket, so requests only ever replay. Every pointer the
  // step uses is fixed (workspace, weights, the argument block), so the graph stays valid.
  absl::Status RunStep(int64_t b, const StepArgsLayout& args);

  MesaWeights w_;  // shapes only after Init (the host data is released once uploaded)
  const MesaConfig& c_;
  CudaRunnerOptions options_;
  InProjLayout inproj_;
  LayerStateLayout layer_;
  int64_t slot_floats_ = 0;
  int64_t max_batch_ = 0;
  int64_t gemm_algo_rows_ = 0;  // GemmParams::algo_rows of the GEMMs being enqueued
  // Sets gemm_algo_rows_ for the GEMMs of one step, and back to 0 after it.
  struct GemmAlgoRowsScope {
    GemmAlgoRowsScope(int64_t* rows, int64_t value) : rows_(rows) { *rows_ = value; }
    ~GemmAlgoRowsScope() { *rows_ = 0; }
    int64_t* rows_;
  };
  int64_t prefill_rows_ = 0;  // longest prefill segment (a multiple of the 64-token chunk)
  int64_t ws_rows_ = 0;       // rows the workspaces hold: max(max_batch_, prefill_rows_)
  std::vector<int64_t> positions_;
  bool poisoned_ = false;
  CudaMemoryPlan plan_;

  cudaStream_t stream_ = nullptr;
  gpu::CublasHandle cublas_;
  WeightOffsets wo_;
  Workspace ws_;
  DeviceBuffer weights_;
  DeviceBuffer workspace_;
  DeviceBuffer states_;
  // Host staging, page-locked (HostStaging has its layout).
  PinnedBuffer host_;
  HostStaging hs_;
  // Started (pipelined) steps: two staging buffers, used in turn, each with an event recorded
  // after its step's result copies; the steps started and not finished, oldest first; and
  // which rows of the last started step chose a token (what the next one may feed on; emptied
  // when another decode step comes after it).
  struct PipelinedBuffer {
    PinnedBuffer host;
    cudaEvent_t done = nullptr;
  };
  PipelinedBuffer pipelined_[2];
  HostStaging ps_;
  std::deque<EnqueuedStep> started_;
  int next_buffer_ = 0;
  std::vector<uint8_t> feedable_;
  struct StepGraph {
    int eager_steps = 0;
    cudaGraphExec_t exec = nullptr;
  };
  std::map<int64_t, StepGraph> graphs_;  // by bucket (CudaDecodeBucket)
};

}  // namespace mesa::cuda_runner
