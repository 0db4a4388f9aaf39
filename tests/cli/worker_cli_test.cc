// `kvscope worker` flags (--print-capabilities: what a worker would register, without a
// coordinator) and what `kvscope run` refuses before it starts anything.
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_test_util.h"

namespace kvscope::testing {
namespace {

TEST(WorkerCliTest, PrintCapabilitiesNeedsNoCoordinator) {
  const Outcome o = Kvscope("worker --print-capabilities --max-trials 3 2>/dev/null");
  ASSERT_EQ(o.code, 0) << o.output;
  const nlohmann::json j = nlohmann::json::parse(o.output, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << o.output;
  EXPECT_GE(j.value("cpu_cores", 0), 1);
  EXPECT_GT(j.value("memory_bytes", int64_t{0}), 0);
  EXPECT_EQ(j.value("max_cpu_trials", 0), 3);
  ASSERT_TRUE(j["backends"].is_array());
  EXPECT_EQ(j["backends"][0], "cpu");
  EXPECT_TRUE(j["gpus"].is_array());
  EXPECT_TRUE(j["fingerprint"].contains("kvscope_version"));
}

TEST(WorkerCliTest, PrintCapabilitiesReportsAMissingModelDirectory) {
  const std::string dir = FreshTempDir("worker_caps") + "/no-such-model";
  const Outcome o = Kvscope("worker --print-capabilities --models " + dir);
  EXPECT_NE(o.code, 0);
  EXPECT_NE(o.output.find("no-such-model"), std::string::npos) << o.output;
}

TEST(WorkerCliTest, WithoutPrintCapabilitiesTheCoordinatorIsRequired) {
  const Outcome o = Kvscope("worker");
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.output.find("--coordinator"), std::string::npos) << o.output;
}

TEST(WorkerCliTest, AdvertiseHostMustBeAHostName) {
  const Outcome o = Kvscope("worker --coordinator 127.0.0.1:1 --advertise-host 'a b'");
  EXPECT_EQ(o.code, 2);
  EXPECT_NE(o.output.find("--advertise-host"), std::string::npos) << o.output;
}

// `kvscope run` has one worker; a gang trial (nodes > 1) could never be placed, so the
// sweep is refused up front, with what to run instead, and nothing is started.
TEST(RunCliTest, RefusesAGangItCouldNeverPlace) {
  const std::string dir = FreshTempDir("run_gang");
  const std::string sweep = dir + "/gang.yaml";
  std::ofstream(sweep) << "name: gang\n"
                          "model: {preset: llama-tiny}\n"
                          "workload: {num_requests: 1, input_len: 8, output_len: 2}\n"
                          "tp: 2\n"
                          "matrix:\n"
                          "  nodes: [1, 2]\n";
  const Outcome o = Kvscope("run " + sweep + " --dir " + dir + "/run");
  EXPECT_EQ(o.code, 2) << o.output;
  EXPECT_NE(o.output.find("nodes: 2"), std::string::npos) << o.output;
  EXPECT_NE(o.output.find("kvscope worker"), std::string::npos) << o.output;
  EXPECT_FALSE(std::filesystem::exists(dir + "/run/kvscope.db"));
}

}  // namespace
}  // namespace kvscope::testing
