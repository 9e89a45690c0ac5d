#include "tests/testing/temp_checkpoint.h"

#include <system_error>
#include <utility>

#include "engine/cpu_model_runner.h"
#include "models/checkpoint.h"
#include "tests/testing/random_checkpoint.h"

namespace mesa::testing {

absl::StatusOr<std::unique_ptr<TempCheckpoint>> TempCheckpoint::Create(const std::string& name,
                                                                       const MesaConfig& config) {
  std::unique_ptr<TempCheckpoint> c(new TempCheckpoint(MakeTempDir(name)));
  if (absl::Status s = WriteRandomCheckpoint(c->dir_, config); !s.ok()) return s;
  return c;
}

TempCheckpoint::~TempCheckpoint() {
  std::error_code ignored;  // a folder left behind must not fail the suite
  std::filesystem::remove_all(dir_, ignored);
}

absl::StatusOr<std::unique_ptr<ModelRunner>> TempCheckpoint::CpuRunner(int32_t slots) const {
  absl::StatusOr<MesaWeights> w = LoadMesaWeights(dir_);
  if (!w.ok()) return w.status();
  CpuRunnerOptions options;
  options.num_slots = slots;
  return CreateCpuModelRunner(std::move(*w), options);
}

}  // namespace mesa::testing
