// bf16 and fp16 <-> fp32 conversions, and rounding helpers that emulate storing a float in
// a 16-bit type (round to nearest even), which is how the engine reproduces the rounding
// points of flash-linear-attention's bf16 model on the CPU.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace mesa {

inline float Bf16ToFloat(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint16_t FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// `f` as a tensor core reads an fp32 operand in TF32 mode: the low 13 mantissa bits are
// dropped (truncation), leaving 10. Matches fla's fp32 tl.dot products more closely than
// round-to-nearest does (checked against the fla goldens).
inline float RoundTf32(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7f800000u) != 0x7f800000u) bits &= 0xffffe000u;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// The float nearest to `f` that a bf16 can hold.
inline float RoundBf16(float f) { return Bf16ToFloat(FloatToBf16(f)); }

// Portable conversions (exact, round to nearest even).
float Fp16ToFloatSoft(uint16_t h);
uint16_t FloatToFp16Soft(float f);

#if defined(__F16C__)
// F16C (part of x86-64-v3) converts in one instruction each way; this sits on the hot path
// of the prefill kernel, which emulates fla's fp16 rounding points.
inline float Fp16ToFloat(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t FloatToFp16(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
inline float Fp16ToFloat(uint16_t h) { return Fp16ToFloatSoft(h); }
inline uint16_t FloatToFp16(float f) { return FloatToFp16Soft(f); }
#endif

// The float nearest to `f` that an IEEE fp16 can hold (overflow gives +-inf, as on a GPU).
inline float RoundFp16(float f) { return Fp16ToFloat(FloatToFp16(f)); }

// How a computed fp32 value is stored: the model's activation dtype, or an operand format of
// a tensor-core product. kTf32 keeps 10 mantissa bits (RoundTf32).
enum class Rounding { kNone, kBf16, kFp16, kTf32 };

inline float ApplyRounding(float x, Rounding rounding) {
  switch (rounding) {
    case Rounding::kNone: return x;
    case Rounding::kBf16: return RoundBf16(x);
    case Rounding::kFp16: return RoundFp16(x);
    case Rounding::kTf32: return RoundTf32(x);
  }
  return x;
}

// A model's compute dtype (config.json "torch_dtype"/"dtype") and the storage of its weights.
enum class ScalarType { kBf16, kFp16, kFp32 };

inline Rounding RoundingFor(ScalarType t) {
  switch (t) {
    case ScalarType::kBf16: return Rounding::kBf16;
    case ScalarType::kFp16: return Rounding::kFp16;
    case ScalarType::kFp32: return Rounding::kNone;
  }
  return Rounding::kNone;
}

inline const char* ScalarTypeName(ScalarType t) {
  switch (t) {
    case ScalarType::kBf16: return "bfloat16";
    case ScalarType::kFp16: return "float16";
    case ScalarType::kFp32: return "float32";
  }
  return "?";
}

}  // namespace mesa
