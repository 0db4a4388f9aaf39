// WriteResult round trip: the files parse back, pass ValidateResultJson /
// ValidateRequestJson, and hold the values written.
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/env_fingerprint.h"
#include "engine/metrics.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

namespace fs = std::filesystem;

class ResultWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           absl::StrCat("kvscope_result_writer_test_", ::getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string Read(const fs::path& path) {
    std::ifstream in(path);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }

  static ResultDocument Document() {
    ResultDocument doc;
    doc.config = {{"strategy", "paged"}, {"block_size", 16}, {"request_rate", 4.0}};
    doc.environment = EnvironmentFingerprint(1714564800);
    RequestRecord a;
    a.id = 7;
    a.arrival_s = 0.0;
    a.first_scheduled_s = 0.125;
    a.first_token_s = 0.5;
    a.finish_s = 1.0;
    a.token_times_s = {0.5, 0.75, 1.0};
    a.output_ids = {11, 12, 13};
    a.input_tokens = 9;
    a.output_tokens = 3;
    a.completed = true;
    a.conversation_id = 3;
    a.turn = 1;
    a.quality_top1_agreement = 1.0;
    RequestRecord b;
    b.id = 8;
    b.arrival_s = 0.25;
    b.input_tokens = 4;
    b.error = "interrupted \xff\xfe";  // invalid UTF-8 must not break the writer
    doc.requests = {a, b};
    StepRecord s0{.start_s = 0.125, .schedule_s = 0.001, .forward_s = 0.01, .sample_s = 0.001,
                  .batch_size = 1, .num_tokens = 9, .prefill_tokens = 9,
                  .kv_reserved_bytes = 4096, .kv_used_bytes = 1024};
    StepRecord s1{.start_s = 0.75, .schedule_s = 0.001, .forward_s = 0.01, .sample_s = 0.001,
                  .batch_size = 1, .num_tokens = 1, .decode_tokens = 1,
                  .kv_reserved_bytes = 4096, .kv_used_bytes = 2048};
    doc.steps = {s0, s1};
    doc.summary = Summarize(doc.requests, doc.steps, 0, {.e2el_ms = 2000});
    doc.complete = false;
    doc.status_message = "interrupted by SIGINT";
    return doc;
  }

  fs::path dir_;
};

TEST_F(ResultWriterTest, RoundTrip) {
  const ResultDocument doc = Document();
  const fs::path out = dir_ / "nested" / "run1";
  ASSERT_TRUE(WriteResult(out.string(), doc).ok());

  // Only the two files: temporaries are renamed away.
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(out)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"requests.jsonl", "result.json"}));

  const nlohmann::json result = nlohmann::json::parse(Read(out / "result.json"));
  const absl::Status valid = ValidateResultJson(result);
  ASSERT_TRUE(valid.ok()) << valid;
  EXPECT_EQ(result["schema_version"], 1);
  EXPECT_EQ(result["complete"], false);
  EXPECT_EQ(result["status_message"], "interrupted by SIGINT");
  EXPECT_EQ(result["config"], doc.config);
  EXPECT_EQ(result["environment"], doc.environment);
  EXPECT_EQ(result["summary"], SummaryToJson(doc.summary));
  EXPECT_EQ(result["summary"]["completed"], 1);
  EXPECT_EQ(result["summary"]["failed"], 1);
  EXPECT_DOUBLE_EQ(result["summary"]["duration"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(result["summary"]["request_goodput"].get<double>(), 1.0);
  EXPECT_EQ(result["summary"]["target_request_rate"], "inf");
  EXPECT_DOUBLE_EQ(result["summary"]["quality_top1_agreement"].get<double>(), 1.0);
  EXPECT_TRUE(result["summary"]["quality_mean_kl"].is_null());
  const nlohmann::json& steps = result["timelines"]["steps"];
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0], StepToJson(doc.steps[0]));
  EXPECT_EQ(steps[1]["kv_used_bytes"], 2048);
  EXPECT_DOUBLE_EQ(steps[1]["start_s"].get<double>(), 0.75);

  std::istringstream lines(Read(out / "requests.jsonl"));
  std::vector<nlohmann::json> requests;
  for (std::string line; std::getline(lines, line);) {
    requests.push_back(nlohmann::json::parse(line));
    const absl::Status ok = ValidateRequestJson(requests.back());
    EXPECT_TRUE(ok.ok()) << ok << "\n" << line;
  }
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0], RequestToJson(doc.requests[0]));
  EXPECT_EQ(requests[0]["id"], 7);
  EXPECT_EQ(requests[0]["output_ids"], nlohmann::json({11, 12, 13}));
  EXPECT_DOUBLE_EQ(requests[0]["ttft_ms"].get<double>(), 500);
  EXPECT_DOUBLE_EQ(requests[0]["tpot_ms"].get<double>(), 250);
  EXPECT_DOUBLE_EQ(requests[0]["first_scheduled_s"].get<double>(), 0.125);
  EXPECT_EQ(requests[1]["completed"], false);
  EXPECT_TRUE(requests[1]["finish_s"].is_null());
  EXPECT_EQ(requests[1]["error"].get<std::string>().rfind("interrupted ", 0), 0u);

  // Writing again replaces both files.
  ResultDocument again = doc;
  again.complete = true;
  again.status_message = "";
  again.requests.resize(1);
  again.steps.clear();
  ASSERT_TRUE(WriteResult(out.string(), again).ok());
  const nlohmann::json second = nlohmann::json::parse(Read(out / "result.json"));
  EXPECT_TRUE(ValidateResultJson(second).ok()) << ValidateResultJson(second);
  EXPECT_EQ(second["complete"], true);
  EXPECT_TRUE(second["timelines"]["steps"].empty());
  EXPECT_EQ(Read(out / "requests.jsonl").find("\"id\":8"), std::string::npos);
}

TEST_F(ResultWriterTest, NullConfigAndEmptyRunStillValid) {
  ResultDocument doc;
  doc.summary = Summarize({}, {}, 0, {});
  ASSERT_TRUE(WriteResult(dir_.string(), doc).ok());
  const nlohmann::json result = nlohmann::json::parse(Read(dir_ / "result.json"));
  EXPECT_TRUE(ValidateResultJson(result).ok()) << ValidateResultJson(result);
  EXPECT_TRUE(result["config"].is_object());
  EXPECT_TRUE(result["environment"].is_object());
  EXPECT_EQ(Read(dir_ / "requests.jsonl"), "");
}

TEST_F(ResultWriterTest, ErrorsNameThePath) {
  fs::create_directories(dir_);
  const fs::path blocker = dir_ / "not_a_dir";
  std::ofstream(blocker) << "x";
  const absl::Status status = WriteResult((blocker / "run").string(), Document());
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("not_a_dir"), std::string::npos) << status;
}

TEST(ValidateResultJsonTest, RejectsMissingAndMistypedKeys) {
  const nlohmann::json good = {{"schema_version", 1},
                               {"complete", true},
                               {"status_message", ""},
                               {"config", nlohmann::json::object()},
                               {"environment", nlohmann::json::object()},
                               {"summary", SummaryToJson(Summary{})},
                               {"timelines", {{"steps", {StepToJson({}), StepToJson({})}}}}};
  ASSERT_TRUE(ValidateResultJson(good).ok()) << ValidateResultJson(good);

  const auto message = [](const nlohmann::json& j) {
    const absl::Status s = ValidateResultJson(j);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    return std::string(s.message());
  };
  nlohmann::json j = good;
  j.erase("summary");
  EXPECT_NE(message(j).find("summary"), std::string::npos);
  j = good;
  j["schema_version"] = 2;
  EXPECT_NE(message(j).find("schema_version"), std::string::npos);
  j = good;
  j["summary"].erase("p99_itl_ms");
  EXPECT_NE(message(j).find("summary.p99_itl_ms"), std::string::npos);
  j = good;
  j["summary"]["mean_ttft_ms"] = "fast";
  EXPECT_NE(message(j).find("summary.mean_ttft_ms"), std::string::npos);
  j = good;
  j["summary"]["target_request_rate"] = "nan";
  EXPECT_NE(message(j).find("target_request_rate"), std::string::npos);
  j = good;
  j["summary"]["completed"] = 1.5;
  EXPECT_NE(message(j).find("summary.completed"), std::string::npos);
  j = good;
  j["timelines"]["steps"][1].erase("kv_used_bytes");
  EXPECT_NE(message(j).find("timelines.steps[1].kv_used_bytes"), std::string::npos);
  EXPECT_FALSE(ValidateResultJson(nlohmann::json::array()).ok());

  nlohmann::json r = RequestToJson(RequestRecord{});
  ASSERT_TRUE(ValidateRequestJson(r).ok());
  r["output_ids"] = {1, "two"};
  EXPECT_NE(std::string(ValidateRequestJson(r).message()).find("output_ids[1]"),
            std::string::npos);
  r = RequestToJson(RequestRecord{});
  r.erase("turn");
  EXPECT_FALSE(ValidateRequestJson(r).ok());
}

}  // namespace
}  // namespace kvscope::engine
