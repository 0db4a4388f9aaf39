#include "worker/capabilities.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/env_fingerprint.h"
#include "common/status_macros.h"

#if KVSCOPE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace kvscope::worker {
namespace {

namespace fs = std::filesystem;

#if KVSCOPE_WITH_CUDA
// Every visible device through the CUDA runtime; none when the runtime finds no device.
std::vector<coordinator::GpuInfo> DetectGpus() {
  std::vector<coordinator::GpuInfo> gpus;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return gpus;
  }
  int driver = 0;
  (void)cudaDriverGetVersion(&driver);
  const std::string driver_text =
      driver > 0 ? absl::StrCat(driver / 1000, ".", (driver % 1000) / 10) : "";
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    coordinator::GpuInfo gpu;
    gpu.index = i;
    gpu.name = prop.name;
    gpu.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    gpu.compute_capability = absl::StrCat(prop.major, ".", prop.minor);
    gpu.driver = driver_text;  // the CUDA driver API version, e.g. "12.4"
    gpus.push_back(std::move(gpu));
  }
  return gpus;
}

// `nvidia-smi topo -m` output, or "" when the tool is missing or fails.
std::string DetectTopology() {
  FILE* pipe = popen("nvidia-smi topo -m 2>/dev/null", "r");
  if (pipe == nullptr) return "";
  std::string text;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0 && text.size() < (1 << 16)) {
    text.append(buffer, n);
  }
  return pclose(pipe) == 0 ? text : "";
}
#endif

}  // namespace

absl::StatusOr<std::vector<std::string>> ListModelDirectories(
    const std::vector<std::string>& dirs) {
  std::vector<std::string> models;
  auto add = [&](const fs::path& path) {
    const std::string text = path.lexically_normal().string();
    if (std::find(models.begin(), models.end(), text) == models.end()) models.push_back(text);
  };
  for (const std::string& dir : dirs) {
    std::error_code ec;
    fs::path path = fs::absolute(dir, ec).lexically_normal();
    if (!path.has_filename() && path != path.root_path()) path = path.parent_path();  // "a/b/"
    if (ec || !fs::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
    }
    if (!fs::is_directory(path, ec)) {
      return absl::InvalidArgumentError(
          absl::StrCat("model directory ", dir, " is not a directory"));
    }
    if (fs::exists(path / "config.json", ec)) add(path);
    std::vector<fs::path> children;
    for (const fs::directory_entry& entry : fs::directory_iterator(path, ec)) {
      if (entry.is_directory(ec) && fs::exists(entry.path() / "config.json", ec)) {
        children.push_back(entry.path());
      }
    }
    std::sort(children.begin(), children.end());
    for (const fs::path& child : children) add(child);
    // A directory with no model inside is still listed as given: the user named it.
    if (!fs::exists(path / "config.json", ec) && children.empty()) add(path);
  }
  return models;
}

absl::StatusOr<coordinator::WorkerCapabilities> DetectCapabilities(
    const CapabilityOptions& options) {
  if (options.max_cpu_trials < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_cpu_trials must be >= 1, got ", options.max_cpu_trials));
  }
  coordinator::WorkerCapabilities caps;
  caps.fingerprint = EnvironmentFingerprint(UnixSecondsNow());
  caps.hostname = caps.fingerprint.value("hostname", "");
  caps.cpu_cores = caps.fingerprint.value("cpu_cores", 0);
  caps.memory_bytes = caps.fingerprint.value("memory_bytes", int64_t{0});
  caps.backends = {"cpu"};
#if KVSCOPE_WITH_CUDA
  caps.gpus = DetectGpus();
  if (!caps.gpus.empty()) {
    caps.backends.push_back("cuda");
    caps.topology = DetectTopology();
  }
#endif
  KVSCOPE_ASSIGN_OR_RETURN(caps.models, ListModelDirectories(options.model_dirs));
  caps.max_cpu_trials = options.max_cpu_trials;
  return caps;
}

}  // namespace kvscope::worker
