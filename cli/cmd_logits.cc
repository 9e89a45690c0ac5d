// mesaserve logits: the model's logits for given token ids, as a float32 .npy [tokens, vocab].
// Tokens before --decode-from go through prefill, the rest one by one through decode.
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/npy.h"
#include "cli/cg_summary.h"
#include "cli/commands.h"
#include "cli/model_setup.h"

namespace mesa::cli {
namespace {

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--token-ids: '", part, "' is not an integer token id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--token-ids: no token ids given");
  return ids;
}

}  // namespace

int RunLogits(const std::vector<std::string>& args) {
  mesa::FlagSet flags("logits",
                "Writes a float32 .npy array [tokens, vocab] whose row t holds the logits after\n"
                "token t. Tokens before --decode-from go through the chunked prefill, the rest\n"
                "one at a time through the recurrent decode step.");
  ModelFlags model_flags;
  std::string token_ids, out_path;
  int64_t decode_from = -1;
  bool stats = false;
  AddModelFlags(flags, &model_flags);
  flags.String("token-ids", &token_ids, "comma-separated token ids, e.g. 1,17,42");
  flags.Int("decode-from", &decode_from, "index of the first token run through decode; -1 = none");
  flags.String("out", &out_path, "output .npy file");
  flags.Bool("stats", &stats, "print CG statistics to stderr");
  if (absl::Status s = flags.Parse(args); !s.ok()) return Fail(std::string(s.message()));
  if (flags.help_requested()) {
    std::fputs(flags.Usage().c_str(), stdout);
    return 0;
  }
  if (out_path.empty()) return Fail("--out is required");
  auto ids = ParseIds(token_ids);
  if (!ids.ok()) return Fail(std::string(ids.status().message()));
  const int64_t n = static_cast<int64_t>(ids->size());
  if (decode_from < -1 || decode_from > n) {
    return Fail(absl::StrCat("--decode-from ", decode_from, " is outside [0, ", n,
                             "] for ", n, " tokens (or -1 for none)"));
  }
  const int64_t prefill_count = decode_from < 0 ? n : decode_from;

  auto loaded = LoadModel(model_flags, /*need_tokenizer=*/false, /*num_slots=*/1);
  if (!loaded.ok()) return Fail(std::string(loaded.status().message()));
  ModelRunner& runner = *loaded->runner;
  const int64_t vocab = runner.config().vocab_size;
  std::vector<float> logits(n * vocab);
  CgSummary prefill_cg, decode_cg;
  if (absl::Status s = runner.ResetSlot(0); !s.ok()) return Fail(std::string(s.message()));
  if (prefill_count > 0) {
    PrefillRequest req;
    req.slot = 0;
    req.tokens = absl::MakeConstSpan(ids->data(), prefill_count);
    req.cg = PrefillCgControl(loaded->cg, runner.config());
    req.all_logits = true;
    req.want_stats = stats;
    PrefillResult res;
    if (absl::Status s = runner.Prefill({&req, 1}, {&res, 1}); !s.ok()) return Fail(std::string(s.message()));
    std::copy(res.logits.begin(), res.logits.end(), logits.begin());
    prefill_cg.Add(res.stats, req.cg.max_iters, req.cg.mode == CgMode::kAdaptive);
  }
  DecodeRow row;
  row.slot = 0;
  row.cg = DecodeCgControl(loaded->cg, runner.config());
  DecodeResult dec;
  for (int64_t t = prefill_count; t < n; ++t) {
    row.token = (*ids)[t];
    if (absl::Status s = runner.Decode({&row, 1}, &dec); !s.ok()) return Fail(std::string(s.message()));
    std::copy(dec.logits.begin(), dec.logits.end(), logits.begin() + t * vocab);
    decode_cg.Add(dec.stats, row.cg.max_iters, row.cg.mode == CgMode::kAdaptive);
  }
  if (absl::Status s = WriteNpyFloat32(out_path, logits.data(), {n, vocab}); !s.ok()) {
    return Fail(std::string(s.message()));
  }
  if (stats) {
    if (prefill_count > 0) std::fprintf(stderr, "prefill: %s\n", prefill_cg.Format().c_str());
    if (prefill_count < n) std::fprintf(stderr, "decode: %s\n", decode_cg.Format().c_str());
  }
  return 0;
}

}  // namespace mesa::cli
