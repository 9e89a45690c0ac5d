// How the conjugate-gradient solve of (H_kk + diag(lambda)) x = q is run. Shared by every
// backend; plain data so it can be copied into kernel parameters.
#pragma once

#include <cstdint>

namespace mesa {

enum class CgMode : int32_t {
  // flash-linear-attention's numerics: exactly `max_iters` steps, its starting points
  // (zero in prefill, the Jacobi guess in decode) and its 1e-5 damping terms.
  kFixed = 0,
  // Textbook CG from the Jacobi guess, stopped for each (token, head) as soon as
  // |r| <= tol * |q|, or after `max_iters` steps (a "cap hit").
  kAdaptive = 1,
};

struct CgControl {
  CgMode mode = CgMode::kAdaptive;
  int32_t max_iters = 30;
  float tol = 1e-3f;  // relative residual |r|/|q|; adaptive mode only
};

// fla's damping constant in the step length, the momentum ratio and the Jacobi guess.
inline constexpr float kFlaCgEps = 1e-5f;

const char* CgModeName(CgMode mode);

}  // namespace mesa
