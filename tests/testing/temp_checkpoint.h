// A random checkpoint in a temporary folder that a test suite shares, and CPU runners on it:
// what every engine test needs before it can build an engine.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model_runner.h"
#include "models/mesa_config.h"

namespace mesa::testing {

class TempCheckpoint {
 public:
  // Writes a random checkpoint of `config` (random_checkpoint.h) into a fresh folder named
  // after `name`; the destructor removes the folder.
  static absl::StatusOr<std::unique_ptr<TempCheckpoint>> Create(const std::string& name,
                                                                const MesaConfig& config);
  ~TempCheckpoint();
  TempCheckpoint(const TempCheckpoint&) = delete;
  TempCheckpoint& operator=(const TempCheckpoint&) = delete;

  const std::filesystem::path& dir() const { return dir_; }
  // Loads the checkpoint into a CPU runner with `slots` state slots.
  absl::StatusOr<std::unique_ptr<ModelRunner>> CpuRunner(int32_t slots) const;

 private:
  explicit TempCheckpoint(std::filesystem::path dir) : dir_(std::move(dir)) {}
  std::filesystem::path dir_;
};

}  // namespace mesa::testing
