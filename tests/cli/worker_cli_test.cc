// `kvscope worker --print-capabilities`: what a worker would register, without a
// coordinator.
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

}  // namespace
}  // namespace kvscope::testing
