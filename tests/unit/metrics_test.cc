#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mesa::server {
namespace {

using ::testing::HasSubstr;
using Labels = std::map<std::string, std::string>;

// ---------------------------------------------------------------------------------------------
// A small parser of the Prometheus text format, enough for what prometheus-cpp writes.

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> counter/gauge/histogram/...
  std::set<std::string> helps;               // families with a # HELP line
  std::vector<Sample> samples;
};

// Canonical key of a series, independent of the order in which labels were written.
std::string Key(const std::string& name, const Labels& labels) {
  if (labels.empty()) return name;
  std::vector<std::string> parts;
  for (const auto& [k, v] : labels) parts.push_back(absl::StrCat(k, "=\"", v, "\""));
  return absl::StrCat(name, "{", absl::StrJoin(parts, ","), "}");
}

double ParseValue(const std::string& text) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  double v = 0;
  EXPECT_TRUE(absl::SimpleAtod(text, &v)) << "bad value '" << text << "'";
  return v;
}

Exposition Parse(const std::string& text) {
  Exposition e;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<std::string> f = absl::StrSplit(line, absl::MaxSplits(' ', 3));
      if (f.size() >= 4 && f[1] == "TYPE") e.types[f[2]] = f[3];
      if (f.size() >= 3 && f[1] == "HELP") e.helps.insert(f[2]);
      continue;
    }
    Sample s;
    size_t pos = line.find_first_of("{ ");
    s.name = line.substr(0, pos);
    if (pos != std::string::npos && line[pos] == '{') {
      ++pos;
      while (pos < line.size() && line[pos] != '}') {
        const size_t eq = line.find('=', pos);
        const std::string key = line.substr(pos, eq - pos);
        pos = eq + 2;  // past ="
        std::string value;
        while (pos < line.size() && line[pos] != '"') {
          if (line[pos] == '\\' && pos + 1 < line.size()) ++pos;
          value += line[pos++];
        }
        s.labels[key] = value;
        ++pos;  // past the closing quote
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
      ++pos;  // past }
    }
    const std::string rest(absl::StripAsciiWhitespace(line.substr(pos)));
    s.value = ParseValue(rest.substr(0, rest.find(' ')));  // a timestamp may follow
    e.samples.push_back(std::move(s));
  }
  return e;
}

// Value of one series; fails the test (and returns NaN) when it is absent.
double Value(const Exposition& e, const std::string& name, const Labels& labels = {}) {
  for (const Sample& s : e.samples) {
    if (s.name == name && s.labels == labels) return s.value;
  }
  ADD_FAILURE() << "no series " << Key(name, labels);
  return NAN;
}

// The cumulative bucket counts of one histogram series, in `le` order, +Inf last.
std::vector<std::pair<double, double>> Buckets(const Exposition& e, const std::string& name,
                                               const Labels& labels = {}) {
  std::vector<std::pair<double, double>> out;
  for (const Sample& s : e.samples) {
    if (s.name != name + "_bucket") continue;
    Labels rest = s.labels;
    auto le = rest.find("le");
    if (le == rest.end()) continue;
    const double bound = ParseValue(le->second);
    rest.erase(le);
    if (rest == labels) out.emplace_back(bound, s.value);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<double> Bounds(const std::vector<std::pair<double, double>>& buckets) {
  std::vector<double> out;
  for (const auto& b : buckets) out.push_back(b.first);
  return out;
}

std::vector<double> Counts(const std::vector<std::pair<double, double>>& buckets) {
  std::vector<double> out;
  for (const auto& b : buckets) out.push_back(b.second);
  return out;
}

// Family a sample belongs to (histogram series carry _bucket/_sum/_count suffixes).
std::string FamilyOf(const Exposition& e, const std::string& sample_name) {
  if (e.types.count(sample_name)) return sample_name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    absl::string_view base(sample_name);
    if (absl::ConsumeSuffix(&base, suffix) && e.types.count(std::string(base))) {
      return std::string(base);
    }
  }
  return sample_name;
}

// ---------------------------------------------------------------------------------------------
// The metrics table of docs/server-interface.md, read from the document itself so that the
// code cannot drift from the contract.

struct DocMetric {
  std::string type;
  std::set<std::string> labels;
  std::map<std::string, std::set<std::string>> label_values;  // where the doc lists them
  std::vector<double> buckets;                                // where the doc lists them
};

std::vector<std::string> Backticked(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while ((pos = text.find('`', pos)) != std::string::npos) {
    const size_t end = text.find('`', pos + 1);
    if (end == std::string::npos) break;
    out.push_back(text.substr(pos + 1, end - pos - 1));
    pos = end + 1;
  }
  return out;
}

std::map<std::string, DocMetric> DocumentedMetrics() {
  std::ifstream in(std::string(MESA_SOURCE_DIR) + "/docs/server-interface.md");
  EXPECT_TRUE(in.good()) << "cannot read docs/server-interface.md";
  std::map<std::string, DocMetric> out;
  std::string line;
  while (std::getline(in, line)) {
    if (!absl::StartsWith(line, "| `mesa_")) continue;
    std::vector<std::string> cols = absl::StrSplit(line, '|');
    // "", name, type, labels, meaning, ""
    if (cols.size() < 5) continue;
    const std::string name = Backticked(cols[1]).at(0);
    DocMetric m;
    m.type = std::string(absl::StripAsciiWhitespace(cols[2]));
    m.type = m.type.substr(0, m.type.find(' '));  // "gauge (1)" -> "gauge"
    for (const std::string& label : Backticked(cols[3])) m.labels.insert(label);
    // "`layer`, `phase` = prefill, decode": the values belong to the label before " = ".
    const size_t eq = cols[3].find(" = ");
    if (eq != std::string::npos) {
      const std::vector<std::string> before = Backticked(cols[3].substr(0, eq));
      for (absl::string_view v : absl::StrSplit(cols[3].substr(eq + 3), ',')) {
        m.label_values[before.back()].insert(std::string(absl::StripAsciiWhitespace(v)));
      }
    }
    const size_t buckets = cols[4].find("buckets ");
    if (buckets != std::string::npos) {
      // Only a plain comma-separated list is parsed; "1e-7 .. 1 by decades" is checked below.
      std::string list(absl::StripAsciiWhitespace(cols[4].substr(buckets + 8)));
      if (list.find("..") == std::string::npos) {
        for (absl::string_view v : absl::StrSplit(list, ',')) {
          double d = 0;
          EXPECT_TRUE(absl::SimpleAtod(v, &d)) << v;
          m.buckets.push_back(d);
        }
      }
    }
    out[name] = std::move(m);
  }
  EXPECT_GE(out.size(), 19u) << "the doc's metrics table changed shape";
  return out;
}

// ---------------------------------------------------------------------------------------------

constexpr int32_t kLayers = 3;

std::unique_ptr<Metrics> MakeMetrics(const std::string& listen = "") {
  MetricsOptions options;
  options.listen = listen;
  options.num_layers = kLayers;
  options.version = "0.1.0";
  options.backend = "cpu";
  options.model = "mesanet-tiny-en";
  options.slots_capacity = 64;
  options.state_bytes_per_slot = 123456;
  auto metrics = Metrics::Create(options);
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return metrics.ok() ? std::move(metrics).value() : nullptr;
}

TEST(MetricsTest, EveryDocumentedMetricIsExposedAsDocumented) {
  std::unique_ptr<Metrics> metrics = MakeMetrics();
  ASSERT_NE(metrics, nullptr);
  const Exposition e = Parse(metrics->Text());
  const std::map<std::string, DocMetric> doc = DocumentedMetrics();

  for (const auto& [name, want] : doc) {
    SCOPED_TRACE(name);
    if (!e.types.count(name)) {
      ADD_FAILURE() << "missing # TYPE line";
      continue;
    }
    EXPECT_EQ(e.types.at(name), want.type);
    EXPECT_TRUE(e.helps.count(name)) << "missing # HELP line";

    std::set<std::string> label_names;
    std::map<std::string, std::set<std::string>> label_values;
    int series = 0;
    for (const Sample& s : e.samples) {
      if (FamilyOf(e, s.name) != name) continue;
      ++series;
      for (const auto& [k, v] : s.labels) {
        if (k == "le") continue;
        label_names.insert(k);
        label_values[k].insert(v);
      }
    }
    EXPECT_GT(series, 0) << "no series";
    EXPECT_EQ(label_names, want.labels);
    for (const auto& [label, values] : want.label_values) {
      EXPECT_EQ(label_values[label], values) << "values of label " << label;
    }
    if (want.labels.count("layer")) {
      EXPECT_EQ(label_values["layer"], (std::set<std::string>{"0", "1", "2"}));
    }

    if (want.type == "histogram") {
      // Every label combination has the same, ascending buckets ending in +Inf.
      std::set<Labels> combos;
      for (const Sample& s : e.samples) {
        if (s.name != name + "_count") continue;
        combos.insert(s.labels);
        EXPECT_EQ(Value(e, name + "_sum", s.labels), 0);
      }
      ASSERT_FALSE(combos.empty());
      const std::vector<double> first = Bounds(Buckets(e, name, *combos.begin()));
      ASSERT_GE(first.size(), 2u);
      EXPECT_EQ(first.back(), INFINITY);
      for (const Labels& labels : combos) {
        EXPECT_EQ(Bounds(Buckets(e, name, labels)), first) << Key(name, labels);
      }
      if (!want.buckets.empty()) {
        std::vector<double> expected = want.buckets;
        expected.push_back(INFINITY);
        EXPECT_EQ(first, expected);
      }
      if (name == "mesa_cg_relative_residual") {  // doc: "1e-7 .. 1 by decades"
        EXPECT_THAT(first, ::testing::Pointwise(::testing::DoubleEq(),
                                                std::vector<double>{1e-7, 1e-6, 1e-5, 1e-4, 1e-3,
                                                                    1e-2, 1e-1, 1, INFINITY}));
      }
    }
  }

  // Nothing exposed that the doc does not know about.
  for (const auto& [family, type] : e.types) {
    EXPECT_TRUE(doc.count(family)) << family << " is not in docs/server-interface.md";
  }

  EXPECT_EQ(Value(e, "mesa_build_info",
                  {{"version", "0.1.0"}, {"backend", "cpu"}, {"model", "mesanet-tiny-en"}}),
            1);
  EXPECT_EQ(Value(e, "mesa_state_slots_capacity"), 64);
  EXPECT_EQ(Value(e, "mesa_state_bytes_per_slot"), 123456);
  EXPECT_EQ(Value(e, "mesa_engine_healthy"), 0);
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "ok"}}), 0);
}

TEST(MetricsTest, CountersGaugesAndHistogramsMove) {
  std::unique_ptr<Metrics> metrics = MakeMetrics();
  ASSERT_NE(metrics, nullptr);
  metrics->RequestFinished(RequestOutcome::kOk);
  metrics->RequestFinished(RequestOutcome::kOk);
  metrics->RequestFinished(RequestOutcome::kCancelled);
  metrics->RequestFinished(RequestOutcome::kDeadlineExceeded);
  metrics->RequestFinished(RequestOutcome::kRejected);
  metrics->RequestFinished(RequestOutcome::kRejected);
  metrics->RequestFinished(RequestOutcome::kRejected);
  metrics->RequestFinished(RequestOutcome::kError);
  metrics->PromptTokens(100);
  metrics->PromptTokens(23);
  metrics->PromptTokens(-5);  // ignored: counters never go down
  metrics->GeneratedTokens(7);
  metrics->ObserveTimeToFirstToken(0.02);
  metrics->ObserveTimeToFirstToken(0.3);
  metrics->ObserveInterTokenLatency(0.004);
  metrics->ObserveRequestDuration(90);
  metrics->ObserveQueueTime(0.005);  // on a boundary: le is inclusive
  metrics->SetRunning(5);
  metrics->SetWaiting(2);
  metrics->SetSlotsUsed(6);
  metrics->ObserveStep(Phase::kPrefill, 0.2);
  metrics->ObserveStep(Phase::kDecode, 0.003);
  metrics->ObserveStep(Phase::kDecode, 0.004);
  metrics->ObserveDecodeBatch(3);
  metrics->ObserveDecodeBatch(2000);
  metrics->SetHealthy(true);

  const Exposition e = Parse(metrics->Text());
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "ok"}}), 2);
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "cancelled"}}), 1);
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "deadline_exceeded"}}), 1);
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "rejected"}}), 3);
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "error"}}), 1);
  EXPECT_EQ(Value(e, "mesa_prompt_tokens_total"), 123);
  EXPECT_EQ(Value(e, "mesa_generated_tokens_total"), 7);
  EXPECT_EQ(Value(e, "mesa_requests_running"), 5);
  EXPECT_EQ(Value(e, "mesa_requests_waiting"), 2);
  EXPECT_EQ(Value(e, "mesa_state_slots_used"), 6);
  EXPECT_EQ(Value(e, "mesa_engine_healthy"), 1);

  EXPECT_EQ(Value(e, "mesa_time_to_first_token_seconds_count"), 2);
  EXPECT_DOUBLE_EQ(Value(e, "mesa_time_to_first_token_seconds_sum"), 0.32);
  for (const auto& [le, count] : Buckets(e, "mesa_time_to_first_token_seconds")) {
    EXPECT_EQ(count, (le >= 0.02) + (le >= 0.3)) << "le=" << le;
  }
  for (const auto& [le, count] : Buckets(e, "mesa_inter_token_latency_seconds")) {
    EXPECT_EQ(count, le >= 0.004 ? 1 : 0) << "le=" << le;
  }
  for (const auto& [le, count] : Buckets(e, "mesa_request_duration_seconds")) {
    EXPECT_EQ(count, le >= 90 ? 1 : 0) << "le=" << le;
  }
  for (const auto& [le, count] : Buckets(e, "mesa_queue_time_seconds")) {
    EXPECT_EQ(count, le >= 0.005 ? 1 : 0) << "le=" << le;
  }
  EXPECT_EQ(Value(e, "mesa_engine_step_duration_seconds_count", {{"phase", "prefill"}}), 1);
  EXPECT_EQ(Value(e, "mesa_engine_step_duration_seconds_count", {{"phase", "decode"}}), 2);
  EXPECT_DOUBLE_EQ(Value(e, "mesa_engine_step_duration_seconds_sum", {{"phase", "decode"}}), 0.007);
  for (const auto& [le, count] :
       Buckets(e, "mesa_engine_step_duration_seconds", {{"phase", "decode"}})) {
    EXPECT_EQ(count, (le >= 0.003) + (le >= 0.004)) << "le=" << le;
  }
  const auto batch = Buckets(e, "mesa_decode_batch_size");
  EXPECT_EQ(Bounds(batch),
            (std::vector<double>{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, INFINITY}));
  EXPECT_EQ(Counts(batch), (std::vector<double>{0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2}));

  metrics->SetHealthy(false);
  metrics->SetRunning(0);
  const Exposition after = Parse(metrics->Text());
  EXPECT_EQ(Value(after, "mesa_engine_healthy"), 0);
  EXPECT_EQ(Value(after, "mesa_requests_running"), 0);
}

TEST(MetricsTest, ObserveCgAggregatesPerLayerAndPhase) {
  std::unique_ptr<Metrics> metrics = MakeMetrics();
  ASSERT_NE(metrics, nullptr);
  // 3 rows x 2 layers x 2 heads, [row][layer][head]; cap 8, adaptive, tol 1e-3.
  const std::vector<int32_t> iters = {
      0,  3,   8, 5,    // row 0: layer 0, layer 1
      8,  200, 1, 8,    // row 1
      12, 4,   8, 129,  // row 2
  };
  const std::vector<float> residual = {
      0.0f,  5e-4f, 2e-3f, 1e-8f,  //
      1e-3f, 0.5f,  1e-6f, NAN,    //
      5e-2f, 1e-5f, 1e-3f, 2.0f,   //
  };
  metrics->ObserveCg(Phase::kDecode, 3, 2, 2, iters.data(), residual.data(), /*cap=*/8,
                     /*adaptive=*/true, /*tol=*/1e-3f);
  const Exposition e = Parse(metrics->Text());
  const Labels l0{{"layer", "0"}, {"phase", "decode"}};
  const Labels l1{{"layer", "1"}, {"phase", "decode"}};
  const Labels l2{{"layer", "2"}, {"phase", "decode"}};

  // Layer 0 saw 0, 3, 8, 200, 12, 4.      le: 0 1 2 3 4 6 8 12 16 24 32 48 64 96 128 +Inf
  EXPECT_EQ(Counts(Buckets(e, "mesa_cg_iterations", l0)),
            (std::vector<double>{1, 1, 1, 2, 3, 3, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6}));
  EXPECT_EQ(Value(e, "mesa_cg_iterations_count", l0), 6);
  EXPECT_EQ(Value(e, "mesa_cg_iterations_sum", l0), 227);
  // Layer 1 saw 8, 5, 1, 8, 8, 129.
  EXPECT_EQ(Counts(Buckets(e, "mesa_cg_iterations", l1)),
            (std::vector<double>{0, 1, 1, 1, 1, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6}));
  EXPECT_EQ(Value(e, "mesa_cg_iterations_count", l1), 6);
  EXPECT_EQ(Value(e, "mesa_cg_iterations_sum", l1), 159);
  // Layer 2 was not in this step; prefill untouched.
  EXPECT_EQ(Value(e, "mesa_cg_iterations_count", l2), 0);
  EXPECT_EQ(Value(e, "mesa_cg_iterations_count", {{"layer", "0"}, {"phase", "prefill"}}), 0);

  // Cap hits: iters >= 8 and not residual <= tol (NaN counts; exactly tol does not).
  // Layer 0: (8, 1e-3) no, (200, 0.5) yes, (12, 5e-2) yes.
  // Layer 1: (8, 2e-3) yes, (8, NaN) yes, (8, 1e-3) no, (129, 2.0) yes.
  EXPECT_EQ(Value(e, "mesa_cg_cap_hits_total", {{"layer", "0"}}), 2);
  EXPECT_EQ(Value(e, "mesa_cg_cap_hits_total", {{"layer", "1"}}), 3);
  EXPECT_EQ(Value(e, "mesa_cg_cap_hits_total", {{"layer", "2"}}), 0);

  // Residuals, compared in float:  le: 1e-7 1e-6 1e-5 1e-4 1e-3 1e-2 1e-1 1 +Inf
  // 0, 1e-8 | 1e-6 | 1e-5 | - | 5e-4, 1e-3, 1e-3 | 2e-3 | 5e-2 | 0.5 | 2.0, NaN
  const Labels decode{{"phase", "decode"}};
  EXPECT_EQ(Counts(Buckets(e, "mesa_cg_relative_residual", decode)),
            (std::vector<double>{2, 3, 4, 4, 7, 8, 9, 10, 12}));
  EXPECT_EQ(Value(e, "mesa_cg_relative_residual_count", decode), 12);
  double finite_sum = 0;
  for (float r : residual) finite_sum += std::isfinite(r) ? r : 0.0;  // NaN is kept out
  EXPECT_DOUBLE_EQ(Value(e, "mesa_cg_relative_residual_sum", decode), finite_sum);
  EXPECT_EQ(Value(e, "mesa_cg_relative_residual_count", {{"phase", "prefill"}}), 0);

  // Fixed mode never counts cap hits; prefill goes to its own series.
  metrics->ObserveCg(Phase::kPrefill, 3, 2, 2, iters.data(), residual.data(), 8,
                     /*adaptive=*/false, 1e-3f);
  const Exposition e2 = Parse(metrics->Text());
  EXPECT_EQ(Value(e2, "mesa_cg_cap_hits_total", {{"layer", "0"}}), 2);
  EXPECT_EQ(Value(e2, "mesa_cg_cap_hits_total", {{"layer", "1"}}), 3);
  EXPECT_EQ(Value(e2, "mesa_cg_iterations_count", {{"layer", "1"}, {"phase", "prefill"}}), 6);
  EXPECT_EQ(Value(e2, "mesa_cg_iterations_count", l1), 6);
  EXPECT_EQ(Value(e2, "mesa_cg_relative_residual_count", {{"phase", "prefill"}}), 12);
}

TEST(MetricsTest, ObserveCgIgnoresLayersBeyondTheConfiguredCount) {
  std::unique_ptr<Metrics> metrics = MakeMetrics();  // 3 layers
  ASSERT_NE(metrics, nullptr);
  // 2 rows x 5 layers x 1 head: layer L of row R did R*10 + L iterations.
  std::vector<int32_t> iters;
  for (int r = 0; r < 2; ++r) {
    for (int l = 0; l < 5; ++l) iters.push_back(r * 10 + l);
  }
  const std::vector<float> residual(iters.size(), 1e-4f);
  metrics->ObserveCg(Phase::kDecode, 2, 5, 1, iters.data(), residual.data(), 100, true, 1e-3f);
  const Exposition e = Parse(metrics->Text());
  for (int l = 0; l < kLayers; ++l) {
    const Labels labels{{"layer", absl::StrCat(l)}, {"phase", "decode"}};
    EXPECT_EQ(Value(e, "mesa_cg_iterations_count", labels), 2);
    EXPECT_EQ(Value(e, "mesa_cg_iterations_sum", labels), 10 + 2 * l) << l;
  }
  EXPECT_EQ(Value(e, "mesa_cg_relative_residual_count", {{"phase", "decode"}}), 2 * kLayers);
  const std::string text = metrics->Text();
  EXPECT_EQ(text.find("layer=\"3\""), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// promtool

std::string FindOnPath(const std::string& program) {
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "/usr/bin:/bin", ':')) {
    const std::string candidate = absl::StrCat(dir, "/", program);
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

// Runs `promtool check metrics` on `text` (its stdin); returns its exit code and output.
std::pair<int, std::string> PromtoolCheck(const std::string& text) {
  const std::string promtool = FindOnPath("promtool");
  if (promtool.empty()) return {-1, ""};
  char path[] = "/tmp/mesa_metrics_test_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return {-2, "mkstemp failed"};
  {
    std::ofstream out(path);
    out << text;
  }
  close(fd);
  const std::string command = absl::StrCat(promtool, " check metrics < ", path, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  if (pipe != nullptr) {
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output.append(buffer, n);
  }
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  unlink(path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -3, output};
}

void ExpectPromtoolAccepts(const std::string& text) {
  const auto [code, output] = PromtoolCheck(text);
  ASSERT_NE(code, -1) << "promtool is not installed (Debian package 'prometheus'); run "
                         "scripts/install-deps.sh";
  EXPECT_EQ(code, 0) << "promtool check metrics complained:\n" << output << "\non:\n" << text;
  EXPECT_EQ(output, "") << text;
}

TEST(MetricsTest, PromtoolAcceptsTheExposition) {
  std::unique_ptr<Metrics> metrics = MakeMetrics();
  ASSERT_NE(metrics, nullptr);
  ASSERT_NO_FATAL_FAILURE(ExpectPromtoolAccepts(metrics->Text()));  // all zero
  const std::vector<int32_t> iters = {1, 2, 3, 40, 5, 6};
  const std::vector<float> residual = {1e-4f, 1e-3f, 1e-2f, 0.5f, 1e-6f, 1e-9f};
  metrics->ObserveCg(Phase::kPrefill, 1, 3, 2, iters.data(), residual.data(), 32, true, 1e-3f);
  metrics->ObserveStep(Phase::kDecode, 0.01);
  metrics->RequestFinished(RequestOutcome::kOk);
  ExpectPromtoolAccepts(metrics->Text());
}

TEST(MetricsTest, PromtoolRejectsABadExposition) {
  // Guards the check above against a promtool that accepts anything.
  const auto [code, output] =
      PromtoolCheck("# HELP requests Requests.\n# TYPE requests counter\nrequests 1\n");
  ASSERT_NE(code, -1) << "promtool is not installed (Debian package 'prometheus'); run "
                         "scripts/install-deps.sh";
  EXPECT_NE(code, 0);
  EXPECT_THAT(output, HasSubstr("_total"));
}

// ---------------------------------------------------------------------------------------------
// The HTTP exposer

struct HttpResponse {
  std::string status_line;
  std::string body;
};

// A minimal HTTP/1.0 GET against 127.0.0.1 (the server closes the connection when done).
absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket");
  timeval timeout{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect to port ", port));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::InternalError("send");
  }
  std::string response;
  char buffer[8192];
  ssize_t n;
  while ((n = recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
  close(fd);
  const size_t header_end = response.find("\r\n\r\n");
  if (header_end == std::string::npos) return absl::InternalError("no HTTP header: " + response);
  return HttpResponse{response.substr(0, response.find("\r\n")), response.substr(header_end + 4)};
}

TEST(MetricsTest, ExposerServesMetrics) {
  std::unique_ptr<Metrics> metrics = MakeMetrics("127.0.0.1:0");
  ASSERT_NE(metrics, nullptr);
  const std::vector<int> ports = metrics->ListeningPorts();
  ASSERT_EQ(ports.size(), 1u);
  ASSERT_GT(ports[0], 0);
  metrics->GeneratedTokens(42);

  auto response = HttpGet(ports[0], "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->status_line, HasSubstr(" 200"));
  EXPECT_THAT(response->body, HasSubstr("mesa_build_info{"));
  const Exposition e = Parse(response->body);
  EXPECT_EQ(Value(e, "mesa_generated_tokens_total"), 42);
  // prometheus-cpp adds its own exposer_* series to the endpoint; those must lint too.
  ExpectPromtoolAccepts(response->body);
}

TEST(MetricsTest, NoExposerWithoutListen) {
  std::unique_ptr<Metrics> metrics = MakeMetrics();
  ASSERT_NE(metrics, nullptr);
  EXPECT_TRUE(metrics->ListeningPorts().empty());
}

TEST(MetricsTest, BindFailureNamesTheAddress) {
  std::unique_ptr<Metrics> first = MakeMetrics("127.0.0.1:0");
  ASSERT_NE(first, nullptr);
  ASSERT_EQ(first->ListeningPorts().size(), 1u);
  const std::string taken = absl::StrCat("127.0.0.1:", first->ListeningPorts()[0]);

  MetricsOptions options;
  options.listen = taken;
  auto second = Metrics::Create(options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr(taken));

  for (const char* bad :
       {"9090", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":9090", "127.0.0.1:9090s"}) {
    options.listen = bad;
    auto status = Metrics::Create(options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(bad));
  }
}

// ---------------------------------------------------------------------------------------------

TEST(MetricsTest, ConcurrentUpdatesAddUp) {
  std::unique_ptr<Metrics> metrics = MakeMetrics("127.0.0.1:0");
  ASSERT_NE(metrics, nullptr);
  constexpr int kThreads = 4;
  constexpr int kIterations = 5000;
  // 2 rows x 3 layers x 2 heads per CG call; each solve does 9 iterations and hits the cap.
  const std::vector<int32_t> iters(12, 9);
  const std::vector<float> residual(12, 0.5f);

  std::atomic<bool> done{false};
  std::thread scraper([&] {  // concurrent reads, as Prometheus would do
    while (!done.load()) Parse(metrics->Text());
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        metrics->RequestFinished(i % 2 ? RequestOutcome::kOk : RequestOutcome::kError);
        metrics->PromptTokens(3);
        metrics->GeneratedTokens(1);
        metrics->ObserveTimeToFirstToken(0.1);
        metrics->ObserveInterTokenLatency(0.01);
        metrics->ObserveRequestDuration(1);
        metrics->ObserveQueueTime(0.001);
        metrics->SetRunning(t);
        metrics->SetWaiting(i);
        metrics->SetSlotsUsed(t);
        metrics->ObserveStep(i % 2 ? Phase::kDecode : Phase::kPrefill, 0.002);
        metrics->ObserveDecodeBatch(8);
        metrics->ObserveCg(Phase::kDecode, 2, 3, 2, iters.data(), residual.data(), 8, true, 1e-3f);
        metrics->SetHealthy(true);
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  done.store(true);
  scraper.join();

  const Exposition e = Parse(metrics->Text());
  constexpr double kTotal = kThreads * kIterations;
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "ok"}}), kTotal / 2);
  EXPECT_EQ(Value(e, "mesa_requests_total", {{"outcome", "error"}}), kTotal / 2);
  EXPECT_EQ(Value(e, "mesa_prompt_tokens_total"), 3 * kTotal);
  EXPECT_EQ(Value(e, "mesa_generated_tokens_total"), kTotal);
  for (const char* h :
       {"mesa_time_to_first_token_seconds", "mesa_inter_token_latency_seconds",
        "mesa_request_duration_seconds", "mesa_queue_time_seconds", "mesa_decode_batch_size"}) {
    EXPECT_EQ(Value(e, absl::StrCat(h, "_count")), kTotal) << h;
  }
  EXPECT_DOUBLE_EQ(Value(e, "mesa_request_duration_seconds_sum"), kTotal);
  EXPECT_EQ(Value(e, "mesa_engine_step_duration_seconds_count", {{"phase", "decode"}}), kTotal / 2);
  for (int l = 0; l < kLayers; ++l) {
    const std::string layer = absl::StrCat(l);
    EXPECT_EQ(Value(e, "mesa_cg_iterations_count", {{"layer", layer}, {"phase", "decode"}}),
              kTotal * 4);
    EXPECT_EQ(Value(e, "mesa_cg_iterations_sum", {{"layer", layer}, {"phase", "decode"}}),
              kTotal * 4 * 9);
    EXPECT_EQ(Value(e, "mesa_cg_cap_hits_total", {{"layer", layer}}), kTotal * 4);
  }
  EXPECT_EQ(Value(e, "mesa_cg_relative_residual_count", {{"phase", "decode"}}), kTotal * 12);
  EXPECT_EQ(Value(e, "mesa_engine_healthy"), 1);
  const double running = Value(e, "mesa_requests_running");
  EXPECT_TRUE(running >= 0 && running < kThreads) << running;
}

}  // namespace
}  // namespace mesa::server
