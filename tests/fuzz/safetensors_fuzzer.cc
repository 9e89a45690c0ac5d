// Fuzz target: SafetensorsFile::Parse on arbitrary bytes, then the Copy* conversions and a
// write/re-read round trip through SafetensorsWriter for every file it accepts.
//
// Invariants checked beyond "no crash, no sanitizer report":
//   * a rejected file gets an error naming the file, with one of the documented codes;
//   * an accepted file: data_offset() = 8 + header length; tensors sorted, names unique and
//     found by Find(); every Data() span lies inside the input, right after the header, and has
//     exactly num_elements * DTypeSize bytes; the spans tile the data section;
//   * limits are monotonic: a file accepted under tight limits is accepted under the defaults;
//   * Copy* succeeds for BF16/F16/F32 (bit-exact against the raw bytes where the conversion is
//     exact), refuses every other dtype and every wrong output size;
//   * Data() of a TensorInfo with offsets outside the file is empty (documented);
//   * SafetensorsWriter writes the same tensors and metadata back, and Parse reads them back.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/half.h"
#include "models/dtype.h"
#include "models/safetensors.h"
#include "models/safetensors_writer.h"
#include "tests/fuzz/fuzz_util.h"

namespace mesa {
namespace {

constexpr char kName[] = "fuzz.safetensors";
// Conversions are checked for tensors up to this many elements (keeps an execution fast).
constexpr int64_t kMaxCopyElements = 1 << 16;

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

uint32_t FloatBits(float f) {
  uint32_t v;
  std::memcpy(&v, &f, 4);
  return v;
}

void CheckRejected(const absl::Status& s) {
  FUZZ_CHECK(absl::StartsWith(s.message(), absl::StrCat(kName, ": ")),
             absl::StrCat("error does not name the file: ", s.ToString()));
  FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument ||
                 s.code() == absl::StatusCode::kDataLoss ||
                 s.code() == absl::StatusCode::kResourceExhausted,
             absl::StrCat("unexpected error code: ", s.ToString()));
}

void CheckConversions(const SafetensorsFile& f, const TensorInfo& t, absl::Span<const uint8_t> raw) {
  const int64_t n = t.num_elements();
  const bool convertible = t.dtype == DType::kBF16 || t.dtype == DType::kF16 || t.dtype == DType::kF32;
  if (n > kMaxCopyElements) return;
  std::vector<float> floats(static_cast<size_t>(n));
  std::vector<uint16_t> bf16(static_cast<size_t>(n));
  const absl::Status to_float = CopyTensorToFloat(f, t, absl::MakeSpan(floats));
  const absl::Status to_bf16 = CopyTensorToBf16(f, t, absl::MakeSpan(bf16));
  if (!convertible) {
    FUZZ_CHECK(!to_float.ok() && !to_bf16.ok(),
               absl::StrCat("Copy* accepted dtype ", DTypeName(t.dtype)));
    return;
  }
  FUZZ_CHECK(to_float.ok(), to_float.ToString());
  FUZZ_CHECK(to_bf16.ok(), to_bf16.ToString());
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = static_cast<size_t>(i);
    switch (t.dtype) {
      case DType::kBF16: {
        const uint16_t bits = LoadU16(raw.data() + 2 * k);
        FUZZ_CHECK(bf16[k] == bits, absl::StrCat(t.name, "[", i, "]: bf16 copy changed the bits"));
        FUZZ_CHECK(FloatBits(floats[k]) == static_cast<uint32_t>(bits) << 16,
                   absl::StrCat(t.name, "[", i, "]: bf16 -> float is not exact"));
        break;
      }
      case DType::kF16: {
        const float ref = Fp16ToFloatSoft(LoadU16(raw.data() + 2 * k));
        FUZZ_CHECK(FloatBits(floats[k]) == FloatBits(ref) || (floats[k] != floats[k] && ref != ref),
                   absl::StrCat(t.name, "[", i, "]: f16 -> float differs from the reference"));
        FUZZ_CHECK(bf16[k] == FloatToBf16(floats[k]),
                   absl::StrCat(t.name, "[", i, "]: f16 -> bf16 is not the rounded float"));
        break;
      }
      default: {  // kF32
        FUZZ_CHECK(std::memcmp(&floats[k], raw.data() + 4 * k, 4) == 0,
                   absl::StrCat(t.name, "[", i, "]: f32 copy changed the bits"));
        float f32;
        std::memcpy(&f32, raw.data() + 4 * k, 4);
        FUZZ_CHECK(bf16[k] == FloatToBf16(f32), absl::StrCat(t.name, "[", i, "]: f32 -> bf16"));
        break;
      }
    }
  }
  // A wrong output size is an error, never a short or long copy.
  std::vector<float> wrong(static_cast<size_t>(n) + 1);
  FUZZ_CHECK(!CopyTensorToFloat(f, t, absl::MakeSpan(wrong)).ok(), "wrong-size output accepted");
  if (n > 0) {
    FUZZ_CHECK(!CopyTensorToBf16(f, t, absl::MakeSpan(bf16).subspan(1)).ok(),
               "short output accepted");
  }
}

void CheckRoundTrip(const SafetensorsFile& f) {
  SafetensorsWriter w;
  for (const TensorInfo& t : f.tensors()) {
    const absl::Span<const uint8_t> d = f.Data(t);
    w.Add(t.name, t.dtype, t.shape, std::vector<uint8_t>(d.begin(), d.end()));
  }
  for (const auto& [k, v] : f.metadata()) w.SetMetadata(k, v);
  const std::vector<uint8_t> bytes = w.Serialize();
  auto again = SafetensorsFile::Parse(bytes, "rewritten.safetensors");
  FUZZ_CHECK(again.ok(), absl::StrCat("SafetensorsWriter output does not parse: ",
                                      again.status().ToString()));
  FUZZ_CHECK(again->data_offset() % 8 == 0, "writer did not align the data section");
  FUZZ_CHECK(again->metadata() == f.metadata(), "metadata changed in the round trip");
  FUZZ_CHECK(again->tensors().size() == f.tensors().size(), "tensor count changed");
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const TensorInfo& a = f.tensors()[i];
    const TensorInfo& b = again->tensors()[i];
    FUZZ_CHECK(a.name == b.name && a.dtype == b.dtype && a.shape == b.shape,
               absl::StrCat("tensor ", fuzz::Printable(a.name), " changed in the round trip"));
    const absl::Span<const uint8_t> da = f.Data(a), db = again->Data(b);
    FUZZ_CHECK(da.size() == db.size() &&
                   (da.empty() || std::memcmp(da.data(), db.data(), da.size()) == 0),
               absl::StrCat("tensor ", fuzz::Printable(a.name), ": bytes changed in the round trip"));
  }
}

}  // namespace
}  // namespace mesa

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesa;
  const absl::Span<const uint8_t> bytes(data, size);
  auto parsed = SafetensorsFile::Parse(bytes, kName);

  SafetensorsLimits tight;
  tight.max_header_bytes = 512;
  tight.max_tensors = 2;
  tight.max_rank = 2;
  auto parsed_tight = SafetensorsFile::Parse(bytes, kName, tight);
  if (parsed_tight.ok()) {
    FUZZ_CHECK(parsed.ok(), "accepted under tight limits but not under the defaults: " +
                                parsed.status().ToString());
    FUZZ_CHECK(parsed_tight->tensors().size() == parsed->tensors().size(), "tensor count differs");
  } else {
    CheckRejected(parsed_tight.status());
  }
  if (!parsed.ok()) {
    CheckRejected(parsed.status());
    return 0;
  }

  const SafetensorsFile& f = *parsed;
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(data[i]) << (8 * i);
  FUZZ_CHECK(f.data_offset() == 8 + header_len && f.data_offset() <= size,
             absl::StrCat("data_offset ", f.data_offset(), " header ", header_len, " size ", size));
  FUZZ_CHECK(f.display_name() == kName, "display name changed");
  const uint8_t* section_begin = data + f.data_offset();
  const uint8_t* section_end = data + size;

  uint64_t covered = 0;
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const TensorInfo& t = f.tensors()[i];
    if (i > 0) {
      FUZZ_CHECK(f.tensors()[i - 1].name < t.name, "tensors not sorted by name or not unique");
    }
    FUZZ_CHECK(f.Find(t.name) == &t, absl::StrCat("Find misses ", fuzz::Printable(t.name)));
    FUZZ_CHECK(t.name != "__metadata__", "the metadata key became a tensor");
    FUZZ_CHECK(t.shape.size() <= 8, "rank above the default limit");
    for (int64_t d : t.shape) FUZZ_CHECK(d >= 0, "negative dimension");
    const int64_t n = t.num_elements();
    FUZZ_CHECK(n >= 0, absl::StrCat("num_elements overflowed for ", fuzz::Printable(t.name)));
    const uint64_t want = static_cast<uint64_t>(n) * DTypeSize(t.dtype);
    const absl::Span<const uint8_t> d = f.Data(t);
    FUZZ_CHECK(t.begin <= t.end && t.num_bytes() == want && d.size() == want,
               absl::StrCat(fuzz::Printable(t.name), ": span of ", d.size(), " bytes, offsets [",
                            t.begin, ", ", t.end, "], shape needs ", want));
    FUZZ_CHECK(d.data() + d.size() <= section_end &&
                   (d.empty() || (d.data() >= section_begin && d.data() == section_begin + t.begin)),
               absl::StrCat(fuzz::Printable(t.name), ": Data() lies outside the data section"));
    covered += want;
    CheckConversions(f, t, d);

    // Offsets that do not belong to this file give an empty span.
    TensorInfo outside = t;
    outside.begin = size;
    outside.end = static_cast<uint64_t>(size) + 1 + (want & 0xffff);
    FUZZ_CHECK(f.Data(outside).empty(), "Data() of out-of-range offsets is not empty");
    outside.begin = t.end + 1;
    outside.end = t.end;
    FUZZ_CHECK(f.Data(outside).empty(), "Data() of reversed offsets is not empty");
  }
  FUZZ_CHECK(covered == size - f.data_offset(),
             absl::StrCat("tensors cover ", covered, " of ", size - f.data_offset(), " bytes"));
  CheckRoundTrip(f);
  return 0;
}
