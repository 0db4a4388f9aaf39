// The test-only `fault:` key of a bench config (docs/bench.md).
#include "engine/bench_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(BenchFaultTest, ParsesKindAndCount) {
  BenchConfig c;
  ASSERT_TRUE(
      ParseBenchConfigYaml("fault: {exit_after_requests: 5, kind: kill}\n", "f.yaml", &c).ok());
  EXPECT_EQ(c.fault.kind, FaultKind::kKill);
  EXPECT_EQ(c.fault.exit_after_requests, 5);
  EXPECT_EQ(BenchConfigToJson(c)["fault"]["kind"], "kill");
  EXPECT_EQ(BenchConfigToJson(c)["fault"]["exit_after_requests"], 5);
}

TEST(BenchFaultTest, DefaultsToAbortAtOnceAndNullMeansNone) {
  BenchConfig c;
  ASSERT_TRUE(ParseBenchConfigYaml("fault: {}\n", "f.yaml", &c).ok());
  EXPECT_EQ(c.fault.kind, FaultKind::kAbort);
  EXPECT_EQ(c.fault.exit_after_requests, 0);
  ASSERT_TRUE(ParseBenchConfigYaml("fault:\n", "f.yaml", &c).ok());
  EXPECT_EQ(c.fault.kind, FaultKind::kNone);
  // Ordinary configs record no fault.
  EXPECT_FALSE(BenchConfigToJson(BenchConfig{}).contains("fault"));
}

TEST(BenchFaultTest, ErrorsNameTheKey) {
  BenchConfig c;
  absl::Status s = ParseBenchConfigYaml("fault: {kind: boom}\n", "f.yaml", &c);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr("f.yaml:1: key 'fault.kind': found 'boom', allowed: abort, kill, exit"));
  s = ParseBenchConfigYaml("fault: {exit_after_requests: -1}\n", "f.yaml", &c);
  EXPECT_THAT(std::string(s.message()), HasSubstr("key 'fault.exit_after_requests'"));
  s = ParseBenchConfigYaml("fault: {after: 1}\n", "f.yaml", &c);
  EXPECT_THAT(std::string(s.message()), HasSubstr("unknown key 'fault.after'"));
  // Test-only: accepted, but not advertised among the allowed top-level keys.
  s = ParseBenchConfigYaml("modle: x\n", "f.yaml", &c);
  EXPECT_THAT(std::string(s.message()), Not(HasSubstr("fault")));
}

}  // namespace
}  // namespace kvscope::engine
