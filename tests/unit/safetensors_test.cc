#include "models/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/half.h"
#include "models/dtype.h"
#include "models/mapped_file.h"
#include "models/safetensors_writer.h"

namespace mesa {
namespace {

constexpr char kName[] = "bad.safetensors";

std::vector<uint8_t> Zeros(size_t n) { return std::vector<uint8_t>(n, 0); }

// A file whose 8-byte length prefix says `header_len`, followed by `remaining` zero bytes.
std::vector<uint8_t> WithLengthPrefix(uint64_t header_len, size_t remaining) {
  std::vector<uint8_t> out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(header_len >> (8 * i)));
  out.resize(8 + remaining, 0);
  return out;
}

// A file with `header` and `data_size` zero bytes of data.
std::vector<uint8_t> Raw(std::string_view header, size_t data_size = 0) {
  return SafetensorsWriter::RawFile(header, Zeros(data_size));
}

// Passes if `status` has `code` and its message names the file and contains every fact.
void ExpectError(const absl::Status& status, absl::StatusCode code,
                 const std::vector<std::string>& facts, std::string_view file = kName) {
  EXPECT_EQ(status.code(), code) << status;
  const std::string message(status.message());
  EXPECT_NE(message.find(std::string(file)), std::string::npos)
      << "message does not name the file '" << file << "': " << message;
  for (const std::string& fact : facts) {
    EXPECT_NE(message.find(fact), std::string::npos)
        << "message lacks \"" << fact << "\": " << message;
  }
}

uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

float BitsFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// ---------------------------------------------------------------------------------------------
// Malformed files: one case per failure class.
// ---------------------------------------------------------------------------------------------

struct BadCase {
  std::string name;
  std::vector<uint8_t> file;
  absl::StatusCode code;
  std::vector<std::string> facts;
  SafetensorsLimits limits = {};
};

// Keeps gtest from dumping the file bytes when a case fails.
void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

std::vector<BadCase> BadCases() {
  using absl::StatusCode::kDataLoss;
  using absl::StatusCode::kInvalidArgument;
  const std::string u8_4 = R"("dtype":"U8","shape":[4])";
  std::vector<BadCase> cases = {
      // Framing.
      {"ShortFile", {1, 2, 3, 4, 5}, kDataLoss, {"file is 5 bytes", "8-byte header length"}},
      {"EmptyFile", {}, kDataLoss, {"file is 0 bytes"}},
      {"ZeroHeaderLength", WithLengthPrefix(0, 16), kInvalidArgument, {"header length is 0"}},
      {"HeaderOverDefaultLimit",
       WithLengthPrefix(100'000'001, 16),
       kInvalidArgument,
       {"header length 100000001", "limit of 100000000 bytes"}},
      {"HeaderOverCustomLimit",
       Raw(R"({"__metadata__":{"a":"b"}})"),
       kInvalidArgument,
       {"header length 26", "limit of 16 bytes"},
       {.max_header_bytes = 16}},
      {"HeaderBeyondFile",
       WithLengthPrefix(123456, 1000),
       kDataLoss,
       {"header length 123456 exceeds the file's remaining 1000 bytes"}},
      {"HeaderLengthHuge",
       WithLengthPrefix(std::numeric_limits<uint64_t>::max(), 10),
       kInvalidArgument,
       {"header length 18446744073709551615", "limit"}},
      // Encoding and syntax.
      {"InvalidUtf8Byte",
       Raw("{\"a\xff\":1}"),
       kInvalidArgument,
       {"not valid UTF-8", "0xFF", "header offset 3", "file offset 11"}},
      {"OverlongUtf8", Raw("{\"\xc0\x80\":1}"), kInvalidArgument, {"UTF-8", "0xC0"}},
      {"Utf8Surrogate", Raw("{\"\xed\xa0\x80\":1}"), kInvalidArgument, {"UTF-8", "0xED"}},
      {"TruncatedUtf8", Raw("{\"\xe2\x82"), kInvalidArgument, {"UTF-8", "header offset 2"}},
      {"InvalidJson",
       Raw(R"({"a": })"),
       kInvalidArgument,
       {"not valid JSON", "byte 7", "column 7"}},
      {"TrailingJunk", Raw("{} x"), kInvalidArgument, {"not valid JSON", "column 4"}},
      {"UnterminatedJson", Raw(R"({"a":{"dtype":"U8")"), kInvalidArgument, {"not valid JSON"}},
      {"JsonComment", Raw("{} // hi"), kInvalidArgument, {"not valid JSON"}},
      {"TopLevelArray", Raw("[1, 2]"), kInvalidArgument, {"must be a JSON object", "found array"}},
      {"TopLevelString",
       Raw(R"("abc")"),
       kInvalidArgument,
       {"must be a JSON object", "found string 'abc'"}},
      {"TopLevelNull", Raw("null"), kInvalidArgument, {"must be a JSON object", "found null"}},
      // Duplicates.
      {"DuplicateTensorName",
       Raw(R"({"a":{)" + u8_4 + R"(,"data_offsets":[0,4]},"a":{)" + u8_4 +
               R"(,"data_offsets":[4,8]}})",
           8),
       kInvalidArgument,
       {"duplicate key 'a'"}},
      {"DuplicateField",
       Raw(R"({"w":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "duplicate key 'dtype'"}},
      {"DuplicateMetadataKey",
       Raw(R"({"__metadata__":{"k":"1","k":"2"}})"),
       kInvalidArgument,
       {"'__metadata__'", "duplicate key 'k'"}},
      {"DuplicateMetadataObject",
       Raw(R"({"__metadata__":{},"__metadata__":{}})"),
       kInvalidArgument,
       {"duplicate key '__metadata__'"}},
      // Counts.
      {"TooManyTensors",
       Raw(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
           R"("b":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
           R"("c":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"more than 2 tensors"},
       {.max_tensors = 2}},
      // Entry structure.
      {"EntryNotObject",
       Raw(R"({"w":[1]})"),
       kInvalidArgument,
       {"tensor 'w'", "must be an object", "found array"}},
      {"EntryNull", Raw(R"({"w":null})"), kInvalidArgument, {"tensor 'w'", "found null"}},
      {"MissingDtype",
       Raw(R"({"w":{"shape":[4],"data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "missing field 'dtype'"}},
      {"MissingShapeAndOffsets",
       Raw(R"({"w":{"dtype":"U8"}})"),
       kInvalidArgument,
       {"tensor 'w'", "missing fields 'shape', 'data_offsets'"}},
      {"DtypeNotString",
       Raw(R"({"w":{"dtype":5,"shape":[4],"data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "'dtype' must be a string", "found number 5"}},
      {"ShapeNotArray",
       Raw(R"({"w":{"dtype":"U8","shape":"4","data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "'shape' must be an array", "found string '4'"}},
      {"OffsetsNotArray",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":{}}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "'data_offsets' must be an array", "found object"}},
      {"UnknownField",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"foo":1}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "unknown field 'foo'"}},
      // Values.
      {"UnknownDtype",
       Raw(R"({"w":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", 2),
       kInvalidArgument,
       {"tensor 'w'", "unknown dtype 'F4'", "BF16"}},
      {"LowercaseDtype",
       Raw(R"({"w":{"dtype":"bf16","shape":[2],"data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "unknown dtype 'bf16'"}},
      {"RankOverDefaultLimit",
       Raw(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}})", 1),
       kInvalidArgument,
       {"tensor 'w'", "more than 8 dimensions"}},
      {"RankOverCustomLimit",
       Raw(R"({"w":{"dtype":"U8","shape":[1,1,1],"data_offsets":[0,1]}})", 1),
       kInvalidArgument,
       {"tensor 'w'", "more than 2 dimensions"},
       {.max_rank = 2}},
      {"NegativeDim",
       Raw(R"({"w":{"dtype":"U8","shape":[2,-3],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"tensor 'w'", "shape dimension 1", "found number -3"}},
      {"FractionalDim",
       Raw(R"({"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"tensor 'w'", "shape dimension 0", "found number 1.5"}},
      {"FloatSpelledDim",
       Raw(R"({"w":{"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "found number 4.0"}},
      {"DimOverInt64",
       Raw(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"tensor 'w'", "found number 9223372036854775808"}},
      {"DimNotNumber",
       Raw(R"({"w":{"dtype":"U8","shape":[[4]],"data_offsets":[0,4]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "shape dimension 0", "found array"}},
      {"ElementCountOverflow",
       Raw(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"tensor 'w'", "shape [4294967296, 4294967296]", "more than 2^64-1 elements"}},
      {"ElementCountOverflowBeforeZeroDim",
       Raw(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"tensor 'w'", "more than 2^64-1 elements"}},
      {"ByteSizeOverflow",
       Raw(R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
       kInvalidArgument,
       {"tensor 'w'", "shape [4611686018427387904] of F32", "more than 2^64-1 bytes"}},
      {"OffsetsTooFew",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "exactly 2 elements, found 1"}},
      {"OffsetsTooMany",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4,8]}})", 8),
       kInvalidArgument,
       {"tensor 'w'", "exactly 2 elements, found more"}},
      {"OffsetNegative",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[-1,3]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "data_offsets element 0", "found number -1"}},
      {"OffsetFloat",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4.0]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "data_offsets element 1", "found number 4.0"}},
      {"OffsetOverUint64",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,18446744073709551616]}})", 4),
       kInvalidArgument,
       {"tensor 'w'", "found number 18446744073709551616"}},
      {"BeginAfterEnd",
       Raw(R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}})", 8),
       kInvalidArgument,
       {"tensor 'w'", "data_offsets [8, 4] begin after they end"}},
      {"ByteSizeMismatch",
       Raw(R"({"model.norm.weight":{"dtype":"BF16","shape":[64],"data_offsets":[0,100]}})", 100),
       kInvalidArgument,
       {"bad.safetensors: tensor 'model.norm.weight': data_offsets [0, 100] hold 100 bytes but "
        "shape [64] of BF16 needs 128"}},
      {"OffsetsBeyondData",
       Raw(R"({"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})", 8),
       kDataLoss,
       {"tensor 'w'", "data_offsets [0, 16]", "8-byte data section"}},
      {"OffsetsNearUint64MaxBeyondData",
       Raw(R"({"w":{"dtype":"U8","shape":[4],)"
           R"("data_offsets":[18446744073709551611,18446744073709551615]}})"),
       kDataLoss,
       {"tensor 'w'", "[18446744073709551611, 18446744073709551615]", "0-byte data section"}},
      {"SizeMatchesButFarBeyondData",
       Raw(R"({"w":{"dtype":"U8","shape":[9223372036854775807],)"
           R"("data_offsets":[0,9223372036854775807]}})",
           4),
       kDataLoss,
       {"tensor 'w'", "[0, 9223372036854775807]", "4-byte data section"}},
      // Layout of the data section.
      {"Overlap",
       Raw(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
           R"("b":{"dtype":"U8","shape":[8],"data_offsets":[4,12]}})",
           12),
       kInvalidArgument,
       {"tensor 'b': data_offsets [4, 12] overlap tensor 'a' at [0, 8]"}},
      {"SameOffsets",
       Raw(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})",
           4),
       kInvalidArgument,
       {"tensor 'b'", "overlap tensor 'a'"}},
      {"GapBetweenTensors",
       Raw(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
           R"("b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})",
           12),
       kInvalidArgument,
       {"bytes [4, 8) belong to no tensor", "tensor 'a'", "tensor 'b'"}},
      {"GapAtStart",
       Raw(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8),
       kInvalidArgument,
       {"bytes [0, 4) belong to no tensor", "start of the data section", "tensor 'a'"}},
      {"TrailingGap",
       Raw(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 8),
       kInvalidArgument,
       {"bytes [4, 8) belong to no tensor", "end at byte 4", "has 8 bytes"}},
      {"DataWithoutTensors", Raw("{}", 3), kInvalidArgument, {"bytes [0, 3) belong to no tensor"}},
      // Metadata.
      {"MetadataNotObject",
       Raw(R"({"__metadata__":[]})"),
       kInvalidArgument,
       {"'__metadata__' must be an object", "found array"}},
      {"MetadataNull",
       Raw(R"({"__metadata__":null})"),
       kInvalidArgument,
       {"'__metadata__' must be an object", "found null"}},
      {"MetadataValueNotString",
       Raw(R"({"__metadata__":{"format":1}})"),
       kInvalidArgument,
       {"'__metadata__' value for key 'format'", "must be a string", "found number 1"}},
      {"MetadataValueObject",
       Raw(R"({"__metadata__":{"format":{}}})"),
       kInvalidArgument,
       {"key 'format'", "found object"}},
  };
  return cases;
}

class BadFileTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadFileTest, FailsWithClearMessage) {
  const BadCase& c = GetParam();
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Parse(absl::MakeConstSpan(c.file), kName, c.limits);
  ASSERT_FALSE(file.ok()) << c.name << " parsed";
  ExpectError(file.status(), c.code, c.facts);
  EXPECT_EQ(file.status().message().substr(0, sizeof(kName) + 1), absl::StrCat(kName, ": "))
      << file.status();
}

INSTANTIATE_TEST_SUITE_P(Safetensors, BadFileTest, ::testing::ValuesIn(BadCases()),
                         [](const ::testing::TestParamInfo<BadCase>& param_info) {
                           return param_info.param.name;
                         });

TEST(SafetensorsParseTest, LongNamesAreShortenedInMessages) {
  const std::string name(5000, 'x');
  const std::vector<uint8_t> file =
      Raw(absl::StrCat(R"({")", name, R"(":{"dtype":"U8","shape":[1],"data_offsets":[0,2]}})"), 2);
  absl::StatusOr<SafetensorsFile> parsed = SafetensorsFile::Parse(file, kName);
  ASSERT_FALSE(parsed.ok());
  EXPECT_LT(parsed.status().message().size(), 1000u) << parsed.status();
  ExpectError(parsed.status(), absl::StatusCode::kInvalidArgument, {"(5000 bytes)", "needs 1"});
}

// ---------------------------------------------------------------------------------------------
// Well-formed files.
// ---------------------------------------------------------------------------------------------

TEST(SafetensorsParseTest, EmptyHeaderHasNoTensors) {
  const std::vector<uint8_t> bytes = Raw("{}");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->tensors().empty());
  EXPECT_TRUE(file->metadata().empty());
  EXPECT_EQ(file->data_offset(), 10u);
  EXPECT_EQ(file->display_name(), kName);
}

TEST(SafetensorsParseTest, AcceptsHandWrittenHeaderSortsAndFinds) {
  // Keys out of name order, offsets out of key order, whitespace padding, a scalar, and
  // zero-element tensors (one of them sharing an offset with a real tensor).
  const std::vector<uint8_t> bytes = Raw(
      R"(  { "z": {"data_offsets": [0, 6], "shape": [3], "dtype": "I16"},
            "a": {"dtype": "F32", "shape": [], "data_offsets": [6, 10]},
            "empty": {"dtype": "BF16", "shape": [4, 0, 7], "data_offsets": [6, 6]},
            "tail": {"dtype": "U8", "shape": [0], "data_offsets": [10, 10]} }      )",
      10);
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<std::string> names;
  for (const TensorInfo& t : file->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "empty", "tail", "z"}));

  const TensorInfo* z = file->Find("z");
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z->dtype, DType::kI16);
  EXPECT_EQ(z->shape, std::vector<int64_t>{3});
  EXPECT_EQ(z->num_elements(), 3);
  EXPECT_EQ(file->Data(*z).size(), 6u);
  EXPECT_EQ(file->Data(*z).data(), bytes.data() + file->data_offset());

  const TensorInfo* a = file->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_TRUE(a->shape.empty());
  EXPECT_EQ(a->num_elements(), 1);

  const TensorInfo* empty = file->Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->num_elements(), 0);
  EXPECT_TRUE(file->Data(*empty).empty());
  std::vector<float> none;
  EXPECT_TRUE(CopyTensorToFloat(*file, *empty, absl::MakeSpan(none)).ok());

  EXPECT_EQ(file->Find("missing"), nullptr);
  EXPECT_EQ(file->Find(""), nullptr);
  EXPECT_EQ(file->Find("zz"), nullptr);
}

TEST(SafetensorsParseTest, DataOfForeignInfoIsEmptyNotOutOfBounds) {
  const std::vector<uint8_t> bytes = Raw("{}");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  TensorInfo foreign{.name = "x", .dtype = DType::kF32, .shape = {4}, .begin = 0, .end = 16};
  EXPECT_TRUE(file->Data(foreign).empty());
  std::vector<float> out(4);
  EXPECT_EQ(CopyTensorToFloat(*file, foreign, absl::MakeSpan(out)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsParseTest, NumElementsOfHandBuiltInfoNeverOverflows) {
  TensorInfo t;
  t.shape = {-1, 2};
  EXPECT_EQ(t.num_elements(), -1);
  t.shape = {int64_t{1} << 40, int64_t{1} << 40};
  EXPECT_EQ(t.num_elements(), -1);
}

// ---------------------------------------------------------------------------------------------
// Writer.
// ---------------------------------------------------------------------------------------------

TEST(SafetensorsWriterTest, ProducesPaddedSortedContiguousFile) {
  SafetensorsWriter writer;
  writer.AddFloat32("b", {2}, std::vector<float>{1.0f, 2.0f});
  writer.Add("a", DType::kU8, {3}, {7, 8, 9});
  writer.SetMetadata("format", "pt");
  const std::vector<uint8_t> bytes = writer.Serialize();

  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= uint64_t{bytes[i]} << (8 * i);
  EXPECT_EQ(header_len % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + header_len + 3 + 8);
  const std::string header(bytes.begin() + 8, bytes.begin() + 8 + header_len);
  EXPECT_EQ(header.find(R"("a":{"data_offsets":[0,3])"), header.find(R"("a":)")) << header;
  EXPECT_NE(header.find(R"("data_offsets":[3,11])"), std::string::npos) << header;
  EXPECT_LT(header.find(R"("a":)"), header.find(R"("b":)"));

  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, "w.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->data_offset() % 8, 0u);
  const TensorInfo* a = file->Find("a");
  ASSERT_NE(a, nullptr);
  absl::Span<const uint8_t> data = file->Data(*a);
  EXPECT_EQ(std::vector<uint8_t>(data.begin(), data.end()), (std::vector<uint8_t>{7, 8, 9}));
}

TEST(SafetensorsWriterTest, MetadataRoundTrip) {
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  writer.SetMetadata("note", "quotes \" and \\ and unicode \xc3\xa9 and \n newline");
  writer.SetMetadata("", "empty key");
  writer.SetMetadata("format", "safetensors");  // replaces
  writer.AddBf16("w", {1}, std::vector<float>{1.0f});
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  const std::map<std::string, std::string> expected = {
      {"", "empty key"},
      {"format", "safetensors"},
      {"note", "quotes \" and \\ and unicode \xc3\xa9 and \n newline"}};
  EXPECT_EQ(file->metadata(), expected);
}

TEST(SafetensorsWriterTest, RawFileKeepsHeaderVerbatim) {
  const std::vector<uint8_t> bytes = SafetensorsWriter::RawFile("{ }", std::vector<uint8_t>{9});
  EXPECT_EQ(bytes, (std::vector<uint8_t>{3, 0, 0, 0, 0, 0, 0, 0, '{', ' ', '}', 9}));
}

// ---------------------------------------------------------------------------------------------
// Conversions.
// ---------------------------------------------------------------------------------------------

TEST(SafetensorsConvertTest, Float32RoundTripIsBitExact) {
  const std::vector<float> values = {0.0f,
                                     -0.0f,
                                     1.0f,
                                     -2.5f,
                                     3.14159265f,
                                     std::numeric_limits<float>::denorm_min(),
                                     std::numeric_limits<float>::min(),
                                     std::numeric_limits<float>::max(),
                                     std::numeric_limits<float>::infinity(),
                                     -std::numeric_limits<float>::infinity(),
                                     BitsFloat(0x7fc01234u)};  // NaN with a payload
  SafetensorsWriter writer;
  writer.AddFloat32("f", {static_cast<int64_t>(values.size())}, values);
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> out(values.size());
  ASSERT_TRUE(CopyTensorToFloat(*file, *file->Find("f"), absl::MakeSpan(out)).ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(FloatBits(out[i]), FloatBits(values[i])) << "element " << i;
  }
}

TEST(SafetensorsConvertTest, Float32ToBf16RoundsToNearestEven) {
  const std::vector<uint32_t> in = {
      0x3f800000u,  // 1.0
      0x3f808000u,  // halfway between 0x3f80 and 0x3f81: ties to even 0x3f80
      0x3f818000u,  // halfway between 0x3f81 and 0x3f82: ties to even 0x3f82
      0x3f808001u,  // just above halfway: up
      0x3f807fffu,  // just below halfway: down
      0x7f800000u,  // +inf
      0xff800000u,  // -inf
      0x7f7fffffu,  // float max rounds up to inf
      0x80000000u,  // -0
  };
  const std::vector<uint16_t> expected = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x3f80,
                                          0x7f80, 0xff80, 0x7f80, 0x8000};
  std::vector<float> floats;
  for (uint32_t b : in) floats.push_back(BitsFloat(b));
  floats.push_back(std::numeric_limits<float>::quiet_NaN());
  SafetensorsWriter writer;
  writer.AddFloat32("f", {static_cast<int64_t>(floats.size())}, floats);
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<uint16_t> out(floats.size());
  ASSERT_TRUE(CopyTensorToBf16(*file, *file->Find("f"), absl::MakeSpan(out)).ok());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(out[i], expected[i]) << "element " << i;
  }
  EXPECT_TRUE(std::isnan(Bf16ToFloat(out.back())));
}

TEST(SafetensorsConvertTest, Bf16RoundTripIsExact) {
  const std::vector<uint16_t> bits = {0x0000, 0x8000, 0x3f80, 0xc020, 0x0001,
                                      0x807f, 0x7f7f, 0x7f80, 0xff80, 0x7fc1};
  SafetensorsWriter writer;
  writer.AddBits16("b", DType::kBF16, {2, 5}, bits);
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo& info = *file->Find("b");

  std::vector<float> as_float(bits.size());
  ASSERT_TRUE(CopyTensorToFloat(*file, info, absl::MakeSpan(as_float)).ok());
  for (size_t i = 0; i < bits.size(); ++i) {
    EXPECT_EQ(FloatBits(as_float[i]), uint32_t{bits[i]} << 16) << "element " << i;
  }
  std::vector<uint16_t> as_bf16(bits.size());
  ASSERT_TRUE(CopyTensorToBf16(*file, info, absl::MakeSpan(as_bf16)).ok());
  EXPECT_EQ(as_bf16, bits);

  // The AddBf16 helper rounds floats to nearest even, like FloatToBf16.
  SafetensorsWriter rounded;
  rounded.AddBf16("r", {2}, std::vector<float>{BitsFloat(0x3f808000u), BitsFloat(0x3f818000u)});
  const std::vector<uint8_t> rounded_bytes = rounded.Serialize();
  absl::StatusOr<SafetensorsFile> rounded_file = SafetensorsFile::Parse(rounded_bytes, kName);
  ASSERT_TRUE(rounded_file.ok()) << rounded_file.status();
  std::vector<uint16_t> r(2);
  ASSERT_TRUE(CopyTensorToBf16(*rounded_file, *rounded_file->Find("r"), absl::MakeSpan(r)).ok());
  EXPECT_EQ(r, (std::vector<uint16_t>{0x3f80, 0x3f82}));
}

TEST(SafetensorsConvertTest, Fp16IncludingSubnormalsAndInfinities) {
  const float inf = std::numeric_limits<float>::infinity();
  // Expected values are written out independently of base/half.h.
  const std::vector<std::pair<uint16_t, float>> cases = {
      {0x0000, 0.0f},
      {0x8000, -0.0f},
      {0x3c00, 1.0f},
      {0xc000, -2.0f},
      {0x0001, std::ldexp(1.0f, -24)},  // smallest subnormal
      {0x8001, -std::ldexp(1.0f, -24)},
      {0x0200, std::ldexp(1.0f, -15)},     // a mid subnormal
      {0x03ff, std::ldexp(1023.0f, -24)},  // largest subnormal
      {0x0400, std::ldexp(1.0f, -14)},     // smallest normal
      {0x7bff, 65504.0f},                  // largest finite
      {0x7c00, inf},
      {0xfc00, -inf},
      {0x3555, std::ldexp(1365.0f, -12)},  // 0.333251953125
  };
  std::vector<uint16_t> bits;
  for (const auto& [b, f] : cases) bits.push_back(b);
  bits.push_back(0x7e00);  // NaN
  SafetensorsWriter writer;
  writer.AddBits16("h", DType::kF16, {static_cast<int64_t>(bits.size())}, bits);
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo& info = *file->Find("h");

  std::vector<float> out(bits.size());
  ASSERT_TRUE(CopyTensorToFloat(*file, info, absl::MakeSpan(out)).ok());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(FloatBits(out[i]), FloatBits(cases[i].second))
        << "fp16 0x" << std::hex << cases[i].first << " gave " << out[i];
  }
  EXPECT_TRUE(std::isnan(out.back()));

  std::vector<uint16_t> bf16(bits.size());
  ASSERT_TRUE(CopyTensorToBf16(*file, info, absl::MakeSpan(bf16)).ok());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(bf16[i], FloatToBf16(cases[i].second)) << "fp16 0x" << std::hex << cases[i].first;
  }
  EXPECT_EQ(bf16[9], 0x4780);   // 65504 = 1.999 * 2^15 rounds up to 2^16
  EXPECT_EQ(bf16[10], 0x7f80);  // inf stays inf
  EXPECT_EQ(bf16[4], 0x3380);   // 2^-24 is exact in bf16
  EXPECT_TRUE(std::isnan(Bf16ToFloat(bf16.back())));
}

TEST(SafetensorsConvertTest, Fp16ToBf16TiesToEven) {
  // fp16 has 10 mantissa bits and bf16 7: 1 + 2^-8 lies halfway between bf16 1.0 and 1 + 2^-7.
  const std::vector<uint16_t> bits = {0x3c04, 0x3c0c, 0x3c05, 0x3c03};
  SafetensorsWriter writer;
  writer.AddBits16("h", DType::kF16, {4}, bits);
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<uint16_t> out(4);
  ASSERT_TRUE(CopyTensorToBf16(*file, *file->Find("h"), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, (std::vector<uint16_t>{0x3f80, 0x3f82, 0x3f81, 0x3f80}));
}

TEST(SafetensorsConvertTest, AddFloat16RoundsLikeFloatToFp16) {
  SafetensorsWriter writer;
  writer.AddFloat16("h", {3}, std::vector<float>{1.0f, 1e6f, std::ldexp(1.0f, -24)});
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> out(3);
  ASSERT_TRUE(CopyTensorToFloat(*file, *file->Find("h"), absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[2], std::ldexp(1.0f, -24));
}

TEST(SafetensorsConvertTest, RejectsOtherDtypesNamingTensorAndDtype) {
  SafetensorsWriter writer;
  writer.Add("ids", DType::kI32, {2}, std::vector<uint8_t>(8, 0));
  writer.Add("f8", DType::kF8E4M3, {2}, std::vector<uint8_t>(2, 0));
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> f(2);
  std::vector<uint16_t> h(2);
  ExpectError(CopyTensorToFloat(*file, *file->Find("ids"), absl::MakeSpan(f)),
              absl::StatusCode::kInvalidArgument, {"tensor 'ids'", "dtype I32", "float"});
  ExpectError(CopyTensorToBf16(*file, *file->Find("f8"), absl::MakeSpan(h)),
              absl::StatusCode::kInvalidArgument, {"tensor 'f8'", "dtype F8_E4M3", "bf16"});
}

TEST(SafetensorsConvertTest, RejectsWrongOutputSize) {
  SafetensorsWriter writer;
  writer.AddFloat32("w", {2, 2}, std::vector<float>{1, 2, 3, 4});
  const std::vector<uint8_t> bytes = writer.Serialize();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(bytes, kName);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> small(3);
  ExpectError(CopyTensorToFloat(*file, *file->Find("w"), absl::MakeSpan(small)),
              absl::StatusCode::kInvalidArgument,
              {"tensor 'w'", "shape [2, 2] has 4 elements", "output holds 3"});
  std::vector<uint16_t> big(5);
  ExpectError(CopyTensorToBf16(*file, *file->Find("w"), absl::MakeSpan(big)),
              absl::StatusCode::kInvalidArgument, {"tensor 'w'", "4 elements", "holds 5"});
}

// ---------------------------------------------------------------------------------------------
// Files on disk.
// ---------------------------------------------------------------------------------------------

// Gives each test its own directory under TempDir() and removes it afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::path(::testing::TempDir()) /
           absl::StrCat("safetensors_test_", ::getpid(), "_", info->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::filesystem::path TempPath(std::string_view name) const { return dir_ / name; }

 private:
  std::filesystem::path dir_;
};

using SafetensorsOpenTest = TempDirTest;
using MappedFileTest = TempDirTest;

void WriteBytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

TEST_F(SafetensorsOpenTest, OpensFileWrittenByWriter) {
  const std::filesystem::path path = TempPath("model.safetensors");
  SafetensorsWriter writer;
  writer.AddBf16("model.norm.weight", {3}, std::vector<float>{1.0f, -0.5f, 2.0f});
  writer.AddFloat32("model.embed", {2}, std::vector<float>{0.25f, 8.0f});
  writer.SetMetadata("format", "pt");
  ASSERT_TRUE(writer.WriteFile(path).ok());

  absl::StatusOr<SafetensorsFile> opened = SafetensorsFile::Open(path);
  ASSERT_TRUE(opened.ok()) << opened.status();
  // Moving the object must keep the mapping (and the spans into it) alive.
  std::vector<SafetensorsFile> files;
  files.push_back(std::move(opened).value());
  const SafetensorsFile& file = files[0];
  EXPECT_EQ(file.display_name(), path.string());
  EXPECT_EQ(file.metadata().at("format"), "pt");
  std::vector<float> norm(3);
  ASSERT_TRUE(CopyTensorToFloat(file, *file.Find("model.norm.weight"), absl::MakeSpan(norm)).ok());
  EXPECT_EQ(norm, (std::vector<float>{1.0f, -0.5f, 2.0f}));
  std::vector<float> embed(2);
  ASSERT_TRUE(CopyTensorToFloat(file, *file.Find("model.embed"), absl::MakeSpan(embed)).ok());
  EXPECT_EQ(embed, (std::vector<float>{0.25f, 8.0f}));
}

TEST_F(SafetensorsOpenTest, MissingFileNamesPath) {
  const std::filesystem::path path = TempPath("does_not_exist.safetensors");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  ExpectError(file.status(), absl::StatusCode::kNotFound, {"No such file or directory"},
              path.string());
}

TEST_F(SafetensorsOpenTest, TruncatedFileOnDiskIsDataLoss) {
  SafetensorsWriter writer;
  writer.AddFloat32("w", {4}, std::vector<float>{1, 2, 3, 4});
  std::vector<uint8_t> bytes = writer.Serialize();
  bytes.resize(bytes.size() - 3);
  const std::filesystem::path path = TempPath("truncated.safetensors");
  WriteBytes(path, bytes);
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  ExpectError(file.status(), absl::StatusCode::kDataLoss,
              {"tensor 'w'", "data_offsets [0, 16]", "13-byte data section"}, path.string());

  // Cut inside the header: the length prefix points past the end.
  bytes.resize(20);
  WriteBytes(path, bytes);
  file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  ExpectError(file.status(), absl::StatusCode::kDataLoss, {"exceeds the file's remaining 12 bytes"},
              path.string());
}

TEST_F(SafetensorsOpenTest, EmptyFileAndDirectory) {
  const std::filesystem::path path = TempPath("empty.safetensors");
  WriteBytes(path, {});
  absl::StatusOr<MappedFile> mapped = MappedFile::Open(path);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_TRUE(mapped->bytes().empty());
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  ExpectError(file.status(), absl::StatusCode::kDataLoss, {"file is 0 bytes"}, path.string());

  const std::filesystem::path dir = TempPath("a_directory");
  std::filesystem::create_directories(dir);
  file = SafetensorsFile::Open(dir);
  ASSERT_FALSE(file.ok());
  ExpectError(file.status(), absl::StatusCode::kInvalidArgument, {"not a regular file"},
              dir.string());
}

TEST_F(SafetensorsOpenTest, WriteFileErrorNamesPath) {
  const std::filesystem::path path = TempPath("no_such_dir") / "x.safetensors";
  const absl::Status status = SafetensorsWriter().WriteFile(path);
  ExpectError(status, absl::StatusCode::kNotFound, {"No such file or directory"}, path.string());
}

TEST_F(MappedFileTest, MoveKeepsBytesAtSameAddress) {
  const std::filesystem::path path = TempPath("mapped.bin");
  WriteBytes(path, {1, 2, 3, 4, 5});
  absl::StatusOr<MappedFile> mapped = MappedFile::Open(path);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  const uint8_t* data = mapped->bytes().data();
  MappedFile moved = std::move(mapped).value();
  EXPECT_EQ(moved.bytes().data(), data);
  EXPECT_EQ(moved.bytes().size(), 5u);
  EXPECT_EQ(moved.bytes()[4], 5);
  EXPECT_EQ(moved.path(), path);
  MappedFile assigned = std::move(moved);
  assigned = std::move(assigned);  // self-move leaves it usable
  EXPECT_EQ(assigned.bytes()[0], 1);
}

// ---------------------------------------------------------------------------------------------
// DType.
// ---------------------------------------------------------------------------------------------

TEST(DTypeTest, NamesSizesAndParsing) {
  const std::vector<std::pair<DType, size_t>> all = {
      {DType::kBool, 1}, {DType::kU8, 1},     {DType::kI8, 1},    {DType::kI16, 2},
      {DType::kU16, 2},  {DType::kF16, 2},    {DType::kBF16, 2},  {DType::kI32, 4},
      {DType::kU32, 4},  {DType::kF32, 4},    {DType::kF64, 8},   {DType::kI64, 8},
      {DType::kU64, 8},  {DType::kF8E4M3, 1}, {DType::kF8E5M2, 1}};
  std::vector<std::string> names;
  for (const auto& [dtype, size] : all) {
    EXPECT_EQ(DTypeSize(dtype), size) << DTypeName(dtype);
    EXPECT_EQ(ParseDType(DTypeName(dtype)), dtype);
    names.emplace_back(DTypeName(dtype));
  }
  EXPECT_EQ(absl::StrJoin(names, ","),
            "BOOL,U8,I8,I16,U16,F16,BF16,I32,U32,F32,F64,I64,U64,F8_E4M3,F8_E5M2");
  EXPECT_EQ(ParseDType("bf16"), std::nullopt);
  EXPECT_EQ(ParseDType(""), std::nullopt);
  EXPECT_EQ(ParseDType("F8E4M3"), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Robustness: corrupt a valid file at random; Parse must return (either way) without reading
// outside the buffer, and whatever it accepts must be safe to read.
// ---------------------------------------------------------------------------------------------

TEST(SafetensorsFuzzTest, RandomCorruptionNeverCrashes) {
  SafetensorsWriter writer;
  writer.AddBf16("layers.0.w", {2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  writer.AddFloat32("layers.0.b", {3}, std::vector<float>{-1, 0.5f, 7});
  writer.AddFloat16("layers.1.w", {4}, std::vector<float>{1, 2, 3, 4});
  writer.Add("empty", DType::kI64, {0, 5}, {});
  writer.Add("ids", DType::kI32, {2}, std::vector<uint8_t>(8, 1));
  writer.SetMetadata("format", "pt");
  const std::vector<uint8_t> valid = writer.Serialize();
  ASSERT_TRUE(SafetensorsFile::Parse(valid, kName).ok());

  std::mt19937 rng(12345);
  int accepted = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<uint8_t> bytes = valid;
    const int mode = static_cast<int>(rng() % 4);
    if (mode == 0) {  // truncate
      bytes.resize(rng() % (bytes.size() + 1));
    } else {  // flip 1-4 bytes; mode 1 aims at the length prefix and the header's digits
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) {
        const size_t pos = mode == 1 ? rng() % 16 : rng() % bytes.size();
        if (mode == 3) {
          bytes[pos] = static_cast<uint8_t>(rng());
        } else {
          bytes[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
        }
      }
    }
    // A buffer of exactly the corrupted size, so a sanitizer sees any over-read.
    const std::vector<uint8_t> exact(bytes.begin(), bytes.end());
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Parse(exact, kName);
    if (!file.ok()) {
      EXPECT_FALSE(file.status().message().empty());
      continue;
    }
    ++accepted;
    for (const TensorInfo& t : file->tensors()) {
      ASSERT_GE(t.num_elements(), 0);
      ASSERT_EQ(file->Data(t).size(), static_cast<size_t>(t.num_elements()) * DTypeSize(t.dtype));
      if (t.dtype == DType::kBF16 || t.dtype == DType::kF16 || t.dtype == DType::kF32) {
        std::vector<float> f(static_cast<size_t>(t.num_elements()));
        EXPECT_TRUE(CopyTensorToFloat(*file, t, absl::MakeSpan(f)).ok());
        std::vector<uint16_t> h(f.size());
        EXPECT_TRUE(CopyTensorToBf16(*file, t, absl::MakeSpan(h)).ok());
      }
    }
  }
  // Flips in the data section leave the header intact, so some files must still parse.
  EXPECT_GT(accepted, 0);
}

}  // namespace
}  // namespace mesa
