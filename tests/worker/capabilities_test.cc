#include "worker/capabilities.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/worker/worker_test_util.h"

namespace kvscope::worker {
namespace {

using ::kvscope::testing::FreshWorkerTestDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CapabilitiesTest, DescribesThisMachine) {
  absl::StatusOr<coordinator::WorkerCapabilities> caps = DetectCapabilities({});
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_FALSE(caps->hostname.empty());
  EXPECT_GT(caps->cpu_cores, 0);
  EXPECT_GT(caps->memory_bytes, 0);
  ASSERT_FALSE(caps->backends.empty());
  EXPECT_EQ(caps->backends[0], "cpu");
  EXPECT_EQ(caps->max_cpu_trials, 1);
  EXPECT_TRUE(caps->fingerprint.contains("kvscope_version"));
  EXPECT_EQ(caps->fingerprint["hostname"], caps->hostname);
#if !KVSCOPE_WITH_CUDA
  EXPECT_TRUE(caps->gpus.empty());
  EXPECT_TRUE(caps->topology.empty());
  EXPECT_THAT(caps->backends, ElementsAre("cpu"));
#endif
}

TEST(CapabilitiesTest, ListsModelDirectories) {
  const std::string dir = FreshWorkerTestDir("caps_models");
  // A folder of models, a model given directly, and a folder without models.
  for (const char* model : {"models/llama-a", "models/llama-b", "single"}) {
    std::filesystem::create_directories(dir + "/" + model);
    std::ofstream(dir + "/" + model + "/config.json") << "{}";
  }
  std::filesystem::create_directories(dir + "/models/not-a-model");
  std::filesystem::create_directories(dir + "/empty");
  CapabilityOptions options;
  options.model_dirs = {dir + "/models", dir + "/single/", dir + "/empty"};
  options.max_cpu_trials = 3;
  absl::StatusOr<coordinator::WorkerCapabilities> caps = DetectCapabilities(options);
  ASSERT_TRUE(caps.ok()) << caps.status();
  EXPECT_THAT(caps->models, ElementsAre(dir + "/models/llama-a", dir + "/models/llama-b",
                                        dir + "/single", dir + "/empty"));
  EXPECT_EQ(caps->max_cpu_trials, 3);
}

TEST(CapabilitiesTest, RefusesMissingModelsAndBadLimits) {
  const std::string dir = FreshWorkerTestDir("caps_errors");
  CapabilityOptions options;
  options.model_dirs = {dir + "/nope"};
  absl::StatusOr<coordinator::WorkerCapabilities> caps = DetectCapabilities(options);
  EXPECT_EQ(caps.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(caps.status().message()), HasSubstr("/nope"));
  std::ofstream(dir + "/file") << "x";
  options.model_dirs = {dir + "/file"};
  EXPECT_EQ(DetectCapabilities(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.model_dirs.clear();
  options.max_cpu_trials = 0;
  EXPECT_EQ(DetectCapabilities(options).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvscope::worker
