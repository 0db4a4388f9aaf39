// `kvscope bench` as the processes of a gang (docs/bench.md, Gangs): the real binary as
// driver and follower on loopback, compared with one process running the same tp.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli/cli_test_util.h"
#include "tests/test_util.h"

namespace kvscope {
namespace {

using ::testing::HasSubstr;
using ::kvscope::testing::Kvscope;
using ::kvscope::testing::Outcome;

// tp = 2 over `nodes` processes; requests all at t = 0, so scheduling is the same every run.
std::string WriteConfig(const std::string& dir, int nodes, int num_requests, int output_len) {
  const std::string path = dir + "/bench" + std::to_string(nodes) + ".yaml";
  std::ofstream(path) << "model: {preset: llama-tiny}\n"
                         "strategy: {name: paged, block_size: 8}\n"
                         "memory: {kv_bytes: 2MiB}\n"
                         "workload: {num_requests: " << num_requests << ", arrival: all,\n"
                         "           input_len: {dist: uniform, mean: 20, spread: 10},\n"
                         "           output_len: " << output_len << "}\n"
                         "tp: 2\nnodes: " << nodes << "\nthreads: 1\nseed: 9\n";
  return path;
}

std::string Read(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<nlohmann::json> ReadJsonl(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

// Shell text that waits (at most 60 s) until `file` exists.
std::string WaitFor(const std::string& file) {
  return "i=0; while [ ! -s " + file + " ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; ";
}

TEST(GangCliTest, DriverAndFollowerMatchOneProcess) {
  const std::string dir = testing::FreshTempDir("gang_match");
  const std::string k = testing::KvscopeBinary();
  Outcome single = Kvscope("bench --config " + WriteConfig(dir, 1, 6, 6) + " --out " + dir +
                           "/single");
  ASSERT_EQ(single.code, 0) << single.output;
  const std::string config = WriteConfig(dir, 2, 6, 6);
  const std::string gang = " --gang-size 2 --gang-rendezvous-file " + dir + "/rdv --gang-timeout 60";
  std::string output;
  const int code = testing::RunCommand(
      "(" + k + " bench --config " + config + " --out " + dir + "/driver --gang-rank 0" + gang +
          " > " + dir + "/driver.log 2>&1; echo $? > " + dir + "/driver.rc) & " +
          WaitFor(dir + "/rdv") + k + " bench --config " + config + " --out " + dir +
          "/follower --gang-rank 1" + gang + " > " + dir + "/follower.log 2>&1; echo $? > " +
          dir + "/follower.rc; wait",
      &output);
  ASSERT_EQ(code, 0) << output;
  const std::string driver_log = Read(dir + "/driver.log");
  const std::string follower_log = Read(dir + "/follower.log");
  EXPECT_EQ(Read(dir + "/driver.rc"), "0\n") << driver_log;
  EXPECT_EQ(Read(dir + "/follower.rc"), "0\n") << follower_log;
  EXPECT_THAT(follower_log, HasSubstr("done after"));
  EXPECT_THAT(Read(dir + "/rdv"), ::testing::StartsWith("tcp://127.0.0.1:"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/follower/result.json"));

  const nlohmann::json a = nlohmann::json::parse(Read(dir + "/single/result.json"));
  const nlohmann::json b = nlohmann::json::parse(Read(dir + "/driver/result.json"));
  EXPECT_EQ(b["complete"], true);
  EXPECT_EQ(b["config"]["nodes"], 2);
  for (const char* key : {"completed", "total_input_tokens", "total_output_tokens",
                          "peak_kv_reserved_bytes", "peak_kv_used_bytes", "preemptions"}) {
    EXPECT_EQ(a["summary"][key], b["summary"][key]) << key;
  }
  const std::vector<nlohmann::json> ra = ReadJsonl(dir + "/single/requests.jsonl");
  const std::vector<nlohmann::json> rb = ReadJsonl(dir + "/driver/requests.jsonl");
  ASSERT_EQ(ra.size(), 6u);
  ASSERT_EQ(rb.size(), 6u);
  for (size_t i = 0; i < ra.size(); ++i) {
    EXPECT_EQ(ra[i]["output_ids"], rb[i]["output_ids"]) << "request " << i;
    EXPECT_EQ(rb[i]["output_ids"].size(), 6u);
  }
}

TEST(GangCliTest, KillingTheFollowerFailsTheDriverClearly) {
  const std::string dir = testing::FreshTempDir("gang_kill");
  const std::string k = testing::KvscopeBinary();
  // Long enough that the follower is killed mid-run (~thousands of steps).
  const std::string config = WriteConfig(dir, 2, 64, 400);
  const std::string gang = " --gang-size 2 --gang-rendezvous-file " + dir + "/rdv --gang-timeout 60";
  std::string output;
  const int code = testing::RunCommand(
      "(" + k + " bench --config " + config + " --out " + dir + "/driver --progress-file " +
          dir + "/progress --gang-rank 0" + gang + " > " + dir + "/driver.log 2>&1; echo $? > " +
          dir + "/driver.rc) & " + WaitFor(dir + "/rdv") + k + " bench --config " + config +
          " --out " + dir + "/follower --gang-rank 1" + gang + " > " + dir +
          "/follower.log 2>&1 & f=$!; " +
          // Wait until the run is under way, then kill the follower outright.
          "i=0; while ! grep -q '\"requests_done\":[1-9]' " + dir +
          "/progress 2>/dev/null && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
          "kill -9 $f; wait",
      &output);
  ASSERT_EQ(code, 0) << output;
  const std::string driver_log = Read(dir + "/driver.log");
  EXPECT_NE(Read(dir + "/driver.rc"), "0\n") << driver_log;
  EXPECT_THAT(driver_log, HasSubstr("follower process 1 (rank 1) went away")) << driver_log;
  const nlohmann::json b = nlohmann::json::parse(Read(dir + "/driver/result.json"));
  EXPECT_EQ(b["complete"], false);
}

TEST(GangCliTest, AFollowerWhoseDriverDiesExitsNonZero) {
  const std::string dir = testing::FreshTempDir("gang_driver_dies");
  const std::string k = testing::KvscopeBinary();
  const std::string config = WriteConfig(dir, 2, 64, 400);
  const std::string gang = " --gang-size 2 --gang-rendezvous-file " + dir + "/rdv --gang-timeout 60";
  std::string output;
  const int code = testing::RunCommand(
      k + " bench --config " + config + " --out " + dir + "/driver --progress-file " + dir +
          "/progress --gang-rank 0" + gang + " > " + dir + "/driver.log 2>&1 & d=$!; " +
          WaitFor(dir + "/rdv") + "(" + k + " bench --config " + config + " --out " + dir +
          "/follower --gang-rank 1" + gang + " > " + dir + "/follower.log 2>&1; echo $? > " +
          dir + "/follower.rc) & " +
          "i=0; while ! grep -q '\"requests_done\":[1-9]' " + dir +
          "/progress 2>/dev/null && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
          "kill -9 $d; wait",
      &output);
  ASSERT_EQ(code, 0) << output;
  const std::string follower_log = Read(dir + "/follower.log");
  EXPECT_NE(Read(dir + "/follower.rc"), "0\n") << follower_log;
  EXPECT_THAT(follower_log, HasSubstr("went away")) << follower_log;
}

TEST(GangCliTest, RefusesNodesWithoutGangFlagsAndMismatchedFlags) {
  const std::string dir = testing::FreshTempDir("gang_refuse");
  const std::string config = WriteConfig(dir, 2, 2, 2);
  Outcome o = Kvscope("bench --config " + config + " --out " + dir + "/out");
  EXPECT_NE(o.code, 0);
  EXPECT_THAT(o.output, HasSubstr("nodes: 2 spans 2 worker processes"));
  EXPECT_THAT(o.output, HasSubstr("kvscope submit"));
  o = Kvscope("bench --config " + config + " --out " + dir + "/out --gang-rank 0 --gang-size 3 "
              "--gang-rendezvous-file " + dir + "/rdv");
  EXPECT_NE(o.code, 0);
  EXPECT_THAT(o.output, HasSubstr("--gang-size 3 does not match the configuration's nodes: 2"));
  o = Kvscope("bench --config " + config + " --out " + dir + "/out --gang-rank 0 --gang-size 2");
  EXPECT_NE(o.code, 0);
  EXPECT_THAT(o.output, HasSubstr("go together"));
  o = Kvscope("bench --config " + config + " --out " + dir + "/out --gang-rank 1 --gang-size 2 "
              "--gang-rendezvous-file " + dir + "/none");
  EXPECT_NE(o.code, 0);
  EXPECT_THAT(o.output, HasSubstr("cannot read --gang-rendezvous-file"));
  // A driver nobody joins gives up at its deadline, naming who joined.
  o = Kvscope("bench --config " + config + " --out " + dir + "/out --gang-rank 0 --gang-size 2 "
              "--gang-rendezvous-file " + dir + "/rdv --gang-timeout 1");
  EXPECT_NE(o.code, 0);
  EXPECT_THAT(o.output, HasSubstr("0 of 1 follower processes"));
}

}  // namespace
}  // namespace kvscope
