// Tests for coordinator/sweep.h: the issue's example, expansion order and seeds, link,
// dotted axes, each trial's bench YAML, requirements, and every error kind with the file,
// line, column and key it names.
#include "coordinator/sweep.h"

#include <set>
#include <string>

#include "engine/bench_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace kvscope::coordinator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// The issue's example with infinigen swapped for streaming (infinigen joins the registry
// later; the example itself is checked below to fail only on the strategy name).
const char kQuickstart[] = R"(name: quickstart
model: {preset: llama-tiny}          # or {path: /models/Meta-Llama-3-8B}
memory: {kv_bytes: 64MiB}
workload: {num_requests: 200, arrival: poisson, input_len: {dist: lognormal, mean: 256},
           output_len: 64}
matrix:
  strategy: [{name: paged}, {name: h2o, kv_budget: 0.2}, {name: streaming, kv_budget: 0.2}]
  request_rate: [2, 8, 32]
  tp: [1]
repeats: 3
seed: 7
)";

Sweep ParseOrDie(const std::string& yaml, const SweepLimits& limits = {}) {
  absl::StatusOr<Sweep> sweep = ParseSweep(yaml, "sweep.yaml", limits);
  EXPECT_TRUE(sweep.ok()) << sweep.status();
  return sweep.ok() ? *std::move(sweep) : Sweep{};
}

// The message of a sweep that must be refused with InvalidArgument.
std::string ErrorOf(const std::string& yaml, const SweepLimits& limits = {}) {
  absl::StatusOr<Sweep> sweep = ParseSweep(yaml, "sweep.yaml", limits);
  EXPECT_FALSE(sweep.ok()) << "parsed:\n" << yaml;
  if (sweep.ok()) return "";
  EXPECT_TRUE(absl::IsInvalidArgument(sweep.status())) << sweep.status();
  return std::string(sweep.status().message());
}

// Parses a trial's config_yaml with the bench reader.
engine::BenchConfig BenchOf(const TrialSpec& trial) {
  engine::BenchConfig config;
  const absl::Status status = engine::ParseBenchConfigYaml(trial.config_yaml, "trial", &config);
  EXPECT_TRUE(status.ok()) << status << "\n" << trial.config_yaml;
  return config;
}

TEST(SweepTest, IssueExampleExpandsTo27Trials) {
  const Sweep sweep = ParseOrDie(kQuickstart);
  EXPECT_EQ(sweep.name, "quickstart");
  EXPECT_EQ(sweep.repeats, 3);
  EXPECT_EQ(sweep.seed, 7u);
  EXPECT_EQ(sweep.max_attempts, 3);
  EXPECT_THAT(sweep.axis_names, ElementsAre("strategy", "request_rate", "tp"));
  ASSERT_EQ(sweep.trials.size(), 27u);
  std::set<std::string> configs;
  for (size_t i = 0; i < sweep.trials.size(); ++i) {
    const TrialSpec& t = sweep.trials[i];
    EXPECT_EQ(t.index, static_cast<int64_t>(i));
    // Repeats outermost; the last axis fastest.
    EXPECT_EQ(t.repeat, static_cast<int32_t>(i / 9));
    EXPECT_EQ(t.seed, 7u + i / 9);
    const engine::BenchConfig c = BenchOf(t);
    EXPECT_EQ(c.model, "preset:llama-tiny");
    EXPECT_EQ(c.kv_memory_bytes, 64LL << 20);
    EXPECT_EQ(c.workload.num_requests, 200);
    EXPECT_EQ(c.workload.arrival, engine::ArrivalKind::kPoisson);
    EXPECT_EQ(c.workload.input_len.dist, engine::LengthDist::kLognormal);
    EXPECT_EQ(c.workload.input_len.mean, 256);
    EXPECT_EQ(c.workload.output_len.mean, 64);
    EXPECT_EQ(c.workload.seed, t.seed);
    EXPECT_EQ(c.tp, 1);
    EXPECT_EQ(c.out_dir, "");
    EXPECT_EQ(t.config_yaml.find("out:"), std::string::npos);
    configs.insert(t.config_yaml);
    EXPECT_EQ(t.requirements.backend, "cpu");
    EXPECT_EQ(t.requirements.gpus, 0);
    EXPECT_EQ(t.requirements.model_path, "");
  }
  EXPECT_EQ(configs.size(), 27u);

  const TrialSpec& t4 = sweep.trials[4];  // strategy[1] (h2o), request_rate[1] (8)
  EXPECT_EQ(t4.label, "strategy=h2o(kv_budget=0.2) request_rate=8 tp=1 repeat=0");
  EXPECT_EQ(t4.axes["strategy"], nlohmann::json({{"name", "h2o"}, {"kv_budget", 0.2}}));
  EXPECT_EQ(t4.axes["request_rate"], 8);
  EXPECT_EQ(t4.axes["tp"], 1);
  const engine::BenchConfig c4 = BenchOf(t4);
  EXPECT_EQ(c4.strategy, "h2o");
  EXPECT_EQ(c4.strategy_params.at("kv_budget"), "0.2");
  EXPECT_EQ(c4.workload.request_rate, 8);
  EXPECT_EQ(sweep.trials[0].label, "strategy=paged request_rate=2 tp=1 repeat=0");
  EXPECT_EQ(sweep.trials[26].label,
            "strategy=streaming(kv_budget=0.2) request_rate=32 tp=1 repeat=2");
  EXPECT_EQ(BenchOf(sweep.trials[8]).strategy, "streaming");
  // Common random numbers: a repeat's points share the seed; each repeat differs.
  EXPECT_EQ(sweep.trials[9].seed, 8u);
  EXPECT_EQ(sweep.trials[9].axes, sweep.trials[0].axes);
}

TEST(SweepTest, IssueExampleAsWrittenFailsOnlyOnAnUnregisteredStrategy) {
  std::string yaml = kQuickstart;
  yaml.replace(yaml.find("{name: streaming"), 16, "{name: infinigen");
  absl::StatusOr<Sweep> sweep = ParseSweep(yaml, "quickstart.yaml");
  if (sweep.ok()) {  // infinigen is registered
    EXPECT_EQ(sweep->trials.size(), 27u);
    return;
  }
  const std::string m(sweep.status().message());
  // Line 7, column of the infinigen value's map.
  EXPECT_THAT(m, StartsWith("quickstart.yaml:7:"));
  EXPECT_THAT(m, HasSubstr("in matrix.strategy[2]"));
  EXPECT_THAT(m, HasSubstr("unknown KV strategy 'infinigen'"));
  EXPECT_THAT(m, HasSubstr("paged"));
}

TEST(SweepTest, ConfigYamlIsACompleteBenchFile) {
  const Sweep sweep = ParseOrDie(kQuickstart);
  EXPECT_EQ(sweep.trials[4].config_yaml,
            "model:\n"
            "  preset: llama-tiny\n"
            "memory:\n"
            "  kv_bytes: 64MiB\n"
            "workload:\n"
            "  num_requests: 200\n"
            "  arrival: poisson\n"
            "  input_len:\n"
            "    dist: lognormal\n"
            "    mean: 256\n"
            "  output_len: 64\n"
            "strategy:\n"
            "  name: h2o\n"
            "  kv_budget: 0.2\n"
            "request_rate: 8\n"
            "tp: 1\n"
            "seed: 7\n");
}

TEST(SweepTest, NoMatrixIsTheBaseTrialRepeated) {
  const Sweep sweep = ParseOrDie("name: one\nmodel: preset:llama-tiny\nrepeats: 2\n");
  ASSERT_EQ(sweep.trials.size(), 2u);
  EXPECT_TRUE(sweep.axis_names.empty());
  EXPECT_EQ(sweep.trials[1].label, "repeat=1");
  EXPECT_EQ(sweep.trials[0].seed, 0u);
  EXPECT_EQ(sweep.trials[1].seed, 1u);
  EXPECT_EQ(BenchOf(sweep.trials[1]).model, "preset:llama-tiny");
}

TEST(SweepTest, LinkedAxesVaryTogether) {
  const Sweep sweep = ParseOrDie(R"(name: l
model: {preset: llama-tiny}
matrix:
  strategy: [paged, h2o]
  request_rate: [1, 2, 3]
  kv_bytes: [16MiB, 32MiB]
link: [[strategy, kv_bytes]]
)");
  ASSERT_EQ(sweep.trials.size(), 6u);
  // Dimensions: (strategy, kv_bytes) at strategy's place, then request_rate fastest.
  const char* expected[] = {"strategy=paged request_rate=1 kv_bytes=16MiB repeat=0",
                            "strategy=paged request_rate=2 kv_bytes=16MiB repeat=0",
                            "strategy=paged request_rate=3 kv_bytes=16MiB repeat=0",
                            "strategy=h2o request_rate=1 kv_bytes=32MiB repeat=0",
                            "strategy=h2o request_rate=2 kv_bytes=32MiB repeat=0",
                            "strategy=h2o request_rate=3 kv_bytes=32MiB repeat=0"};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(sweep.trials[i].label, expected[i]);
  EXPECT_EQ(BenchOf(sweep.trials[4]).kv_memory_bytes, 32LL << 20);
  EXPECT_EQ(BenchOf(sweep.trials[4]).strategy, "h2o");
  EXPECT_EQ(sweep.trials[4].axes["kv_bytes"], "32MiB");
}

TEST(SweepTest, DottedAxesSetNestedKeys) {
  const Sweep sweep = ParseOrDie(R"(name: d
model: {preset: llama-tiny}
strategy: h2o
workload: {input_len: 100, output_len: {dist: uniform, mean: 32, spread: 8}}
matrix:
  workload.input_len.dist: [uniform]
  workload.output_len: [16]
  scheduler.max_num_seqs: [4, 8]
  strategy.kv_budget: [0.5]
  model.weights_seed: [3]
  goodput.ttft_ms: [250]
)");
  ASSERT_EQ(sweep.trials.size(), 2u);
  const engine::BenchConfig c = BenchOf(sweep.trials[1]);
  EXPECT_EQ(c.workload.input_len.dist, engine::LengthDist::kUniform);
  EXPECT_EQ(c.workload.input_len.mean, 100);  // the scalar base kept as the mean
  EXPECT_EQ(c.workload.output_len.dist, engine::LengthDist::kFixed);
  EXPECT_EQ(c.workload.output_len.mean, 16);
  EXPECT_EQ(c.scheduler.max_num_seqs, 8);
  EXPECT_EQ(c.strategy, "h2o");
  EXPECT_EQ(c.strategy_params.at("kv_budget"), "0.5");
  EXPECT_EQ(c.weights_seed, 3u);
  EXPECT_EQ(c.model, "preset:llama-tiny");
  ASSERT_TRUE(c.slo.ttft_ms.has_value());
  EXPECT_EQ(*c.slo.ttft_ms, 250);
  EXPECT_EQ(sweep.trials[1].axes["scheduler.max_num_seqs"], 8);
}

TEST(SweepTest, StrategyParamAxisAppliesToEachStrategyOfTheStrategyAxis) {
  // strategy.kv_budget comes first in the matrix but applies after strategy (shorter path).
  const Sweep sweep = ParseOrDie(R"(name: s
model: preset:llama-tiny
matrix:
  strategy.kv_budget: [0.1, 0.3]
  strategy: [h2o, {name: streaming, sink_tokens: 2}]
)");
  ASSERT_EQ(sweep.trials.size(), 4u);
  const engine::BenchConfig c = BenchOf(sweep.trials[3]);
  EXPECT_EQ(c.strategy, "streaming");
  EXPECT_EQ(c.strategy_params.at("kv_budget"), "0.3");
  EXPECT_EQ(c.strategy_params.at("sink_tokens"), "2");
  EXPECT_EQ(sweep.trials[3].label,
            "strategy.kv_budget=0.3 strategy=streaming(sink_tokens=2) repeat=0");
}

TEST(SweepTest, ModelAxisAndRequirements) {
  const Sweep sweep = ParseOrDie(R"(name: m
backend: cuda
max_attempts: 5
matrix:
  model: [{preset: llama-tiny}, {path: /models/llama}, "preset:opt-tiny"]
  tp: [1, 2]
  threads: [3]
)");
  EXPECT_EQ(sweep.max_attempts, 5);
  ASSERT_EQ(sweep.trials.size(), 6u);
  EXPECT_EQ(sweep.trials[1].requirements.backend, "cuda");
  EXPECT_EQ(sweep.trials[1].requirements.gpus, 2);
  EXPECT_EQ(sweep.trials[1].requirements.cpu_threads, 3);
  EXPECT_EQ(sweep.trials[1].requirements.model_path, "");
  EXPECT_EQ(sweep.trials[2].requirements.model_path, "/models/llama");
  EXPECT_EQ(BenchOf(sweep.trials[2]).model, "/models/llama");
  EXPECT_EQ(BenchOf(sweep.trials[4]).model, "preset:opt-tiny");
  EXPECT_EQ(sweep.trials[2].label, "model=path:/models/llama tp=1 threads=3 repeat=0");
  EXPECT_EQ(sweep.trials[2].axes["model"], nlohmann::json({{"path", "/models/llama"}}));
}

// `nodes` is a bench key and an axis: it reaches the bench YAML and the placement (a gang
// of `nodes` workers, tp / nodes ranks each); a nodes that does not divide tp is refused at
// its matrix value.
TEST(SweepTest, NodesAxisAndGangRequirements) {
  const Sweep sweep = ParseOrDie(R"(name: n
model: {preset: llama-tiny}
tp: 2
matrix:
  nodes: [1, 2]
)");
  ASSERT_EQ(sweep.trials.size(), 2u);
  EXPECT_EQ(sweep.trials[0].requirements.nodes, 1);
  EXPECT_EQ(sweep.trials[1].requirements.nodes, 2);
  EXPECT_EQ(sweep.trials[1].requirements.gpus, 0);  // cpu
  EXPECT_EQ(BenchOf(sweep.trials[1]).nodes, 2);
  EXPECT_EQ(sweep.trials[1].label, "nodes=2 repeat=0");

  auto bad = ParseSweep(R"(name: n
model: {preset: llama-tiny}
tp: 2
matrix:
  nodes: [3]
)", "s.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("s.yaml:5:11"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("nodes"), std::string::npos) << bad.status();
}

// The backend places the trial and selects the bench's engine: `backend: cuda` reaches the
// trial's bench YAML (valid in any build; only running it needs CUDA), with the base
// trial's `gpu` options.
TEST(SweepTest, BackendAxisSetsRequirementsAndTheBenchBackend) {
  const Sweep sweep = ParseOrDie(R"(name: b
model: {preset: llama-tiny}
tp: 2
gpu: {dtype: f32}
matrix: {backend: [cpu, cuda]}
)");
  ASSERT_EQ(sweep.trials.size(), 2u);
  EXPECT_EQ(sweep.trials[0].requirements.gpus, 0);
  EXPECT_EQ(sweep.trials[1].requirements.backend, "cuda");
  EXPECT_EQ(sweep.trials[1].requirements.gpus, 2);
  EXPECT_EQ(BenchOf(sweep.trials[0]).backend, "cpu");
  EXPECT_EQ(BenchOf(sweep.trials[1]).backend, "cuda");
  EXPECT_EQ(BenchOf(sweep.trials[1]).gpu_dtype, "f32");
  EXPECT_EQ(sweep.trials[0].config_yaml.find("backend"), std::string::npos);
}

TEST(SweepTest, QuotedAndOddScalarsSurviveTheRoundTrip) {
  const Sweep sweep = ParseOrDie(R"(name: "odd: name"
model: {preset: llama-tiny}
workload: {dataset: text, text: "/data/a file: #1.txt", num_requests: "8"}
goodput: {ttft_ms: ~, tpot_ms: 50}
matrix:
  request_rate: [inf, 0.5]
)");
  EXPECT_EQ(sweep.name, "odd: name");
  const engine::BenchConfig c = BenchOf(sweep.trials[0]);
  EXPECT_EQ(c.workload.text_path, "/data/a file: #1.txt");
  EXPECT_EQ(c.workload.num_requests, 8);
  EXPECT_FALSE(c.slo.ttft_ms.has_value());
  EXPECT_EQ(c.workload.arrival, engine::ArrivalKind::kAllAtOnce);
  EXPECT_EQ(sweep.trials[0].axes["request_rate"], "inf");
  EXPECT_EQ(sweep.trials[1].axes["request_rate"], 0.5);
}

// --- Errors: file:line:column, key, what was found and what is allowed -----------------------

TEST(SweepErrorTest, BadMatrixValuePointsAtItsLine) {
  const std::string m = ErrorOf(R"(name: e
model: {preset: llama-tiny}
matrix:
  request_rate: [2, 8,
                 -1]
)");
  EXPECT_THAT(m, StartsWith("sweep.yaml:5:18: in matrix.request_rate[2]: key 'request_rate': "));
  EXPECT_THAT(m, HasSubstr("must be > 0 or inf, found '-1'"));
}

TEST(SweepErrorTest, BadBaseKeyPointsAtItsLine) {
  const std::string m = ErrorOf(R"(name: e
model: {preset: llama-tiny}
workload:
  num_requests: 10
  input_len: {dist: zipf}
)");
  EXPECT_THAT(m, StartsWith("sweep.yaml:5:21: key 'workload.input_len.dist': found 'zipf', "
                            "allowed: fixed, uniform, normal, lognormal"));
}

TEST(SweepErrorTest, UnknownNestedBaseKey) {
  const std::string m = ErrorOf("name: e\nmodel: {preset: llama-tiny}\nworkload: {rate: 3}\n");
  EXPECT_THAT(m, StartsWith("sweep.yaml:3:12: unknown key 'workload.rate'; allowed: num_requests"));
}

TEST(SweepErrorTest, UnknownTopLevelKeyAndOut) {
  std::string m = ErrorOf("name: e\nmodel: {preset: llama-tiny}\nrepeat: 3\n");
  EXPECT_THAT(m, StartsWith("sweep.yaml:3:1: unknown key 'repeat'; allowed: name, model,"));
  EXPECT_THAT(m, HasSubstr("repeats"));
  m = ErrorOf("name: e\nmodel: {preset: llama-tiny}\nout: /tmp/x\n");
  EXPECT_THAT(m, StartsWith("sweep.yaml:3:1: unknown key 'out' (each trial's output directory"));
}

TEST(SweepErrorTest, MissingOrBadName) {
  EXPECT_THAT(ErrorOf("model: {preset: llama-tiny}\n"),
              StartsWith("sweep.yaml:1:1: missing key 'name'"));
  EXPECT_THAT(ErrorOf("name: [a]\nmodel: {preset: llama-tiny}\n"),
              StartsWith("sweep.yaml:1:7: key 'name': expected a non-empty name, found a list"));
}

TEST(SweepErrorTest, SweepKeys) {
  const std::string base = "name: e\nmodel: {preset: llama-tiny}\n";
  EXPECT_THAT(ErrorOf(base + "repeats: 0\n"),
              StartsWith("sweep.yaml:3:10: key 'repeats': expected an integer in [1, "));
  EXPECT_THAT(ErrorOf(base + "repeats: two\n"), HasSubstr("found 'two'"));
  EXPECT_THAT(ErrorOf(base + "seed: -1\n"),
              StartsWith("sweep.yaml:3:7: key 'seed': expected an integer >= 0, found '-1'"));
  EXPECT_THAT(ErrorOf(base + "max_attempts: 101\n"),
              StartsWith("sweep.yaml:3:15: key 'max_attempts': expected an integer in [1, 100], "
                         "found '101'"));
  EXPECT_THAT(ErrorOf(base + "backend: rocm\n"),
              StartsWith("sweep.yaml:3:10: key 'backend': found 'rocm', allowed: cpu, cuda"));
  EXPECT_THAT(ErrorOf(base + "seed: 18446744073709551615\nrepeats: 2\n"),
              HasSubstr("key 'seed': seed + repeats - 1 must fit in 64 bits"));
}

TEST(SweepErrorTest, UnknownAxisListsTheAllowedOnes) {
  std::string m = ErrorOf("name: e\nmodel: preset:llama-tiny\nmatrix:\n  rate: [1]\n");
  EXPECT_THAT(m, StartsWith("sweep.yaml:4:3: unknown axis 'matrix.rate'; allowed: strategy, "
                            "request_rate, tp, model, kv_bytes"));
  m = ErrorOf("name: e\nmodel: preset:llama-tiny\nmatrix:\n  seed: [1, 2]\n");
  EXPECT_THAT(m, StartsWith("sweep.yaml:4:3: unknown axis 'matrix.seed': seeds come from"));
  m = ErrorOf("name: e\nmodel: preset:llama-tiny\nmatrix:\n  workload..x: [1]\n");
  EXPECT_THAT(m, HasSubstr("unknown axis 'matrix.workload..x'"));
}

TEST(SweepErrorTest, UnknownDottedAxisKeyIsReportedByTheBenchReader) {
  const std::string m =
      ErrorOf("name: e\nmodel: preset:llama-tiny\nmatrix:\n  workload.rate: [1]\n");
  EXPECT_THAT(m, StartsWith("sweep.yaml:4:3: in matrix.workload.rate[0]: unknown key "
                            "'workload.rate'; allowed: num_requests"));
}

TEST(SweepErrorTest, AxisValuesMustBeANonEmptyList) {
  const std::string base = "name: e\nmodel: preset:llama-tiny\nmatrix:\n";
  EXPECT_THAT(ErrorOf(base + "  tp: 1\n"),
              StartsWith("sweep.yaml:4:7: key 'matrix.tp': expected a non-empty list of values "
                         "(e.g. [1, 2]), found '1'"));
  EXPECT_THAT(ErrorOf(base + "  tp: []\n"), HasSubstr("found an empty list"));
  EXPECT_THAT(ErrorOf(base + "  tp:\n"), StartsWith("sweep.yaml:4:3: key 'matrix.tp'"));
  EXPECT_THAT(ErrorOf("name: e\nmodel: preset:llama-tiny\nmatrix: [tp]\n"),
              StartsWith("sweep.yaml:3:9: key 'matrix': expected a map"));
}

TEST(SweepErrorTest, AxesSettingTheSameKey) {
  EXPECT_THAT(ErrorOf("name: e\nmodel: preset:llama-tiny\nmatrix:\n  kv_bytes: [1MiB]\n"
                      "  memory.kv_bytes: [2MiB]\n"),
              StartsWith("sweep.yaml:5:3: axes 'kv_bytes' and 'memory.kv_bytes' set the same key "
                         "'memory.kv_bytes'"));
}

TEST(SweepErrorTest, BadValuesOfEachAxisKind) {
  const std::string base = "name: e\nmodel: preset:llama-tiny\nmatrix:\n";
  EXPECT_THAT(ErrorOf(base + "  tp: [1, x]\n"),
              StartsWith("sweep.yaml:4:11: in matrix.tp[1]: key 'tp': expected an integer, "
                         "found 'x'"));
  EXPECT_THAT(ErrorOf(base + "  kv_bytes: [64MiB, lots]\n"),
              StartsWith("sweep.yaml:4:21: in matrix.kv_bytes[1]: key 'memory.kv_bytes': "));
  EXPECT_THAT(ErrorOf(base + "  backend: [cpu, tpu]\n"),
              StartsWith("sweep.yaml:4:18: key 'matrix.backend[1]': found 'tpu', allowed: cpu, "
                         "cuda"));
  EXPECT_THAT(ErrorOf(base + "  model: [{preset: llama-tiny}, {preset: nope}]\n"),
              StartsWith("sweep.yaml:4:42: in matrix.model[1]: unknown preset 'nope' (available: "
                         "llama-tiny"));
  EXPECT_THAT(ErrorOf(base + "  tp: [3]\n"),
              StartsWith("sweep.yaml:4:8: in matrix.tp[0]: tensor-parallel size 3 cannot split"));
  EXPECT_THAT(ErrorOf(base + "  tp: [0]\n"),
              StartsWith("sweep.yaml:4:8: in matrix.tp[0]: tp must be >= 1, got 0 (trial tp=0)"));
  EXPECT_THAT(ErrorOf(base + "  tp: [100000]\n"), HasSubstr("expected at most 1024"));
  EXPECT_THAT(ErrorOf(base + "  strategy.kv_budget: [0.5]\n  strategy: [paged]\n"),
              StartsWith("sweep.yaml:4:3: in matrix.strategy.kv_budget[0]: unknown parameter "
                         "'kv_budget' for strategy paged"));
}

TEST(SweepErrorTest, BadStrategyParameterPointsAtTheParameter) {
  const std::string m = ErrorOf(R"(name: e
model: preset:llama-tiny
matrix:
  strategy:
    - {name: paged}
    - {name: h2o,
       kv_budget: 2}
)");
  EXPECT_THAT(m, StartsWith("sweep.yaml:7:19: in matrix.strategy[1]: strategy h2o: kv_budget=2 is "
                            "out of range"));
  EXPECT_THAT(m, HasSubstr("(trial strategy=h2o(kv_budget=2))"));
  EXPECT_THAT(ErrorOf("name: e\nmodel: preset:llama-tiny\nstrategy: {name: paged, x: 1}\n"),
              StartsWith("sweep.yaml:3:25: unknown parameter 'x' for strategy paged"));
}

TEST(SweepErrorTest, ValidationErrorWithoutALineIsAttributedToItsKey) {
  const std::string m = ErrorOf(R"(name: e
model: preset:llama-tiny
workload:
  input_len: {min: 10}
matrix:
  workload.input_len.max: [20, 5]
)");
  EXPECT_THAT(m, StartsWith("sweep.yaml:6:32: in matrix.workload.input_len.max[1]: workload: "
                            "input_len.min must be <= input_len.max"));
}

TEST(SweepErrorTest, CannotSetAKeyInsideAScalar) {
  EXPECT_THAT(ErrorOf("name: e\nmodel: preset:llama-tiny\ntp: 1\nmatrix:\n  tp.x: [1]\n"),
              StartsWith("sweep.yaml:5:3: axis 'matrix.tp.x': cannot set a key inside 'tp', which "
                         "is '1' (not a map)"));
}

TEST(SweepErrorTest, Link) {
  const std::string base =
      "name: e\nmodel: preset:llama-tiny\nmatrix:\n  tp: [1, 2]\n  threads: [1, 2, 3]\n"
      "  kv_bytes: [1MiB, 2MiB]\n";
  EXPECT_THAT(ErrorOf(base + "link: [[tp, threads]]\n"),
              StartsWith("sweep.yaml:7:13: key 'link[0]': linked axes vary together and need "
                         "equal lengths: 'tp' has 2 values, 'threads' has 3"));
  EXPECT_THAT(ErrorOf(base + "link: [[tp, seed]]\n"),
              StartsWith("sweep.yaml:7:13: key 'link[0]': found 'seed', which is not a matrix "
                         "axis; allowed: tp, threads, kv_bytes"));
  EXPECT_THAT(ErrorOf(base + "link: [[tp, kv_bytes], [kv_bytes, tp]]\n"),
              HasSubstr("axis 'kv_bytes' is already linked in link[0]"));
  EXPECT_THAT(ErrorOf(base + "link: [[tp]]\n"),
              StartsWith("sweep.yaml:7:8: key 'link[0]': expected a list of at least 2"));
  EXPECT_THAT(ErrorOf(base + "link: tp\n"), StartsWith("sweep.yaml:7:7: key 'link'"));
}

TEST(SweepErrorTest, MalformedAndStructural) {
  EXPECT_THAT(ErrorOf("name: e\nmatrix: {tp: [1, 2}\n"), StartsWith("sweep.yaml:2:"));
  EXPECT_THAT(ErrorOf("name: e\nmatrix: {tp: [1, 2}\n"), HasSubstr("malformed YAML"));
  EXPECT_THAT(ErrorOf("- a\n- b\n"),
              StartsWith("sweep.yaml:1:1: expected a map with the keys name,"));
  EXPECT_THAT(ErrorOf(""), HasSubstr("expected a map"));
  EXPECT_THAT(ErrorOf("name: a\n---\nname: b\n"), HasSubstr("expected one YAML document, found 2"));
  EXPECT_THAT(ErrorOf("name: a\nname: b\n"),
              StartsWith("sweep.yaml:2:1: key 'name' is given twice"));
  EXPECT_THAT(ErrorOf("name: a\nworkload: {turns: 1, turns: 2}\n"),
              StartsWith("sweep.yaml:2:22: key 'workload.turns' is given twice"));
  EXPECT_THAT(ErrorOf("name: a\n[x]: 1\n"), StartsWith("sweep.yaml:2:1: the document: expected a "
                                                       "plain key"));
  EXPECT_THAT(ErrorOf("name: e\n"), HasSubstr("model: give a model directory or preset:NAME"));
  // yaml-cpp 0.7's LoadAll never returns on this (a stray ',' at a document start).
  EXPECT_THAT(ErrorOf(",name: bad\nmodel: preset:llama-tiny\n"),
              StartsWith("sweep.yaml:1:1: malformed YAML: unexpected ','"));
}

// --- Limits ----------------------------------------------------------------------------------

TEST(SweepLimitsTest, EachLimitIsRefusedWithItsNumbers) {
  SweepLimits limits;
  limits.max_text_bytes = 20;
  EXPECT_THAT(ErrorOf(kQuickstart, limits),
              StartsWith("sweep.yaml: the sweep file is 389 bytes; the limit is 20"));
  EXPECT_THAT(ErrorOf(kQuickstart, limits), HasSubstr("bytes; the limit is 20"));

  limits = {};
  limits.max_trials = 26;
  EXPECT_THAT(ErrorOf(kQuickstart, limits),
              StartsWith("sweep.yaml:7:3: the sweep expands to more than 26 trials (the limit): "
                         "3 x 3 x 1 matrix points x 3 repeats"));
  limits.max_trials = 27;
  EXPECT_EQ(ParseOrDie(kQuickstart, limits).trials.size(), 27u);

  limits = {};
  limits.max_string_bytes = 8;
  EXPECT_THAT(ErrorOf(kQuickstart, limits),
              StartsWith("sweep.yaml:1:7: key 'name': a string of 10 bytes; the limit is 8"));

  limits = {};
  limits.max_axes = 2;
  EXPECT_THAT(ErrorOf(kQuickstart, limits),
              StartsWith("sweep.yaml:7:3: key 'matrix': 3 axes; the limit is 2"));

  limits = {};
  limits.max_values_per_axis = 2;
  EXPECT_THAT(ErrorOf(kQuickstart, limits),
              StartsWith("sweep.yaml:7:13: key 'matrix.strategy': 3 values; the limit is 2 per "
                         "axis"));

  limits = {};
  limits.max_total_config_bytes = 1000;
  EXPECT_THAT(ErrorOf(kQuickstart, limits),
              HasSubstr("configurations would take more than 1000 bytes"));
}

TEST(SweepLimitsTest, HugeProductIsRefusedWithoutExpanding) {
  // 1000^16 overflows int64: the product is refused as soon as it passes the limit.
  std::string yaml = "name: big\nmodel: preset:llama-tiny\nmatrix:\n";
  std::string values = "[";
  for (int i = 1; i <= 1000; ++i) values += std::to_string(i) + (i < 1000 ? "," : "]");
  for (int a = 0; a < 16; ++a) {
    yaml += "  workload." + std::string(a % 2 ? "turns" : "prefix_len") + std::to_string(a) + ": " +
            values + "\n";
  }
  EXPECT_THAT(ErrorOf(yaml), HasSubstr("the sweep expands to more than 100000 trials"));
  EXPECT_THAT(ErrorOf("name: r\nmodel: preset:llama-tiny\nrepeats: 2147483647\n"),
              HasSubstr("1 matrix points x 2147483647 repeats"));
}

TEST(SweepLimitsTest, DeepNestingAndAliasBombs) {
  std::string deep = "name: d\nmodel: preset:llama-tiny\nworkload: ";
  for (int i = 0; i < 40; ++i) deep += "{a: ";
  deep += "1";
  for (int i = 0; i < 40; ++i) deep += "}";
  EXPECT_THAT(ErrorOf(deep), HasSubstr("nested more than 32 levels deep"));
  // Deeper than yaml-cpp's own guard (2000) and just below it: refused, no stack overflow.
  for (int depth : {1990, 2500}) {
    const std::string text =
        "name: d\nmatrix: {tp: " + std::string(depth, '[') + std::string(depth, ']') + "}\n";
    EXPECT_FALSE(ErrorOf(text).empty()) << depth;
  }
  std::string bomb = "name: b\nmodel: preset:llama-tiny\na0: &a0 [x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i < 12; ++i) {
    bomb += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [";
    for (int j = 0; j < 8; ++j) bomb += "*a" + std::to_string(i - 1) + (j < 7 ? ", " : "]\n");
  }
  EXPECT_THAT(ErrorOf(bomb), HasSubstr("too many YAML nodes"));
}

TEST(SweepTest, ExampleFilesParse) {
  for (const char* name : {"quickstart.yaml"}) {
    const std::string path = std::string(KVSCOPE_TEST_DATA_DIR) + "/../../examples/" + name;
    const Sweep sweep = ParseOrDie(testing::ReadFileOrDie(path));
    EXPECT_FALSE(sweep.trials.empty()) << path;
    if (std::string(name) == "quickstart.yaml") {
      EXPECT_EQ(sweep.name, "quickstart");
      EXPECT_EQ(sweep.trials.size(), 36u);  // 4 strategies x 3 rates x 1 tp x 3 repeats
      EXPECT_THAT(sweep.axis_names, ElementsAre("strategy", "request_rate", "tp"));
    }
  }
}

}  // namespace
}  // namespace kvscope::coordinator
