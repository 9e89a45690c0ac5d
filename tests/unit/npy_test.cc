// .npy reading: round trip of what WriteNpyFloat32 writes, and the malformed headers
// fuzz_npy found (a shape entry that is not a number used to escape as std::invalid_argument).
#include <fstream>
#include <string>
#include <unistd.h>

#include "base/npy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mesa {
namespace {

using ::testing::HasSubstr;

class NpyTest : public ::testing::Test {
 protected:
  std::filesystem::path Path() const {
    return std::filesystem::temp_directory_path() /
           ("mesa_npy_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".npy");
  }
  void TearDown() override { std::filesystem::remove(Path()); }

  // A version 1.0 file with `header` (padded with spaces and a newline) and `data` bytes.
  void WriteRaw(const std::string& header_text, const std::string& data) {
    std::string header = header_text;
    header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
    header.push_back('\n');
    std::ofstream out(Path(), std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const char len[2] = {static_cast<char>(header.size() & 0xff),
                         static_cast<char>(header.size() >> 8)};
    out.write(len, 2);
    out << header << data;
  }

  std::string ErrorOf(const std::string& shape, const std::string& data = std::string(64, '\0')) {
    WriteRaw("{'descr': '<i8', 'fortran_order': False, 'shape': " + shape + ", }", data);
    auto a = ReadNpy(Path());
    return a.ok() ? "" : std::string(a.status().message());
  }
};

TEST_F(NpyTest, Float32RoundTrip) {
  const float values[6] = {1.5f, -2.f, 0.f, 3.25f, 1e-3f, 7.f};
  ASSERT_TRUE(WriteNpyFloat32(Path(), values, {2, 3}).ok());
  auto a = ReadNpy(Path());
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->descr, "<f4");
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a->f32, std::vector<float>(values, values + 6));
}

TEST_F(NpyTest, ShapesWithSpacesAndTrailingCommasParse) {
  EXPECT_EQ(ErrorOf("( 2 , 4 ,)"), "");
  EXPECT_EQ(ErrorOf("()"), "");  // a scalar
  EXPECT_EQ(ErrorOf("(0, 5)"), "");
}

TEST_F(NpyTest, ShapeEntriesThatAreNotDimensionsAreErrors) {
  EXPECT_THAT(ErrorOf("( ,} )"), HasSubstr("'}' is not a dimension"));
  EXPECT_THAT(ErrorOf("(3, x)"), HasSubstr("'x' is not a dimension"));
  EXPECT_THAT(ErrorOf("(-1,)"), HasSubstr("'-1' is not a dimension"));
  EXPECT_THAT(ErrorOf("(99999999999999999999,)"), HasSubstr("is not a dimension"));
}

TEST_F(NpyTest, ElementCountsPastTheLimitAreErrorsNotOverflows) {
  EXPECT_THAT(ErrorOf("(4294967296, 4294967296)"), HasSubstr("more than 2^31 elements"));
  EXPECT_THAT(ErrorOf("(100, 100)"), HasSubstr("truncated data"));
}

}  // namespace
}  // namespace mesa
