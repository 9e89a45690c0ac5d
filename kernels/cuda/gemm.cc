#include "kernels/cuda/gemm.h"

#include <algorithm>
#include <cstring>

#include <limits>
#include <utility>
#include <vector>

#include <cublasLt.h>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemv.h"

namespace mesa::gpu {

// One shape's cuBLASLt descriptors and algorithm.
struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~GemmPlan() {
    if (y != nullptr) cublasLtMatrixLayoutDestroy(y);
    if (x != nullptr) cublasLtMatrixLayoutDestroy(x);
    if (w != nullptr) cublasLtMatrixLayoutDestroy(w);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

namespace {

cudaDataType_t CudaType(ScalarType t) {
  switch (t) {
    case ScalarType::kBf16: return CUDA_R_16BF;
    case ScalarType::kFp16: return CUDA_R_16F;
    case ScalarType::kFp32: return CUDA_R_32F;
  }
  return CUDA_R_32F;
}

size_t Bytes(ScalarType t) { return t == ScalarType::kFp32 ? 4 : 2; }

bool FitsInt(int64_t v) { return v >= 0 && v <= std::numeric_limits<int>::max(); }

cublasLtHandle_t Lt(void* p) { return static_cast<cublasLtHandle_t>(p); }

// cuBLAS is column-major: row-major y[m, n] is a column-major n x m matrix (ld = ldy), and
// y^T = W x^T where W's row-major storage is a column-major k x n matrix (ld = k), taken
// transposed, and x's storage is a column-major k x m matrix (ld = ldx).
absl::StatusOr<std::unique_ptr<GemmPlan>> MakeDescriptors(const GemmParams& p, int64_t ldx,
                                                          int64_t ldy) {
  auto plan = std::make_unique<GemmPlan>();
  MESA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans = CUBLAS_OP_T, no_trans = CUBLAS_OP_N;
  MESA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
      plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans)));
  MESA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
      plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans, sizeof(no_trans)));
  MESA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&plan->w, CudaType(p.in_type), p.k, p.n, p.k));
  MESA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&plan->x, CudaType(p.in_type), p.k, p.m, ldx));
  MESA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&plan->y, CudaType(p.out_type), p.n, p.m, ldy));
  return plan;
}

// Up to `count` of cuBLASLt's choices for the plan's descriptors, best first. Split-K partial
// sums only ever in fp32 (the compute type), never in the output type; with `split_k` false not
// at all, so that each output is one dot product summed in the kernel's fixed order.
absl::StatusOr<std::vector<cublasLtMatmulHeuristicResult_t>> Heuristics(cublasLtHandle_t lt,
                                                                        bool split_k, int count,
                                                                        GemmPlan* plan) {
  cublasLtMatmulPreference_t pref = nullptr;
  MESA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kGemmWorkspaceBytes;
  const uint32_t schemes = split_k ? CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                   : CUBLASLT_REDUCTION_SCHEME_NONE;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                              &schemes, sizeof(schemes));
  }
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(count));
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(lt, plan->op, plan->w, plan->x, plan->y, plan->y, pref,
                                        count, results.data(), &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  MESA_CUBLAS_RETURN_IF_ERROR(st);
  results.resize(static_cast<size_t>(found));
  return results;
}

// No split-K, made explicit (the preference's scheme mask should exclude it already).
absl::Status NoSplitK(cublasLtMatmulAlgo_t* algo) {
  const int32_t one = 1;
  MESA_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulAlgoConfigSetAttribute(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &one, sizeof(one)));
  return absl::OkStatus();
}

// cuBLASLt's first choice for the plan's descriptors (Heuristics).
absl::Status ChooseAlgorithm(cublasLtHandle_t lt, const GemmParams& p, bool split_k, GemmPlan* plan) {
  MESA_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulHeuristicResult_t> results,
                        Heuristics(lt, split_k, 1, plan));
  if (results.empty()) {
    return absl::InternalError(absl::StrCat("Gemm: cuBLASLt has no algorithm for m=", p.m, " n=", p.n,
                                            " k=", p.k, " ", ScalarTypeName(p.in_type), " -> ",
                                            ScalarTypeName(p.out_type)));
  }
  plan->algo = results[0].algo;
  if (!split_k) MESA_RETURN_IF_ERROR(NoSplitK(&plan->algo));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GemmPlan>> MakePlan(cublasLtHandle_t lt, const GemmParams& p,
                                                   int64_t ldx, int64_t ldy) {
  absl::StatusOr<std::unique_ptr<GemmPlan>> plan = MakeDescriptors(p, ldx, ldy);
  if (!plan.ok()) return plan.status();
  MESA_RETURN_IF_ERROR(ChooseAlgorithm(lt, p, /*split_k=*/true, plan->get()));
  return plan;
}

}  // namespace

CublasHandle::CublasHandle() = default;

absl::StatusOr<CublasHandle> CublasHandle::Create() {
  CublasHandle h;
  cublasLtHandle_t lt = nullptr;
  MESA_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&lt));
  h.lt_ = lt;
  absl::StatusOr<DeviceBuffer> ws = DeviceBuffer::Allocate(kGemmWorkspaceBytes);
  if (!ws.ok()) return ws.status();
  h.workspace_ = std::move(*ws);
  return h;
}

CublasHandle::~CublasHandle() {
  plans_.clear();
  pinned_.clear();
  if (lt_ != nullptr) cublasLtDestroy(Lt(lt_));
}

CublasHandle::CublasHandle(CublasHandle&& other) noexcept
    : lt_(std::exchange(other.lt_, nullptr)),
      workspace_(std::move(other.workspace_)),
      plans_(std::move(other.plans_)),
      pinned_(std::move(other.pinned_)) {}

CublasHandle& CublasHandle::operator=(CublasHandle&& other) noexcept {
  if (this != &other) {
    plans_.clear();
    pinned_.clear();
    if (lt_ != nullptr) cublasLtDestroy(Lt(lt_));
    lt_ = std::exchange(other.lt_, nullptr);
    workspace_ = std::move(other.workspace_);
    plans_ = std::move(other.plans_);
    pinned_ = std::move(other.pinned_);
  }
  return *this;
}

namespace {

// Whether `algo` runs the plan's shape within our workspace: CUBLAS_STATUS_SUCCESS, else
// cuBLASLt's refusal (CUBLAS_STATUS_NOT_SUPPORTED when it needs a larger workspace).
cublasStatus_t Runs(cublasLtHandle_t lt, const GemmPlan& plan, const cublasLtMatmulAlgo_t& algo) {
  cublasLtMatmulHeuristicResult_t check{};
  const cublasStatus_t st =
      cublasLtMatmulAlgoCheck(lt, plan.op, plan.w, plan.x, plan.y, plan.y, &algo, &check);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  return check.workspaceSize <= kGemmWorkspaceBytes ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

// Candidates per row count for a decode shape's pinned algorithm.
constexpr int kPinnedCandidates = 8;
// Pinned shapes of at most this many rows (the decode steps') choose their algorithm by timing.
constexpr int64_t kTimedPinRows = 256;

// The algorithm every row count of a pinned decode shape runs: among cuBLASLt's first choices
// without split-K for algo_rows rows and for one row that run both row counts, the one with
// the least time for one row plus algo_rows rows, timed on zero inputs with the real weights
// (once per shape, at its first product, which the CUDA runner makes in an eager warm-up step).
// cuBLASLt's first choice for algo_rows rows alone is made for that many rows and can stream
// the weights slowly for one.
// `many`: the descriptors for algo_rows rows (the caller's reference plan).
absl::StatusOr<cublasLtMatmulAlgo_t> TimePinnedAlgorithm(cublasLtHandle_t lt, void* workspace,
                                                         const GemmParams& p, GemmPlan* many,
                                                         int64_t ldx, int64_t ldy) {
  GemmParams one_row = p;
  one_row.m = 1;
  MESA_ASSIGN_OR_RETURN(std::unique_ptr<GemmPlan> one, MakeDescriptors(one_row, ldx, ldy));
  std::vector<cublasLtMatmulAlgo_t> candidates;
  auto known = [&](const cublasLtMatmulAlgo_t& algo) {
    return std::any_of(candidates.begin(), candidates.end(), [&](const cublasLtMatmulAlgo_t& c) {
      return std::memcmp(&c, &algo, sizeof(algo)) == 0;
    });
  };
  for (GemmPlan* plan : {many, one.get()}) {
    MESA_ASSIGN_OR_RETURN(std::vector<cublasLtMatmulHeuristicResult_t> found,
                          Heuristics(lt, /*split_k=*/false, kPinnedCandidates, plan));
    for (const cublasLtMatmulHeuristicResult_t& r : found) {
      cublasLtMatmulAlgo_t algo = r.algo;
      MESA_RETURN_IF_ERROR(NoSplitK(&algo));
      // Both lists often hold the same algorithm: time it once.
      if (!known(algo) && Runs(lt, *many, algo) == CUBLAS_STATUS_SUCCESS &&
          Runs(lt, *one, algo) == CUBLAS_STATUS_SUCCESS) {
        candidates.push_back(algo);
      }
    }
  }
  if (candidates.empty()) {
    return absl::InternalError(absl::StrCat("Gemm: cuBLASLt has no algorithm without split-K for 1 and ",
                                            p.algo_rows, " rows of n=", p.n, " k=", p.k));
  }
  if (candidates.size() == 1) return candidates[0];
  MESA_ASSIGN_OR_RETURN(DeviceBuffer x, DeviceBuffer::Allocate(static_cast<size_t>(p.algo_rows) * ldx * Bytes(p.in_type)));
  MESA_ASSIGN_OR_RETURN(DeviceBuffer y, DeviceBuffer::Allocate(static_cast<size_t>(p.algo_rows) * ldy * Bytes(p.out_type)));
  MESA_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(x.data(), 0, x.bytes(), p.stream));
  cudaEvent_t start = nullptr, stop = nullptr;
  MESA_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  if (cudaError_t e = cudaEventCreate(&stop); e != cudaSuccess) {
    cudaEventDestroy(start);
    MESA_CUDA_RETURN_IF_ERROR(e);
  }
  const float alpha = 1.0f, beta = 0.0f;
  auto run = [&](const GemmPlan& plan, const cublasLtMatmulAlgo_t& algo) {
    return cublasLtMatmul(lt, plan.op, &alpha, p.w, plan.w, x.data(), plan.x, &beta, y.data(),
                          plan.y, y.data(), plan.y, &algo, workspace, kGemmWorkspaceBytes, p.stream);
  };
  absl::Status status;
  size_t best = 0;
  float best_ms = 0.0f;
  for (size_t c = 0; c < candidates.size() && status.ok(); ++c) {
    float total = 0.0f;
    for (const GemmPlan* plan : {one.get(), many}) {
      cublasStatus_t st = run(*plan, candidates[c]);  // warm-up
      cudaError_t e = cudaEventRecord(start, p.stream);
      for (int rep = 0; rep < 5 && st == CUBLAS_STATUS_SUCCESS; ++rep) st = run(*plan, candidates[c]);
      if (e == cudaSuccess) e = cudaEventRecord(stop, p.stream);
      if (e == cudaSuccess) e = cudaEventSynchronize(stop);
      float ms = 0.0f;
      if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, start, stop);
      if (st != CUBLAS_STATUS_SUCCESS) status = CublasErrorToStatus(st, "cublasLtMatmul (timing)", __FILE__, __LINE__);
      if (e != cudaSuccess) status = CudaErrorToStatus(e, "timing a GEMM algorithm", __FILE__, __LINE__);
      total += ms;
    }
    if (c == 0 || total < best_ms) {
      best = c;
      best_ms = total;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  MESA_RETURN_IF_ERROR(status);
  return candidates[best];
}

}  // namespace

// A plan for p.m rows with the algorithm chosen once, without split-K, for p.algo_rows rows of
// the same shape (kept in handle.pinned_), so every m of that shape runs the same kernel.
absl::StatusOr<std::unique_ptr<GemmPlan>> MakePinnedPlan(CublasHandle& handle, const GemmParams& p,
                                                         int64_t ldx, int64_t ldy) {
  cublasLtHandle_t lt = Lt(handle.lt_);
  const CublasHandle::PlanKey ref_key{p.algo_rows, p.n, p.k, ldx, ldy, static_cast<int>(p.in_type),
                                      static_cast<int>(p.out_type), p.algo_rows};
  auto ref = handle.pinned_.find(ref_key);
  if (ref == handle.pinned_.end()) {
    GemmParams rp = p;
    rp.m = p.algo_rows;
    absl::StatusOr<std::unique_ptr<GemmPlan>> plan = MakeDescriptors(rp, ldx, ldy);
    if (!plan.ok()) return plan.status();
    if (p.algo_rows <= kTimedPinRows) {
      MESA_ASSIGN_OR_RETURN((*plan)->algo, TimePinnedAlgorithm(lt, handle.workspace_.data(), p,
                                                               plan->get(), ldx, ldy));
    } else {
      MESA_RETURN_IF_ERROR(ChooseAlgorithm(lt, rp, /*split_k=*/false, plan->get()));
    }
    ref = handle.pinned_.emplace(ref_key, std::move(*plan)).first;
  }
  absl::StatusOr<std::unique_ptr<GemmPlan>> plan = MakeDescriptors(p, ldx, ldy);
  if (!plan.ok()) return plan.status();
  (*plan)->algo = ref->second->algo;
  const cublasStatus_t st = Runs(lt, **plan, (*plan)->algo);
  if (st != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError(absl::StrCat(
        "Gemm: the algorithm chosen for ", p.algo_rows, " rows (n=", p.n, " k=", p.k,
        ") does not run ", p.m, " rows (", cublasLtGetStatusString(st),
        "); a row-invariant plan needs one algorithm for every row count"));
  }
  return plan;
}

bool GemmRunsGemv(const GemmParams& p) {
  // A few rows with fp32 output: our weight-streaming kernel (gemv.h). Not with algo_rows, whose
  // point is one kernel for every row count.
  return p.algo_rows == 0 && p.out_type == ScalarType::kFp32 &&
         GemvApplies(p.m, p.k, p.x, p.w, p.in_type);
}

absl::Status Gemm(CublasHandle& handle, const GemmParams& p) {
  const int64_t ldx = p.ldx > 0 ? p.ldx : p.k;
  const int64_t ldy = p.ldy > 0 ? p.ldy : p.n;
  if (!FitsInt(p.m) || !FitsInt(p.n) || !FitsInt(p.k) || !FitsInt(ldx) || !FitsInt(ldy) ||
      ldx < p.k || ldy < p.n) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: shape m=", p.m, " n=", p.n, " k=", p.k,
                                                   " ldx=", ldx, " ldy=", ldy,
                                                   " is not supported"));
  }
  if (p.out_type != ScalarType::kFp32 && p.out_type != p.in_type) {
    return absl::InvalidArgumentError(
        absl::StrCat("Gemm: output type ", ScalarTypeName(p.out_type), " must be float32 or ",
                     ScalarTypeName(p.in_type)));
  }
  if (!handle.valid()) return absl::FailedPreconditionError("Gemm: no cuBLASLt handle");
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (p.k == 0) {  // an empty sum: cuBLASLt has no plan for k = 0
    const size_t row = static_cast<size_t>(p.n) * Bytes(p.out_type);
    const size_t pitch = static_cast<size_t>(ldy) * Bytes(p.out_type);
    MESA_CUDA_RETURN_IF_ERROR(cudaMemset2DAsync(p.y, pitch, 0, row, p.m, p.stream));
    return absl::OkStatus();
  }
  if (p.algo_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("Gemm: algo_rows ", p.algo_rows, " is negative"));
  }
  if (GemmRunsGemv(p)) {
    return Gemv(static_cast<float*>(p.y), p.x, p.w, p.n, p.k, p.in_type, p.stream);
  }
  const CublasHandle::PlanKey key{p.m, p.n, p.k, ldx, ldy, static_cast<int>(p.in_type),
                                  static_cast<int>(p.out_type), p.algo_rows};
  auto it = handle.plans_.find(key);
  if (it == handle.plans_.end()) {
    absl::StatusOr<std::unique_ptr<GemmPlan>> plan =
        p.algo_rows > 0 ? MakePinnedPlan(handle, p, ldx, ldy) : MakePlan(Lt(handle.lt_), p, ldx, ldy);
    if (!plan.ok()) return plan.status();
    it = handle.plans_.emplace(key, std::move(*plan)).first;
  }
  const GemmPlan& plan = *it->second;
  const float alpha = 1.0f, beta = 0.0f;
  MESA_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(Lt(handle.lt_), plan.op, &alpha, p.w, plan.w, p.x,
                                             plan.x, &beta, p.y, plan.y, p.y, plan.y, &plan.algo,
                                             handle.workspace_.data(), kGemmWorkspaceBytes,
                                             p.stream));
  return absl::OkStatus();
}

}  // namespace mesa::gpu
