// File: worker/capabilities.h
//
// What this machine offers the coordinator (coordinator::WorkerCapabilities): hostname, CPU
// cores and memory, backends ("cpu"; "cuda" in CUDA builds that see a device), each GPU's
// name, memory, compute capability and driver, the NVLink/PCIe topology (`nvidia-smi topo
// -m`), the model directories the worker can read, and the environment fingerprint
// (common/env_fingerprint.h). The coordinator places trials by these.
//
// Thread-safe: only reads the system.
#ifndef KVSCOPE_WORKER_CAPABILITIES_H_
#define KVSCOPE_WORKER_CAPABILITIES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"

namespace kvscope::worker {

struct CapabilityOptions {
  // Model directories (`kvscope worker --models`). Each must exist. A directory with a
  // config.json is a model; every immediate subdirectory with a config.json is one too, so a
  // folder of models can be given at once. Listed as absolute, normalised paths.
  std::vector<std::string> model_dirs;
  // CPU trials this worker runs at once (WorkerCapabilities::max_cpu_trials), >= 1.
  int32_t max_cpu_trials = 1;
};

// Detects the capabilities. NotFound when a model directory does not exist;
// InvalidArgument when it is not a directory or max_cpu_trials < 1.
absl::StatusOr<coordinator::WorkerCapabilities> DetectCapabilities(
    const CapabilityOptions& options);

// The model directories `dirs` stand for, as described at CapabilityOptions::model_dirs.
absl::StatusOr<std::vector<std::string>> ListModelDirectories(const std::vector<std::string>& dirs);

}  // namespace kvscope::worker

#endif  // KVSCOPE_WORKER_CAPABILITIES_H_
