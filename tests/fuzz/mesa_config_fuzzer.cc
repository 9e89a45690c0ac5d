// Fuzz target: ParseMesaConfig (config.json) on arbitrary text.
//
// Invariants checked beyond "no crash, no sanitizer report, no escaping exception":
//   * a rejected config gets an InvalidArgument error that names the file;
//   * an accepted config lies inside the ranges the parser documents and the loader relies on:
//     every size positive and bounded, head_dim <= kMaxHeadDim, conv_size <= kMaxConvSize,
//     num_heads * head_dim <= 2^20, intermediate_size in [1, 2^20] (the range an explicit
//     intermediate_size is held to, so a derived one must meet it too), token ids inside the
//     vocabulary, finite positive norm_eps.
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "models/mesa_config.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr char kSource[] = "fuzz/config.json";

std::string Describe(const mesa::MesaConfig& c) {
  return absl::StrCat("hidden_size=", c.hidden_size, " layers=", c.num_hidden_layers,
                      " heads=", c.num_heads, " head_dim=", c.head_dim, " conv=", c.conv_size,
                      " intermediate_size=", c.intermediate_size, " vocab=", c.vocab_size,
                      " bos=", c.bos_token_id, " eos=", c.eos_token_id,
                      " pad=", c.pad_token_id.value_or(-1), " norm_eps=", c.norm_eps,
                      " lambda_lower_bound=", c.lambda_lower_bound,
                      " cg=", c.max_cg_step_training, "/", c.max_cg_step_decoding);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mesa;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = ParseMesaConfig(text, kSource);
  if (!parsed.ok()) {
    const absl::Status& s = parsed.status();
    FUZZ_CHECK(s.code() == absl::StatusCode::kInvalidArgument, s.ToString());
    FUZZ_CHECK(absl::StartsWith(s.message(), absl::StrCat(kSource, ": ")),
               absl::StrCat("error does not name the file: ", s.ToString()));
    return 0;
  }
  const MesaConfig& c = *parsed;
  FUZZ_CHECK(c.hidden_size >= 1 && c.hidden_size <= 65536, Describe(c));
  FUZZ_CHECK(c.num_hidden_layers >= 1 && c.num_hidden_layers <= 1024, Describe(c));
  FUZZ_CHECK(c.num_heads >= 1 && c.num_heads <= 1024, Describe(c));
  FUZZ_CHECK(c.head_dim >= 1 && c.head_dim <= kMaxHeadDim, Describe(c));
  FUZZ_CHECK(c.conv_size >= 1 && c.conv_size <= kMaxConvSize, Describe(c));
  FUZZ_CHECK(c.vocab_size >= 1 && c.vocab_size <= (1 << 24), Describe(c));
  FUZZ_CHECK(static_cast<int64_t>(c.num_heads) * c.head_dim <= (1 << 20), Describe(c));
  FUZZ_CHECK(c.key_dim() == c.num_heads * c.head_dim, Describe(c));
  FUZZ_CHECK(c.intermediate_size >= 1 && c.intermediate_size <= (1 << 20), Describe(c));
  FUZZ_CHECK(c.bos_token_id >= 0 && c.bos_token_id < c.vocab_size, Describe(c));
  FUZZ_CHECK(c.eos_token_id >= 0 && c.eos_token_id < c.vocab_size, Describe(c));
  FUZZ_CHECK(!c.pad_token_id || (*c.pad_token_id >= 0 && *c.pad_token_id < c.vocab_size), Describe(c));
  FUZZ_CHECK(std::isfinite(c.norm_eps) && c.norm_eps > 0.0f && c.norm_eps <= 1.0f, Describe(c));
  FUZZ_CHECK(std::isfinite(c.lambda_lower_bound) && c.lambda_lower_bound >= 0.0f, Describe(c));
  FUZZ_CHECK(c.max_cg_step_training >= 0 && c.max_cg_step_training <= 1000, Describe(c));
  FUZZ_CHECK(c.max_cg_step_decoding >= 0 && c.max_cg_step_decoding <= 1000, Describe(c));
  FUZZ_CHECK(c.dtype == ScalarType::kBf16 || c.dtype == ScalarType::kFp16 ||
                 c.dtype == ScalarType::kFp32,
             Describe(c));
  return 0;
}
