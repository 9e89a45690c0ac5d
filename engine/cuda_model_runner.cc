#include "engine/cuda_model_runner.h"

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

namespace mesa {
namespace {

using cuda_runner::ArenaLayout;
using cuda_runner::HostStaging;
using cuda_runner::kSeenCapacity;
using cuda_runner::LayerStateLayout;
using cuda_runner::LayerWeightOffsets;
using cuda_runner::LayOutWeights;
using cuda_runner::LayOutWorkspace;
using cuda_runner::PinnedBuffer;
using cuda_runner::ReleaseHostData;
using cuda_runner::StateLayoutFor;
using cuda_runner::StepArgsLayout;
using cuda_runner::WeightOffsets;
using cuda_runner::Workspace;
using gpu::DeviceBuffer;

static_assert(gpu::kMaxTopLogprobs == kMaxDeviceTopLogprobs, "one limit for both layers");
static_assert(sizeof(gpu::TopLogprob) == sizeof(TokenLogprob), "same (token, logprob) layout");

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
  // which rows of the last started step chose a token (what the next one may feed on), valid
  // while no other decode step came after it.
  struct PipelinedBuffer {
    PinnedBuffer host;
    cudaEvent_t done = nullptr;
  };
  PipelinedBuffer pipelined_[2];
  HostStaging ps_;
  std::deque<EnqueuedStep> started_;
  int next_buffer_ = 0;
  std::vector<uint8_t> feedable_;
  bool last_step_started_ = false;
  struct StepGraph {
    int eager_steps = 0;
    cudaGraphExec_t exec = nullptr;
  };
  std::map<int64_t, StepGraph> graphs_;  // by bucket (CudaDecodeBucket)
};

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

absl::Status CudaModelRunnerImpl::Prefill(absl::Span<const PrefillRequest> requests,
                                          absl::Span<PrefillResult> results) {
  MESA_RETURN_IF_ERROR(Enter());
  MESA_RETURN_IF_ERROR(
      CheckPrefillRequests(requests, results.size(), options_.num_slots, c_.vocab_size));
  for (size_t r = 0; r < requests.size(); ++r) {
    const PrefillRequest& req = requests[r];
    const bool chosen = !req.all_logits && req.choice.has_value() && ChoosesAhead(*req.choice);
    SizePrefillResult(req, c_, &results[r], /*logits=*/!chosen);
  }
  for (const PrefillPack& pack :
       PackPrefill(requests, prefill_rows_, gpu::kMaxPackedSeqs, gpu::kPrefillChunk)) {
    MESA_RETURN_IF_ERROR(NoteFailure(PrefillPackStep(requests, pack, results)));
    for (const PrefillPiece& piece : pack) positions_[requests[piece.request].slot] += piece.len;
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::PrefillPackStep(absl::Span<const PrefillRequest> requests,
                                                  const PrefillPack& pack,
                                                  absl::Span<PrefillResult> results) {
  const int64_t L = c_.num_hidden_layers, H = c_.num_heads, d = c_.hidden_size;
  const int64_t dk = c_.key_dim(), vocab = c_.vocab_size;
  const ScalarType act = c_.dtype;
  // The pieces' rows back to back; the staging buffer is free between steps (each step ends
  // with a synchronisation).
  std::vector<int64_t> row0(pack.size());
  int64_t n = 0;
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillPiece& piece = pack[i];
    row0[i] = n;
    std::memcpy(host_.data() + n * sizeof(int32_t),
                requests[piece.request].tokens.data() + piece.offset, piece.len * sizeof(int32_t));
    n += piece.len;
  }
  // Logits: every row of a piece that asks for all, else the last row of a request's last
  // piece. Their indices follow the token ids (at ws_rows_), uploaded with them: the final
  // norm gathers those rows to the front of u in one launch, one GEMM makes all their logits.
  auto* logit_index = reinterpret_cast<int32_t*>(host_.data()) + ws_rows_;
  std::vector<int64_t> logit_row(pack.size(), -1);
  int64_t logit_rows = 0;
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillPiece& piece = pack[i];
    const PrefillRequest& req = requests[piece.request];
    const int64_t rows = req.all_logits ? piece.len : (piece.last ? 1 : 0);
    if (rows == 0) continue;
    const int64_t first = row0[i] + (req.all_logits ? 0 : piece.len - 1);
    for (int64_t r = 0; r < rows; ++r) logit_index[logit_rows + r] = static_cast<int32_t>(first + r);
    logit_row[i] = logit_rows;
    logit_rows += rows;
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.prefill_tokens), host_.data(),
                                            (ws_rows_ + logit_rows) * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, stream_));
  // Batch invariance covers prefill too: a launch's GEMMs have one row per token of every
  // packed prompt, so without pinning a prompt's states would depend on what it was packed with.
  const GemmAlgoRowsScope pinned(&gemm_algo_rows_,
                                 options_.batch_invariant_rows > 0 ? prefill_rows_ : 0);
  MESA_RETURN_IF_ERROR(gpu::Embed(Ws(ws_.x), Wt(wo_.embeddings), Ws<int32_t>(ws_.prefill_tokens),
                                  n, d, vocab, act, stream_));
  for (int layer = 0; layer < L; ++layer) {
    const LayerWeightOffsets& lo = wo_.layers[layer];
    MESA_RETURN_IF_ERROR(LayerHead(layer, n));
    gpu::MixerInputsPrefillParams mi;
    gpu::MesaPrefillParams p;
    for (const PrefillPiece& piece : pack) {
      const PrefillRequest& req = requests[piece.request];
      float* state = SlotState(req.slot) + layer * layer_.stride;
      const auto len = static_cast<int32_t>(piece.len);
      mi.AddSequence(len, state + layer_.conv_q, state + layer_.conv_k);
      p.AddSequence(len, state + layer_.h_kk, state + layer_.h_kv, req.cg);
    }
    SetMixerInputs(lo, mi);
    mi.q = Ws<float>(ws_.q);
    mi.k = Ws<float>(ws_.k);
    mi.v = Ws<float>(ws_.v);
    MESA_RETURN_IF_ERROR(gpu::MixerInputsPrefill(mi));
    MESA_RETURN_IF_ERROR(gpu::ConvStatePrefillUpdate(mi));

    p.num_heads = c_.num_heads;
    p.head_dim = c_.head_dim;
    p.q = Ws<float>(ws_.q);
    p.k = Ws<float>(ws_.k);
    p.v = Ws<float>(ws_.v);
    p.ld_in = dk;
    p.log_decay = Ws<float>(ws_.log_decay);
    p.beta = Ws<float>(ws_.beta);
    p.lambda = Wt<float>(lo.lambda);
    p.value_rounding = RoundingFor(act);
    p.out = Ws<float>(ws_.mix_f);
    p.ld_out = dk;
    p.cg_iters = Ws<int32_t>(ws_.iters) + layer * n * H;
    p.cg_residual = Ws<float>(ws_.residual) + layer * n * H;
    p.workspace_rows = static_cast<int32_t>(ws_.prefill_max_tokens);
    p.workspace = Ws(ws_.prefill);
    p.stream = stream_;
    MESA_RETURN_IF_ERROR(gpu::MesaPrefill(p));
    MESA_RETURN_IF_ERROR(gpu::ToAct(Ws(ws_.mix), Ws<float>(ws_.mix_f), n * dk, act, stream_));
    MESA_RETURN_IF_ERROR(LayerTail(layer, n));
  }

  // The first generated tokens the device chooses (PrefillRequest::choice).
  std::vector<uint8_t> chosen_here(pack.size(), 0);
  bool want_stats = false;
  bool any_chosen = false, any_host_rows = false, any_truncated = false, any_logprobs = false;
  auto* row_choices = reinterpret_cast<gpu::RowChoice*>(host_.data() + hs_.prefill_choices);
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillRequest& req = requests[pack[i].request];
    want_stats = want_stats || req.want_stats;
    if (logit_row[i] < 0) continue;
    const int64_t rows = req.all_logits ? pack[i].len : 1;
    const bool choose = !req.all_logits && req.choice.has_value() && ChoosesAhead(*req.choice);
    for (int64_t r = 0; r < rows; ++r) {
      row_choices[logit_row[i] + r] = choose ? cuda_runner::RowChoiceFor(*req.choice) : gpu::RowChoice{};
    }
    chosen_here[i] = choose;
    any_chosen = any_chosen || choose;
    any_host_rows = any_host_rows || !choose;
    any_truncated = any_truncated || (choose && req.choice->kind == PlainChoice::Kind::kTruncated);
    any_logprobs = any_logprobs || (choose && req.choice->top_logprobs > 0);
  }
  if (logit_rows > 0) {
    MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(wo_.final_norm), logit_rows, d,
                                      c_.norm_eps, act, stream_,
                                      Ws<int32_t>(ws_.prefill_tokens) + ws_rows_));
    MESA_RETURN_IF_ERROR(
        Gemm(Ws(ws_.logits), Ws(ws_.u), logit_rows, w_.output_matrix(), wo_.output));
    MESA_RETURN_IF_ERROR(gpu::RoundInPlace(Ws<float>(ws_.logits), logit_rows * vocab, act, stream_));
    if (any_chosen) {
      // The first generated tokens, chosen as a decode step's (only their ids come back).
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.prefill_choices), row_choices,
                                                logit_rows * sizeof(gpu::RowChoice),
                                                cudaMemcpyHostToDevice, stream_));
      gpu::SampleRowsParams sp;
      sp.rows = static_cast<int32_t>(logit_rows);
      sp.vocab = static_cast<int32_t>(vocab);
      sp.logits = Ws<float>(ws_.logits);
      sp.choices = Ws<gpu::RowChoice>(ws_.prefill_choices);
      sp.tokens = Ws<int32_t>(ws_.prefill_chosen);
      sp.any_truncated = any_truncated;
      sp.logprobs = Ws<float>(ws_.prefill_logprobs);
      sp.top = Ws<gpu::TopLogprob>(ws_.prefill_top);
      sp.any_logprobs = any_logprobs;
      sp.stream = stream_;
      MESA_RETURN_IF_ERROR(gpu::SampleRows(sp));
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.chosen, Ws(ws_.prefill_chosen),
                                                logit_rows * sizeof(int32_t),
                                                cudaMemcpyDeviceToHost, stream_));
      if (any_logprobs) {
        MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.logprobs,
                                                  Ws(ws_.prefill_logprobs), logit_rows * sizeof(float),
                                                  cudaMemcpyDeviceToHost, stream_));
        MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
            host_.data() + hs_.top, Ws(ws_.prefill_top),
            logit_rows * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob), cudaMemcpyDeviceToHost,
            stream_));
      }
    }
    if (any_host_rows) {
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.logits, Ws(ws_.logits),
                                                logit_rows * vocab * sizeof(float),
                                                cudaMemcpyDeviceToHost, stream_));
    }
  }
  const size_t stat_count = static_cast<size_t>(L * n * H);
  if (want_stats) {
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.iters, Ws(ws_.iters),
                                              stat_count * sizeof(int32_t),
                                              cudaMemcpyDeviceToHost, stream_));
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host_.data() + hs_.residual, Ws(ws_.residual),
                                              stat_count * sizeof(float), cudaMemcpyDeviceToHost,
                                              stream_));
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  const auto* logits = reinterpret_cast<const float*>(host_.data() + hs_.logits);
  const auto* chosen = reinterpret_cast<const int32_t*>(host_.data() + hs_.chosen);
  const auto* logprobs = reinterpret_cast<const float*>(host_.data() + hs_.logprobs);
  const auto* top = reinterpret_cast<const gpu::TopLogprob*>(host_.data() + hs_.top);
  for (size_t i = 0; i < pack.size(); ++i) {
    const PrefillPiece& piece = pack[i];
    const PrefillRequest& req = requests[piece.request];
    PrefillResult* result = &results[piece.request];
    if (chosen_here[i]) {
      const int64_t row = logit_row[i];
      result->token = chosen[row];
      const int32_t n_top = row_choices[row].top_logprobs;
      if (n_top > 0) {
        result->logprob = logprobs[row];
        result->top.resize(n_top);
        for (int32_t a = 0; a < n_top; ++a) {
          const gpu::TopLogprob& t = top[row * gpu::kMaxTopLogprobs + a];
          result->top[a] = {t.token, t.logprob};
        }
      }
    } else if (logit_row[i] >= 0) {
      const int64_t rows = req.all_logits ? piece.len : 1;
      float* dst = result->logits.data() + (req.all_logits ? piece.offset * vocab : 0);
      std::memcpy(dst, logits + logit_row[i] * vocab, rows * vocab * sizeof(float));
    }
    if (req.want_stats) {
      CopyStats(host_.data(), hs_, n, row0[i], piece.len, piece.offset, &result->stats);
    }
  }
  return absl::OkStatus();
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

absl::Status CudaModelRunnerImpl::DecodeAndChoose(absl::Span<const DecodeRow> rows,
                                                   absl::Span<const PlainChoice> choices,
                                                   DecodeResult* result) {
  MESA_RETURN_IF_ERROR(Enter());
  // The shared checks (engine/runner_checks.h), all before any device work.
  MESA_RETURN_IF_ERROR(CheckDecodeRows(rows, options_.num_slots, c_.vocab_size));
  last_step_started_ = false;  // ws_.chosen gets this step's choices
  if (!choices.empty() && choices.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("Decode: ", choices.size(), " choices for ",
                                                   rows.size(), " rows"));
  }
  const int64_t b = static_cast<int64_t>(rows.size());
  result->stats.Resize(static_cast<int32_t>(b), c_.num_hidden_layers, c_.num_heads);
  // Penalised rows go to the device only if all their seen tokens fit one upload.
  int64_t seen_total = 0;
  bool any_logprobs = false;
  for (const PlainChoice& c : choices) {
    seen_total += static_cast<int64_t>(c.seen.size());
    any_logprobs = any_logprobs || c.top_logprobs > 0;
  }
  const bool penalties_fit = seen_total <= kSeenCapacity;
  // Logits only where the caller samples (model_runner.h): rows it does not read are not filled.
  bool host_rows = choices.empty();
  for (size_t i = 0; i < choices.size() && !host_rows; ++i) {
    host_rows = rows[i].slot != kPadSlot && !DeviceChooses(choices[i], penalties_fit);
  }
  if (any_logprobs) {
    result->logprobs.assign(b, 0.0f);
    result->top_logprobs.assign(b * kMaxDeviceTopLogprobs, TokenLogprob{});
  } else {
    result->logprobs.clear();
    result->top_logprobs.clear();
  }
  if (choices.empty()) {
    result->logits.assign(b * static_cast<int64_t>(c_.vocab_size), 0.0f);
    result->tokens.clear();
  } else {
    if (host_rows) {
      result->logits.resize(b * static_cast<int64_t>(c_.vocab_size));  // filled per row below
    } else {
      result->logits.clear();
    }
    result->tokens.assign(b, -1);
  }
  // Rows are independent (distinct slots), so a batch larger than the workspaces is run in
  // pieces with the same result.
  for (int64_t start = 0; start < b; start += max_batch_) {
    const int64_t n = std::min(max_batch_, b - start);
    const absl::Span<const DecodeRow> piece = rows.subspan(start, n);
    const absl::Span<const PlainChoice> piece_choices =
        choices.empty() ? choices : choices.subspan(start, n);
    MESA_RETURN_IF_ERROR(
        NoteFailure(DecodeChunk(piece, piece_choices, penalties_fit, start, result)));
    for (const DecodeRow& row : piece) {
      if (row.slot != kPadSlot) positions_[row.slot] += 1;
    }
  }
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::StartDecode(absl::Span<const DecodeRow> rows,
                                               absl::Span<const PlainChoice> choices) {
  MESA_RETURN_IF_ERROR(Enter());
  const int64_t b = static_cast<int64_t>(rows.size());
  if (b < 1 || b > max_batch_ || choices.size() != rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("StartDecode: ", b, " rows and ", choices.size(),
                                                   " choices; a started step takes 1 to ",
                                                   max_batch_, " rows, one choice each"));
  }
  if (started_.size() >= 2) {
    return absl::FailedPreconditionError("StartDecode: two started steps are not finished yet");
  }
  MESA_RETURN_IF_ERROR(CheckDecodeRows(
      rows, options_.num_slots, c_.vocab_size,
      last_step_started_ ? absl::MakeConstSpan(feedable_) : absl::Span<const uint8_t>()));
  bool any_logprobs = false;
  for (int64_t i = 0; i < b; ++i) {
    if (rows[i].slot == kPadSlot) continue;
    if (!ChoosesAhead(choices[i])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "StartDecode: row ", i, "'s token cannot be chosen on the device ahead of the host"));
    }
    any_logprobs = any_logprobs || choices[i].top_logprobs > 0;
  }
  EnqueuedStep step;
  step.any_logprobs = any_logprobs;
  step.buffer = next_buffer_;
  PipelinedBuffer& buffer = pipelined_[step.buffer];
  absl::Status s = [&]() -> absl::Status {
    MESA_RETURN_IF_ERROR(EnqueueDecode(rows, choices, false, buffer.host.data(), ps_, &step));
    MESA_CUDA_RETURN_IF_ERROR(cudaEventRecord(buffer.done, stream_));
    return absl::OkStatus();
  }();
  MESA_RETURN_IF_ERROR(NoteFailure(std::move(s)));
  for (const DecodeRow& row : rows) {
    if (row.slot != kPadSlot) positions_[row.slot] += 1;
  }
  feedable_.assign(b, 0);
  for (int64_t i = 0; i < b; ++i) feedable_[i] = rows[i].slot != kPadSlot;
  last_step_started_ = true;
  next_buffer_ ^= 1;
  started_.push_back(std::move(step));
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::FinishDecode(DecodeResult* result) {
  MESA_RETURN_IF_ERROR(Enter());
  if (started_.empty()) return absl::FailedPreconditionError("FinishDecode: no started step");
  const EnqueuedStep step = std::move(started_.front());
  started_.pop_front();
  const PipelinedBuffer& buffer = pipelined_[step.buffer];
  absl::Status s = [&]() -> absl::Status {
    MESA_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(buffer.done));
    return absl::OkStatus();
  }();
  MESA_RETURN_IF_ERROR(NoteFailure(std::move(s)));
  const int64_t b = static_cast<int64_t>(step.slots.size());
  result->stats.Resize(static_cast<int32_t>(b), c_.num_hidden_layers, c_.num_heads);
  result->logits.clear();
  result->tokens.assign(b, -1);
  if (step.any_logprobs) {
    result->logprobs.assign(b, 0.0f);
    result->top_logprobs.assign(b * kMaxDeviceTopLogprobs, TokenLogprob{});
  } else {
    result->logprobs.clear();
    result->top_logprobs.clear();
  }
  CollectDecode(step, buffer.host.data(), ps_, 0, result);
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::StepKernels(int64_t b, const StepArgsLayout& args) {
  const int64_t d = c_.hidden_size, vocab = c_.vocab_size;
  // Decode GEMMs with one algorithm for every bucket when asked (CudaRunnerOptions).
  const GemmAlgoRowsScope pinned(&gemm_algo_rows_, options_.batch_invariant_rows);
  const gpu::DependentLaunchScope dependent(b <= options_.dependent_launch_rows);
  // Rows of a started step may feed on the tokens the step before chose (still in ws_.chosen:
  // this step's choice comes after its last layer).
  MESA_RETURN_IF_ERROR(gpu::Embed(Ws(ws_.x), Wt(wo_.embeddings), Ws<int32_t>(ws_.args + args.tokens),
                                  b, d, vocab, c_.dtype, stream_, Ws<int32_t>(ws_.args + args.feed),
                                  Ws<int32_t>(ws_.chosen)));
  for (int layer = 0; layer < c_.num_hidden_layers; ++layer) {
    MESA_RETURN_IF_ERROR(Layer(layer, b, args));
  }
  // Final norm, lm_head, and fla's rounding of the logits to the model dtype.
  MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(wo_.final_norm), b, d,
                                    c_.norm_eps, c_.dtype, stream_));
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.logits), Ws(ws_.u), b, w_.output_matrix(), wo_.output));
  return gpu::RoundInPlace(Ws<float>(ws_.logits), b * vocab, c_.dtype, stream_);
}

absl::Status CudaModelRunnerImpl::RunStep(int64_t b, const StepArgsLayout& args) {
  if (!options_.cuda_graphs) return StepKernels(b, args);
  StepGraph& g = graphs_[b];
  if (g.exec == nullptr) {
    if (g.eager_steps++ == 0) return StepKernels(b, args);
    MESA_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    const absl::Status captured = StepKernels(b, args);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (!captured.ok() || ended != cudaSuccess) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      MESA_RETURN_IF_ERROR(captured);
      MESA_CUDA_RETURN_IF_ERROR(ended);
    }
    const cudaError_t made = cudaGraphInstantiate(&g.exec, graph, 0);
    cudaGraphDestroy(graph);
    if (made != cudaSuccess) g.exec = nullptr;
    MESA_CUDA_RETURN_IF_ERROR(made);
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(g.exec, stream_));
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::DecodeChunk(absl::Span<const DecodeRow> rows,
                                              absl::Span<const PlainChoice> choices,
                                              bool penalties_fit, int64_t row0,
                                              DecodeResult* result) {
  if (rows.empty()) return absl::OkStatus();
  EnqueuedStep step;
  MESA_RETURN_IF_ERROR(EnqueueDecode(rows, choices, penalties_fit, host_.data(), hs_, &step));
  // The step's result is needed now (and the host staging buffer is reused by the next step).
  MESA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  CollectDecode(step, host_.data(), hs_, row0, result);
  return absl::OkStatus();
}

absl::Status CudaModelRunnerImpl::EnqueueDecode(absl::Span<const DecodeRow> rows,
                                                absl::Span<const PlainChoice> choices,
                                                bool penalties_fit, char* host,
                                                const HostStaging& hs, EnqueuedStep* step) {
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t L = c_.num_hidden_layers, H = c_.num_heads;
  const int64_t vocab = c_.vocab_size;
  // The step runs at its bucket: rows [b, n) are pads.
  const int64_t n = CudaDecodeBucket(b, max_batch_);
  step->n = n;
  step->slots.resize(b);
  for (int64_t i = 0; i < b; ++i) step->slots[i] = rows[i].slot;

  // Stage the step's arguments on the host and upload them in one copy.
  const StepArgsLayout args = StepArgsLayout::For(L, n);
  char* staged = host + hs.args;
  float** tables = reinterpret_cast<float**>(staged + args.tables);
  auto* cg = reinterpret_cast<CgControl*>(staged + args.cg);
  auto* tokens = reinterpret_cast<int32_t*>(staged + args.tokens);
  auto* row_choices = reinterpret_cast<gpu::RowChoice*>(staged + args.choices);
  auto* feed = reinterpret_cast<int32_t*>(staged + args.feed);
  bool any_chosen = false;     // a row whose token the device chooses
  bool any_truncated = false;  // ... with truncation (a second kernel)
  bool any_logprobs = false;   // ... with logprobs to report
  int64_t seen_used = 0;       // seen tokens staged for the penalties
  auto* seen = reinterpret_cast<gpu::SeenEntry*>(host + hs.seen);
  for (int64_t i = 0; i < n; ++i) {
    const bool pad = i >= b || rows[i].slot == kPadSlot;
    tokens[i] = pad || rows[i].feed_row >= 0 ? 0 : rows[i].token;
    feed[i] = pad ? -1 : rows[i].feed_row;
    cg[i] = i < b ? rows[i].cg : CgControl{};
    gpu::RowChoice rc;  // kind 0: not the device's
    if (!pad && !choices.empty() && DeviceChooses(choices[i], penalties_fit)) {
      rc = cuda_runner::RowChoiceFor(choices[i]);
      rc.seen_offset = static_cast<int32_t>(seen_used);
      rc.seen_count = static_cast<int32_t>(choices[i].seen.size());
      for (const SeenToken& s : choices[i].seen) seen[seen_used++] = {s.token, s.count};
      any_logprobs = any_logprobs || rc.top_logprobs > 0;
      any_chosen = true;
      any_truncated = any_truncated || choices[i].kind == PlainChoice::Kind::kTruncated;
    }
    row_choices[i] = rc;
    for (int64_t l = 0; l < L; ++l) {
      float* state = pad ? nullptr : SlotState(rows[i].slot) + l * layer_.stride;
      tables[(l * 4 + 0) * n + i] = pad ? nullptr : state + layer_.h_kk;
      tables[(l * 4 + 1) * n + i] = pad ? nullptr : state + layer_.h_kv;
      tables[(l * 4 + 2) * n + i] = pad ? nullptr : state + layer_.conv_q;
      tables[(l * 4 + 3) * n + i] = pad ? nullptr : state + layer_.conv_k;
    }
  }
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.args), staged, args.bytes,
                                            cudaMemcpyHostToDevice, stream_));
  if (seen_used > 0) {
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(Ws(ws_.seen), seen, seen_used * sizeof(gpu::SeenEntry),
                                              cudaMemcpyHostToDevice, stream_));
  }

  MESA_RETURN_IF_ERROR(RunStep(n, args));

  // Copy back the logits of the rows the host samples (all of them unless the device chose
  // some: then runs of the others, and the chosen tokens) and the CG statistics.
  auto host_row = [&](int64_t i) { return rows[i].slot != kPadSlot && row_choices[i].kind == 0; };
  if (any_chosen) {
    gpu::SampleRowsParams sp;
    sp.rows = static_cast<int32_t>(b);  // the bucket's pad rows choose nothing
    sp.vocab = static_cast<int32_t>(vocab);
    sp.logits = Ws<float>(ws_.logits);
    sp.choices = Ws<gpu::RowChoice>(ws_.args + args.choices);
    sp.tokens = Ws<int32_t>(ws_.chosen);
    sp.any_truncated = any_truncated;
    sp.seen = Ws<gpu::SeenEntry>(ws_.seen);
    sp.any_penalties = seen_used > 0;
    sp.logprobs = Ws<float>(ws_.logprobs);
    sp.top = Ws<gpu::TopLogprob>(ws_.top);
    sp.any_logprobs = any_logprobs;
    sp.stream = stream_;
    MESA_RETURN_IF_ERROR(gpu::SampleRows(sp));
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.chosen, Ws(ws_.chosen),
                                              b * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    if (any_logprobs) {
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.logprobs, Ws(ws_.logprobs),
                                                b * sizeof(float), cudaMemcpyDeviceToHost, stream_));
      MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
          host + hs.top, Ws(ws_.top), b * gpu::kMaxTopLogprobs * sizeof(gpu::TopLogprob),
          cudaMemcpyDeviceToHost, stream_));
    }
  }
  for (int64_t i = 0; i < b;) {  // runs of host rows, one copy each
    if (!host_row(i)) {
      ++i;
      continue;
    }
    int64_t end = i + 1;
    while (end < b && host_row(end)) ++end;
    MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.logits + i * vocab * sizeof(float),
                                              Ws<float>(ws_.logits) + i * vocab,
                                              (end - i) * vocab * sizeof(float),
                                              cudaMemcpyDeviceToHost, stream_));
    i = end;
  }
  const size_t stat_count = static_cast<size_t>(L * n * H);  // [L, n, H] on the device
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.iters, Ws(ws_.iters),
                                            stat_count * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                            stream_));
  MESA_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(host + hs.residual, Ws(ws_.residual),
                                            stat_count * sizeof(float), cudaMemcpyDeviceToHost,
                                            stream_));
  return absl::OkStatus();
}

void CudaModelRunnerImpl::CollectDecode(const EnqueuedStep& step, const char* host,
                                        const HostStaging& hs, int64_t row0,
                                        DecodeResult* result) const {
  const int64_t b = static_cast<int64_t>(step.slots.size());
  const int64_t n = step.n;
  const int64_t vocab = c_.vocab_size;
  const StepArgsLayout args = StepArgsLayout::For(c_.num_hidden_layers, n);
  const auto* row_choices = reinterpret_cast<const gpu::RowChoice*>(host + hs.args + args.choices);
  auto host_row = [&](int64_t i) { return step.slots[i] != kPadSlot && row_choices[i].kind == 0; };
  const auto* logits = reinterpret_cast<const float*>(host + hs.logits);
  const auto* chosen = reinterpret_cast<const int32_t*>(host + hs.chosen);
  const auto* logprobs = reinterpret_cast<const float*>(host + hs.logprobs);
  const auto* top = reinterpret_cast<const gpu::TopLogprob*>(host + hs.top);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t r = row0 + i;
    if (host_row(i)) {
      std::memcpy(&result->logits[r * vocab], &logits[i * vocab], vocab * sizeof(float));
    } else if (step.slots[i] == kPadSlot) {
      // Zero logits, as on the CPU (the statistics are zero from the kernel).
      if (!result->logits.empty()) std::fill_n(&result->logits[r * vocab], vocab, 0.0f);
    } else {  // the device chose the token: no logits
      result->tokens[r] = chosen[i];
      if (row_choices[i].top_logprobs > 0) result->logprobs[r] = logprobs[i];
      for (int32_t a = 0; a < row_choices[i].top_logprobs; ++a) {
        const gpu::TopLogprob& t = top[i * gpu::kMaxTopLogprobs + a];
        result->top_logprobs[r * kMaxDeviceTopLogprobs + a] = {t.token, t.logprob};
      }
    }
  }
  if (!result->stats.iters.empty()) CopyStats(host, hs, n, 0, b, row0, &result->stats);
}

// One block: the CPU runner's InputProjections, mixer and FinishLayer on the device.
absl::Status CudaModelRunnerImpl::Layer(int layer, int64_t b, const StepArgsLayout& args) {
  const LayerWeightOffsets& lo = wo_.layers[layer];
  const int64_t H = c_.num_heads;
  const ScalarType act = c_.dtype;
  float* const* tables = Ws<float*>(ws_.args + args.tables) + layer * 4 * b;

  MESA_RETURN_IF_ERROR(LayerHead(layer, b));
  gpu::MixerInputsDecodeParams mi;
  SetMixerInputs(lo, mi);
  mi.batch = static_cast<int32_t>(b);
  mi.conv_q_state = tables + 2 * b;
  mi.conv_k_state = tables + 3 * b;
  mi.q = Ws(ws_.q);
  mi.k = Ws(ws_.k);
  mi.v = Ws(ws_.v);
  MESA_RETURN_IF_ERROR(gpu::MixerInputsDecode(mi));

  gpu::MesaDecodeParams p;
  p.batch = static_cast<int32_t>(b);
  p.num_heads = c_.num_heads;
  p.head_dim = c_.head_dim;
  p.h_kk = tables + 0 * b;
  p.h_kv = tables + 1 * b;
  p.q = Ws(ws_.q);
  p.k = Ws(ws_.k);
  p.v = Ws(ws_.v);
  p.log_decay = Ws<float>(ws_.log_decay);
  p.beta = Ws<float>(ws_.beta);
  p.lambda = Wt<float>(lo.lambda);
  p.cg = Ws<CgControl>(ws_.args + args.cg);
  p.out = Ws(ws_.mix);
  p.act = act;
  p.cg_iters = Ws<int32_t>(ws_.iters) + layer * b * H;
  p.cg_residual = Ws<float>(ws_.residual) + layer * b * H;
  p.stream = stream_;
  MESA_RETURN_IF_ERROR(gpu::MesaDecodeStep(p));

  return LayerTail(layer, b);
}

absl::Status CudaModelRunnerImpl::LayerHead(int layer, int64_t b) {
  const LayerWeightOffsets& lo = wo_.layers[layer];
  MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(lo.attn_norm), b,
                                    c_.hidden_size, c_.norm_eps, c_.dtype, stream_));
  return Gemm(Ws(ws_.proj), Ws(ws_.u), b, w_.layers[layer].in_proj, lo.in_proj);
}

absl::Status CudaModelRunnerImpl::LayerTail(int layer, int64_t b) {
  const MesaLayerWeights& lw = w_.layers[layer];
  const LayerWeightOffsets& lo = wo_.layers[layer];
  const int64_t d = c_.hidden_size, H = c_.num_heads, K = c_.head_dim;
  const int64_t inter = c_.intermediate_size;
  const ScalarType act = c_.dtype;
  // o_norm (gated by silu(z) with an output gate), o_proj, residual + mlp_norm.
  MESA_RETURN_IF_ERROR(gpu::HeadRmsNorm(Ws(ws_.mix), Ws(ws_.mix),
                                        c_.use_output_gate ? Ws(ws_.z) : nullptr,
                                        Wt<float>(lo.o_norm), b, H, K, c_.norm_eps, act, stream_));
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.gemm_out), Ws(ws_.mix), b, lw.o_proj, lo.o_proj));
  if (c_.fuse_norm) {
    MESA_RETURN_IF_ERROR(gpu::FusedAddRmsNorm(Ws(ws_.u), Ws(ws_.x), Ws<float>(ws_.gemm_out),
                                              Ws(ws_.x), Wt<float>(lo.mlp_norm), b, d,
                                              c_.norm_eps, act, stream_));
  } else {
    MESA_RETURN_IF_ERROR(gpu::AddResidual(Ws(ws_.x), Ws<float>(ws_.gemm_out), b * d, act, stream_));
    MESA_RETURN_IF_ERROR(gpu::RmsNorm(Ws(ws_.u), Ws(ws_.x), Wt<float>(lo.mlp_norm), b, d,
                                      c_.norm_eps, act, stream_));
  }
  // SwiGLU MLP and the second residual.
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.mlp), Ws(ws_.u), b, lw.gate_up, lo.gate_up));
  MESA_RETURN_IF_ERROR(gpu::SwiGlu(Ws(ws_.swiglu), Ws<float>(ws_.mlp), b, inter, act, stream_));
  if (gpu::GemmRunsGemv(GemmFor(Ws(ws_.gemm_out), Ws(ws_.swiglu), b, lw.down, lo.down))) {
    // The down projection and the residual add in one launch (the same bits as Gemm's Gemv
    // and AddResidual).
    return gpu::GemvAddResidual(Ws(ws_.x), Ws(ws_.swiglu), Wt(lo.down), lw.down.rows, lw.down.cols,
                                act, stream_);
  }
  MESA_RETURN_IF_ERROR(Gemm(Ws(ws_.gemm_out), Ws(ws_.swiglu), b, lw.down, lo.down));
  MESA_RETURN_IF_ERROR(gpu::AddResidual(Ws(ws_.x), Ws<float>(ws_.gemm_out), b * d, act, stream_));
  return absl::OkStatus();
}

}  // namespace

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
  auto runner = std::make_unique<CudaModelRunnerImpl>(std::move(weights), options);
  MESA_RETURN_IF_ERROR(runner->Init());
  return std::unique_ptr<CudaModelRunner>(std::move(runner));
}

}  // namespace mesa
