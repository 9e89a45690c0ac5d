// What the decode and prefill mixer-input parity tests share: the in_proj row layout, the
// CPU runner's rounding of the in_proj output, and the parameter fields both kernels take.
#pragma once

#include <cstdint>
#include <vector>

#include "base/half.h"
#include "kernels/cuda/device_buffer.h"

namespace mesa::gpu::testing {

// Columns of an in_proj row as models/mesa_weights.h InProjLayout lays them out: q, k, v,
// [g], a, b; g = -1 without the output gate.
struct ProjColumns {
  int64_t dk, q, k, v, g, a, b, ld;
};

inline ProjColumns ProjColumnsFor(int heads, int head_dim, bool gate) {
  ProjColumns c;
  c.dk = static_cast<int64_t>(heads) * head_dim;
  c.q = 0;
  c.k = c.dk;
  c.v = 2 * c.dk;
  c.g = gate ? 3 * c.dk : -1;
  c.a = gate ? 4 * c.dk : 3 * c.dk;
  c.b = c.a + heads;
  c.ld = c.b + heads;
  return c;
}

// The in_proj output as the CPU runner keeps it: the gate biases added to the a and b columns,
// every value rounded to the model dtype.
inline std::vector<float> RoundedProjections(const std::vector<float>& proj, int rows,
                                             const ProjColumns& c, int heads,
                                             const std::vector<float>& a_bias,
                                             const std::vector<float>& b_bias, Rounding r) {
  std::vector<float> out = proj;
  for (int row = 0; row < rows; ++row) {
    for (int64_t j = 0; j < c.ld; ++j) {
      float bias = 0.0f;
      if (j >= c.a && j < c.a + heads) bias = a_bias[j - c.a];
      if (j >= c.b) bias = b_bias[j - c.b];
      out[row * c.ld + j] = ApplyRounding(out[row * c.ld + j] + bias, r);
    }
  }
  return out;
}

// The fields MixerInputsDecodeParams and MixerInputsPrefillParams share, from device buffers.
template <typename Params>
void SetProjectionFields(Params* p, const ProjColumns& c, const DeviceBuffer& proj,
                         const DeviceBuffer& a_bias, const DeviceBuffer& b_bias,
                         const DeviceBuffer& q_conv, const DeviceBuffer& k_conv) {
  p->proj = proj.as<float>();
  p->ld_proj = c.ld;
  p->q_col = c.q;
  p->k_col = c.k;
  p->v_col = c.v;
  p->g_col = c.g;
  p->a_col = c.a;
  p->b_col = c.b;
  p->a_bias = a_bias.as<float>();
  p->b_bias = b_bias.as<float>();
  p->q_conv = q_conv.as<float>();
  p->k_conv = k_conv.as<float>();
}

}  // namespace mesa::gpu::testing
