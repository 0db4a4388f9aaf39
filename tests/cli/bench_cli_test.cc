// `kvscope bench` as a user runs it: result files, the comparison, bad configs, Ctrl-C.
#include <filesystem>
#include <map>
#include <fstream>
#include <string>

#include "engine/metrics.h"
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

std::string TempDir(const std::string& name) { return testing::FreshTempDir("bench_" + name); }

nlohmann::json ReadJson(const std::string& path) {
  return nlohmann::json::parse(testing::ReadFileOrDie(path));
}

std::vector<nlohmann::json> ReadJsonl(const std::string& path) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

std::string Common(const std::string& model) {
  return "--model " + model +
         " --num-requests 12 --request-rate 50 --input-len 24 --output-len 12 --seed 3 ";
}

TEST(BenchCliTest, ComparesContiguousAndPagedOnTinyStories) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  std::map<std::string, nlohmann::json> summaries;
  std::map<std::string, std::vector<nlohmann::json>> requests;
  for (const std::string strategy : {"contiguous", "paged"}) {
    const std::string out = TempDir(strategy);
    Outcome o = Kvscope("bench " + Common(dir) + "--strategy " + strategy +
                        " --kv-memory 4MiB --out " + out);
    ASSERT_EQ(o.code, 0) << o.output;
    EXPECT_THAT(o.output, HasSubstr("result.json"));
    const nlohmann::json result = ReadJson(out + "/result.json");
    EXPECT_EQ(result["schema_version"], 1);
    EXPECT_TRUE(engine::ValidateResultJson(result).ok()) << engine::ValidateResultJson(result);
    EXPECT_EQ(result["complete"], true);
    const nlohmann::json& s = result["summary"];
    for (const char* key : {"completed", "output_throughput", "mean_ttft_ms", "kv_waste_fraction",
                            "peak_kv_reserved_bytes", "peak_kv_used_bytes", "preemptions",
                            "request_throughput", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms",
                            "mean_itl_ms", "mean_e2el_ms", "total_token_throughput"}) {
      EXPECT_TRUE(s.contains(key)) << strategy << " lacks summary." << key;
    }
    EXPECT_EQ(s["completed"], 12);
    EXPECT_GT(s["output_throughput"].get<double>(), 0);
    EXPECT_EQ(result["config"]["strategy"], strategy);
    EXPECT_TRUE(result["environment"].contains("kvscope_version"));
    summaries[strategy] = s;
    requests[strategy] = ReadJsonl(out + "/requests.jsonl");
    ASSERT_EQ(requests[strategy].size(), 12u);
    for (const auto& r : requests[strategy]) {
      EXPECT_TRUE(engine::ValidateRequestJson(r).ok()) << engine::ValidateRequestJson(r);
      EXPECT_EQ(r["output_ids"].size(), 12u);
    }
  }
  // Same seeded load, same greedy tokens; contiguous reserves far more than it uses.
  for (size_t i = 0; i < 12; ++i) {
    EXPECT_EQ(requests["paged"][i]["output_ids"], requests["contiguous"][i]["output_ids"]);
  }
  EXPECT_GT(summaries["contiguous"]["kv_waste_fraction"].get<double>(), 0.5);
  EXPECT_LT(summaries["paged"]["kv_waste_fraction"].get<double>(),
            summaries["contiguous"]["kv_waste_fraction"].get<double>());
}

TEST(BenchCliTest, RunsAPresetFromAYamlFile) {
  const std::string dir = TempDir("yaml");
  std::ofstream(dir + "/bench.yaml") << "model: {preset: llama-tiny}\n"
                                        "strategy: {name: paged, block_size: 8}\n"
                                        "memory: {kv_bytes: 2MiB}\n"
                                        "workload: {num_requests: 6, arrival: poisson, request_rate: 100,\n"
                                        "           input_len: {dist: uniform, mean: 20, spread: 10},\n"
                                        "           output_len: 5}\n"
                                        "seed: 9\n";
  Outcome o = Kvscope("bench --config " + dir + "/bench.yaml --out " + dir + "/out");
  ASSERT_EQ(o.code, 0) << o.output;
  const nlohmann::json result = ReadJson(dir + "/out/result.json");
  EXPECT_EQ(result["summary"]["completed"], 6);
  EXPECT_EQ(ReadJsonl(dir + "/out/requests.jsonl").size(), 6u);
}

TEST(BenchCliTest, BadConfigsAreRejectedBeforeAnyWork) {
  const std::string dir = TempDir("bad");
  std::ofstream(dir + "/trace.jsonl") << "{\"timestamp\": 0, \"input_length\": 8, \"output_length\": 2}\n"
                                         "{\"timestamp\": 5, \"input_length\": \n";
  const std::string base = "bench --model preset:llama-tiny --out " + dir + "/out ";
  struct Case {
    std::string args, message;
  };
  const std::vector<Case> cases = {
      {base + "--strategy nosuch", "contiguous, paged"},
      {base + "--strategy paged --strategy-param bogus=1", "block_size"},
      {base + "--strategy paged --strategy-param block_size=0", "block_size"},
      {base + "--request-rate -3", "request-rate"},
      {base + "--kv-memory 1KiB", "cannot hold one block"},
      {base + "--kv-memory lots", "64MiB"},
      {base + "--dataset trace --trace " + dir + "/trace.jsonl", "trace.jsonl:2"},
      {"bench --out " + dir + "/out", "model"},
      {base + "--strategy infinigen --calibration-text " + dir + "/none.txt",
       "cannot read --calibration-text"},
      {base + "--strategy infinigen --calibration-text " + dir + "/trace.jsonl",
       "needs a model with a tokenizer"},
  };
  for (const Case& c : cases) {
    Outcome o = Kvscope(c.args);
    EXPECT_NE(o.code, 0) << c.args;
    EXPECT_LT(o.code, 128) << c.args << "\n" << o.output;
    EXPECT_THAT(o.output, HasSubstr(c.message)) << c.args;
    EXPECT_FALSE(std::filesystem::exists(dir + "/out/result.json")) << c.args;
  }
}

TEST(BenchCliTest, CtrlCWritesWhatWasMeasuredMarkedIncomplete) {
  KVSCOPE_REQUIRE_SHARED(dir, "models/tinystories-656k");
  const std::string out = TempDir("sigint");
  // A run far longer than the 6 s before SIGINT: one request at a time, slow arrivals.
  Outcome o;
  o.code = testing::RunCommand("timeout --preserve-status -s INT 6 " + testing::KvscopeBinary() +
                                   " bench --model " + dir +
                                   " --num-requests 600 --request-rate 20 --arrival constant"
                                   " --input-len 16 --output-len 16 --out " + out,
                               &o.output);
  EXPECT_EQ(o.code, 130) << o.output;
  ASSERT_TRUE(std::filesystem::exists(out + "/result.json")) << o.output;
  const nlohmann::json result = ReadJson(out + "/result.json");
  EXPECT_EQ(result["complete"], false);
  EXPECT_GT(result["summary"]["completed"].get<int>(), 0);
  EXPECT_LT(result["summary"]["completed"].get<int>(), 600);
  EXPECT_EQ(ReadJsonl(out + "/requests.jsonl").size(), 600u);
}

TEST(BenchCliTest, StrategiesListsParameters) {
  Outcome o = Kvscope("strategies");
  ASSERT_EQ(o.code, 0) << o.output;
  EXPECT_THAT(o.output, HasSubstr("paged"));
  EXPECT_THAT(o.output, HasSubstr("contiguous"));
  EXPECT_THAT(o.output, HasSubstr("enable_prefix_caching"));
  EXPECT_EQ(Kvscope("bench --help").code, 0);
}

}  // namespace
}  // namespace kvscope
