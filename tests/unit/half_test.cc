// bf16/fp16 conversions: the hardware path (F16C when built for it) must agree bit for bit
// with the portable one, which tests/unit/safetensors_test.cc checks against known values.
#include <cmath>
#include <cstring>
#include <random>

#include "base/half.h"
#include "gtest/gtest.h"

namespace mesa {
namespace {

TEST(HalfTest, HardwareAndPortableFp16ConversionsAgreeOnEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float a = Fp16ToFloat(static_cast<uint16_t>(h));
    const float b = Fp16ToFloatSoft(static_cast<uint16_t>(h));
    if (std::isnan(a)) {
      EXPECT_TRUE(std::isnan(b));
      continue;
    }
    ASSERT_EQ(a, b) << h;
    ASSERT_EQ(FloatToFp16(a), FloatToFp16Soft(a)) << h;
  }
}

TEST(HalfTest, RoundingAgreesOnRandomFloatsIncludingTiesAndOverflow) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    uint32_t b = bits(rng);
    float f;
    std::memcpy(&f, &b, 4);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToFp16(f), FloatToFp16Soft(f)) << f;
  }
  EXPECT_EQ(RoundFp16(65519.0f), 65504.0f);
  EXPECT_TRUE(std::isinf(RoundFp16(65520.0f)));
  EXPECT_EQ(RoundFp16(1.0f + 1.0f / 2048.0f), 1.0f);  // tie to even
  EXPECT_EQ(RoundBf16(1.0f + 1.0f / 256.0f), 1.0f);   // tie to even
  EXPECT_EQ(RoundBf16(1.0f + 3.0f / 256.0f), 1.0f + 4.0f / 256.0f);
}

}  // namespace
}  // namespace mesa
