// A float64 reference of one MesaNet head: the exact recurrence and an exact (Cholesky)
// solve of (H_kk + diag(lambda)) x = q at every token, for checking the CG kernels.
#pragma once

#include <cstdint>
#include <vector>

namespace mesa::testing {

struct ExactHeadResult {
  std::vector<double> x;  // [T, K] solutions
  std::vector<double> o;  // [T, K] readouts H_kv^T x
};

// q, k, v: [T, K] (inputs exactly as the kernel sees them); log_decay, beta: [T];
// h_kk0, h_kv0: [K, K] initial state (may be null for zero).
ExactHeadResult ExactMesaHead(int32_t t, int32_t k, const float* q, const float* kk,
                              const float* v, const float* log_decay, const float* beta,
                              const float* lambda, const float* h_kk0, const float* h_kv0);

// Solves the SPD system a x = b in place of b by Cholesky (a: [n, n], row-major, overwritten).
bool CholeskySolve(std::vector<double>& a, std::vector<double>& b, int n);

// sqrt(sum (a-b)^2) / sqrt(sum b^2)
double RelativeRms(const float* a, const double* b, int64_t n);
double RelativeRms(const float* a, const float* b, int64_t n);

}  // namespace mesa::testing
