// Tests for engine/bench_config.h: YAML parsing (values, defaults, every error kind with its
// line and key), validation, JSON rendering and the enum name helpers.
#include "engine/bench_config.h"

#include <cmath>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvscope::engine {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// Parses `yaml` over a default config; fails the test on error.
BenchConfig ParseOrDie(const std::string& yaml) {
  BenchConfig config;
  absl::Status status = ParseBenchConfigYaml(yaml, "bench.yaml", &config);
  EXPECT_TRUE(status.ok()) << status;
  return config;
}

// The error message of parsing `yaml` over a default config ("" when it parses).
std::string ParseError(const std::string& yaml) {
  BenchConfig config;
  absl::Status status = ParseBenchConfigYaml(yaml, "bench.yaml", &config);
  EXPECT_FALSE(status.ok()) << "parsed: " << yaml;
  if (!status.ok()) {
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << status;
  }
  return std::string(status.message());
}

// A configuration that passes ValidateBenchConfig.
BenchConfig ValidConfig() {
  BenchConfig c;
  c.model = "preset:llama-tiny";
  c.out_dir = "/tmp/out";
  return c;
}

TEST(BenchConfigYamlTest, FullExampleParsesToTheExactStruct) {
  const std::string yaml = R"(# every key
model:
  preset: llama-tiny
  weights_seed: 11
strategy:
  name: paged
  block_size: 16
  enable_prefix_caching: true
  watermark: 0.01
memory:
  kv_bytes: 64MiB
workload:
  num_requests: 200
  arrival: gamma
  request_rate: 8.5
  burstiness: 0.5
  concurrency: 4
  input_len: {dist: lognormal, mean: 256, spread: 0.5, min: 16, max: 1024}
  output_len: 64
  ignore_eos: false
  dataset: shared-prefix
  text: corpus.txt
  trace: trace.jsonl
  trace_block_tokens: 256
  trace_time_scale: 0.5
  prefix_groups: 8
  prefix_len: 128
  turns: 5
  think_time: 2.5
  first_token_id: 10
scheduler:
  max_num_seqs: 64
  max_num_batched_tokens: 4096
  chunked_prefill: false
  max_model_len: 2048
goodput:
  ttft_ms: 500
  tpot_ms: 50
  e2el_ms: 2000.5
tp: 2
threads: 6
seed: 7
out: results/run1
)";
  const BenchConfig c = ParseOrDie(yaml);
  EXPECT_EQ(c.model, "preset:llama-tiny");
  EXPECT_EQ(c.weights_seed, 11u);
  EXPECT_EQ(c.strategy, "paged");
  const std::map<std::string, std::string> params = {
      {"block_size", "16"}, {"enable_prefix_caching", "true"}, {"watermark", "0.01"}};
  EXPECT_EQ(c.strategy_params, params);
  EXPECT_EQ(c.kv_memory_bytes, 64LL << 20);
  EXPECT_EQ(c.tp, 2);
  EXPECT_EQ(c.threads, 6);
  EXPECT_EQ(c.out_dir, "results/run1");

  const WorkloadSpec& w = c.workload;
  EXPECT_EQ(w.seed, 7u);
  EXPECT_EQ(w.num_requests, 200);
  EXPECT_EQ(w.arrival, ArrivalKind::kGamma);
  EXPECT_EQ(w.request_rate, 8.5);
  EXPECT_EQ(w.burstiness, 0.5);
  EXPECT_EQ(w.concurrency, 4);
  EXPECT_EQ(w.input_len.dist, LengthDist::kLognormal);
  EXPECT_EQ(w.input_len.mean, 256);
  EXPECT_EQ(w.input_len.spread, 0.5);
  EXPECT_EQ(w.input_len.min, 16);
  EXPECT_EQ(w.input_len.max, 1024);
  EXPECT_EQ(w.output_len.dist, LengthDist::kFixed);
  EXPECT_EQ(w.output_len.mean, 64);
  EXPECT_EQ(w.output_len.spread, 0);
  EXPECT_EQ(w.output_len.min, LengthSpec{}.min);
  EXPECT_EQ(w.output_len.max, LengthSpec{}.max);
  EXPECT_FALSE(w.ignore_eos);
  EXPECT_EQ(w.source, SourceKind::kSharedPrefix);
  EXPECT_EQ(w.text_path, "corpus.txt");
  EXPECT_EQ(w.trace_path, "trace.jsonl");
  EXPECT_EQ(w.trace_block_tokens, 256);
  EXPECT_EQ(w.trace_time_scale, 0.5);
  EXPECT_EQ(w.num_prefix_groups, 8);
  EXPECT_EQ(w.shared_prefix_len, 128);
  EXPECT_EQ(w.turns, 5);
  EXPECT_EQ(w.think_time_s, 2.5);
  EXPECT_EQ(w.first_token_id, 10);
  // Not in the YAML schema: left at their defaults.
  EXPECT_EQ(w.vocab_size, WorkloadSpec{}.vocab_size);
  EXPECT_EQ(w.max_model_len, 0);

  EXPECT_EQ(c.scheduler.max_num_seqs, 64);
  EXPECT_EQ(c.scheduler.max_num_batched_tokens, 4096);
  EXPECT_FALSE(c.scheduler.chunked_prefill);
  EXPECT_EQ(c.scheduler.max_model_len, 2048);
  EXPECT_EQ(c.slo.ttft_ms, 500);
  EXPECT_EQ(c.slo.tpot_ms, 50);
  EXPECT_EQ(c.slo.e2el_ms, 2000.5);
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
}

TEST(BenchConfigYamlTest, FlowStyleAsInTheHeader) {
  const BenchConfig c = ParseOrDie(
      "model: {preset: llama-tiny}\n"
      "strategy: {name: paged, block_size: 16}\n"
      "memory: {kv_bytes: 64MiB}\n"
      "workload: {num_requests: 200, arrival: poisson, request_rate: 8,\n"
      "           input_len: {dist: lognormal, mean: 256, spread: 0.5}, output_len: 64}\n"
      "scheduler: {max_num_seqs: 256, max_num_batched_tokens: 2048, chunked_prefill: true}\n"
      "tp: 1\n"
      "seed: 7\n");
  EXPECT_EQ(c.model, "preset:llama-tiny");
  EXPECT_EQ(c.strategy_params.at("block_size"), "16");
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kPoisson);
  EXPECT_EQ(c.workload.request_rate, 8);
  EXPECT_EQ(c.workload.input_len.dist, LengthDist::kLognormal);
  EXPECT_EQ(c.workload.input_len.spread, 0.5);
  EXPECT_EQ(c.workload.output_len.mean, 64);
  EXPECT_EQ(c.workload.seed, 7u);
  EXPECT_TRUE(c.scheduler.chunked_prefill);

  // A whole document in flow style.
  const BenchConfig d = ParseOrDie("{model: {path: /models/llama}, tp: 4, out: o}");
  EXPECT_EQ(d.model, "/models/llama");
  EXPECT_EQ(d.tp, 4);
  EXPECT_EQ(d.out_dir, "o");
}

TEST(BenchConfigYamlTest, ModelForms) {
  EXPECT_EQ(ParseOrDie("model: {path: /m/llama-3-8b}").model, "/m/llama-3-8b");
  EXPECT_EQ(ParseOrDie("model: preset:opt-tiny").model, "preset:opt-tiny");
  EXPECT_THAT(ParseError("tp: 1\nmodel: {preset: a, path: /b}\n"),
              StartsWith("bench.yaml:2: key 'model': give exactly one of 'preset'"));
  EXPECT_THAT(ParseError("model: {weights_seed: 3}"),
              StartsWith("bench.yaml:1: key 'model': give exactly one of"));
  EXPECT_THAT(ParseError("model:\n  preset: [a]\n"),
              StartsWith("bench.yaml:2: key 'model.preset': expected a string, found a list"));
}

TEST(BenchConfigYamlTest, StrategyFormsAndParamsAsWritten) {
  BenchConfig c = ParseOrDie("strategy: streaming_llm");
  EXPECT_EQ(c.strategy, "streaming_llm");
  EXPECT_TRUE(c.strategy_params.empty());

  c = ParseOrDie("strategy: {name: h2o, heavy_ratio: 0.10, budget: 1e3, swap: yes, "
                 "preemption_mode: swap, note: 'a b'}");
  EXPECT_EQ(c.strategy, "h2o");
  const std::map<std::string, std::string> params = {{"heavy_ratio", "0.10"},
                                                     {"budget", "1e3"},
                                                     {"swap", "yes"},
                                                     {"preemption_mode", "swap"},
                                                     {"note", "a b"}};
  EXPECT_EQ(c.strategy_params, params);

  // A strategy in the text replaces the earlier strategy's parameters.
  ASSERT_TRUE(ParseBenchConfigYaml("strategy: {name: paged}", "x", &c).ok());
  EXPECT_EQ(c.strategy, "paged");
  EXPECT_TRUE(c.strategy_params.empty());

  EXPECT_THAT(ParseError("strategy: {block_size: 16}"),
              StartsWith("bench.yaml:1: key 'strategy': missing 'name'"));
  EXPECT_THAT(ParseError("strategy:\n  name: paged\n  block_size: [16, 32]\n"),
              StartsWith("bench.yaml:3: key 'strategy.block_size': expected a scalar parameter "
                         "value, found a list"));
}

TEST(BenchConfigYamlTest, MemorySizes) {
  EXPECT_EQ(ParseOrDie("memory: {kv_bytes: 1.5GiB}").kv_memory_bytes, 1610612736);
  EXPECT_EQ(ParseOrDie("memory: {kv_bytes: 4096}").kv_memory_bytes, 4096);
  const std::string error = ParseError("memory:\n  kv_bytes: lots\n");
  EXPECT_THAT(error, StartsWith("bench.yaml:2: key 'memory.kv_bytes': 'lots' is not a byte size"));
}

TEST(BenchConfigYamlTest, EnumErrorNamesFileLineKeyAndAllowedValues) {
  EXPECT_EQ(ParseError("workload:\n"
                       "  num_requests: 10\n"
                       "  input_len: {dist: zipf, mean: 10}\n"),
            "bench.yaml:3: key 'workload.input_len.dist': found 'zipf', allowed: fixed, "
            "uniform, normal, lognormal");
  EXPECT_EQ(ParseError("workload: {arrival: poison}"),
            "bench.yaml:1: key 'workload.arrival': found 'poison', allowed: all, poisson, "
            "gamma, constant, closed, trace");
  EXPECT_EQ(ParseError("\n\nworkload:\n  dataset: sharegpt\n"),
            "bench.yaml:4: key 'workload.dataset': found 'sharegpt', allowed: random, text, "
            "trace, shared-prefix, multi-turn");
}

TEST(BenchConfigYamlTest, UnknownKeysListTheAllowedOnes) {
  EXPECT_EQ(ParseError("workload:\n  num_requests: 5\n  rate: 3\n"),
            "bench.yaml:3: unknown key 'workload.rate'; allowed: num_requests, arrival, "
            "request_rate, burstiness, concurrency, input_len, output_len, ignore_eos, dataset, "
            "text, trace, trace_block_tokens, trace_time_scale, prefix_groups, prefix_len, "
            "turns, think_time, first_token_id");
  EXPECT_EQ(ParseError("tp: 1\nmodle: {preset: x}\n"),
            "bench.yaml:2: unknown key 'modle'; allowed: model, strategy, memory, workload, "
            "scheduler, goodput, tp, nodes, threads, seed, out, request_rate, backend, gpu");
  EXPECT_THAT(ParseError("workload: {input_len: {mean: 3, sigma: 1}}"),
              StartsWith("bench.yaml:1: unknown key 'workload.input_len.sigma'; allowed: dist, "
                         "mean, spread, min, max"));
  EXPECT_THAT(ParseError("memory: {kv: 1}"), HasSubstr("unknown key 'memory.kv'; allowed: kv_bytes"));
  EXPECT_THAT(ParseError("goodput: {ttft: 1}"),
              HasSubstr("unknown key 'goodput.ttft'; allowed: ttft_ms, tpot_ms, e2el_ms"));
  // preemption_mode belongs to the strategy; the error says so.
  const std::string error = ParseError("scheduler:\n  preemption_mode: swap\n");
  EXPECT_THAT(error, StartsWith("bench.yaml:2: unknown key 'scheduler.preemption_mode'; allowed: "
                                "max_num_seqs, max_num_batched_tokens, chunked_prefill, "
                                "max_model_len"));
  EXPECT_THAT(error, HasSubstr("preemption_mode is a strategy parameter"));
}

TEST(BenchConfigYamlTest, WrongTypes) {
  EXPECT_EQ(ParseError("workload:\n  num_requests: many\n"),
            "bench.yaml:2: key 'workload.num_requests': expected an integer, found 'many'");
  EXPECT_EQ(ParseError("workload: {num_requests: 2.5}"),
            "bench.yaml:1: key 'workload.num_requests': expected an integer, found '2.5'");
  EXPECT_EQ(ParseError("workload:\n  burstiness: [1, 2]\n"),
            "bench.yaml:2: key 'workload.burstiness': expected a number, found a list");
  EXPECT_EQ(ParseError("workload: {think_time: nan}"),
            "bench.yaml:1: key 'workload.think_time': expected a number, found 'nan'");
  EXPECT_EQ(ParseError("scheduler: {chunked_prefill: maybe}"),
            "bench.yaml:1: key 'scheduler.chunked_prefill': expected true or false, found "
            "'maybe'");
  EXPECT_EQ(ParseError("tp:\nout: x\n"), "bench.yaml:1: key 'tp': expected an integer, found nothing");
  EXPECT_EQ(ParseError("workload: 3"), "bench.yaml:1: key 'workload': expected a map, found '3'");
  EXPECT_EQ(ParseError("seed: -1"), "bench.yaml:1: key 'seed': expected an integer >= 0, found '-1'");
  EXPECT_THAT(ParseError("tp: 3000000000"),
              StartsWith("bench.yaml:1: key 'tp': expected an integer in [-2147483648, "
                         "2147483647], found '3000000000'"));
  EXPECT_EQ(ParseError("- a\n- b\n"),
            "bench.yaml:1: expected a map with the keys model, strategy, memory, workload, "
            "scheduler, goodput, tp, nodes, threads, seed, out, request_rate, backend, gpu, found a list");
  EXPECT_EQ(ParseError("goodput: {ttft_ms: 0}"),
            "bench.yaml:1: key 'goodput.ttft_ms': objectives must be > 0 ms, found '0'");
}

TEST(BenchConfigYamlTest, RequestRateMustBePositiveOrInf) {
  EXPECT_EQ(ParseError("workload:\n  request_rate: -2\n"),
            "bench.yaml:2: key 'workload.request_rate': request_rate must be > 0 or inf, "
            "found '-2'");
  EXPECT_EQ(ParseError("request_rate: 0"),
            "bench.yaml:1: key 'request_rate': request_rate must be > 0 or inf, found '0'");
  EXPECT_EQ(ParseError("request_rate: fast"),
            "bench.yaml:1: key 'request_rate': expected a number or inf, found 'fast'");
}

TEST(BenchConfigYamlTest, RateAndArrivalDefaults) {
  // Finite rate, no arrival: poisson.
  BenchConfig c = ParseOrDie("workload: {request_rate: 4}");
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kPoisson);
  EXPECT_EQ(c.workload.request_rate, 4);
  // No rate at all: everything at t=0.
  EXPECT_EQ(ParseOrDie("workload: {num_requests: 3}").workload.arrival, ArrivalKind::kAllAtOnce);
  // inf (any spelling): all at once, rate 0.
  for (const char* inf : {"inf", "'inf'", ".inf", "Inf"}) {
    c = ParseOrDie(std::string("workload: {request_rate: ") + inf + "}");
    EXPECT_EQ(c.workload.arrival, ArrivalKind::kAllAtOnce) << inf;
    EXPECT_EQ(c.workload.request_rate, 0) << inf;
  }
  // An explicit arrival is kept with a finite rate.
  c = ParseOrDie("workload: {arrival: constant, request_rate: 2}");
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kConstant);
  EXPECT_EQ(c.workload.request_rate, 2);
  // inf overrides rated arrivals (a sweep's inf point), not closed loop or trace.
  EXPECT_EQ(ParseOrDie("workload: {arrival: gamma, request_rate: inf}").workload.arrival,
            ArrivalKind::kAllAtOnce);
  EXPECT_EQ(ParseOrDie("workload: {arrival: closed, concurrency: 2, request_rate: inf}")
                .workload.arrival,
            ArrivalKind::kClosedLoop);
  // The top-level rate (put there by sweeps) wins over the workload's.
  c = ParseOrDie("workload: {arrival: poisson, request_rate: 2}\nrequest_rate: 16\n");
  EXPECT_EQ(c.workload.request_rate, 16);
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kPoisson);
  c = ParseOrDie("request_rate: inf\nworkload: {request_rate: 2}\n");
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kAllAtOnce);
  // Overlaying a rate on a parsed config: a rated arrival stays, inf turns it to all.
  c = ParseOrDie("workload: {arrival: gamma, burstiness: 0.5, request_rate: 1}");
  ASSERT_TRUE(ParseBenchConfigYaml("request_rate: 8", "sweep", &c).ok());
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kGamma);
  EXPECT_EQ(c.workload.request_rate, 8);
  ASSERT_TRUE(ParseBenchConfigYaml("request_rate: inf", "sweep", &c).ok());
  EXPECT_EQ(c.workload.arrival, ArrivalKind::kAllAtOnce);
}

TEST(BenchConfigYamlTest, MalformedYamlReportsTheLine) {
  const std::string error = ParseError("tp: 1\nworkload: {num_requests: 3\nout: x\n");
  EXPECT_THAT(error, StartsWith("bench.yaml:"));
  EXPECT_THAT(error, HasSubstr("malformed YAML: "));
  const std::string tabs = ParseError("model:\n  preset: a\n   path: b\n");
  EXPECT_THAT(tabs, StartsWith("bench.yaml:3: malformed YAML: "));
  EXPECT_THAT(ParseError("a: 1\n---\nb: 2\n"),
              StartsWith("bench.yaml:2: expected one YAML document, found 2"));  // at "---"
}

// yaml-cpp 0.7's LoadAll never returns on these (engine/yaml_document.h); they must be
// refused at once.
TEST(BenchConfigYamlTest, StrayLeadingCommaIsRefusedNotLoopedOn) {
  EXPECT_THAT(ParseError(",tp: 1\n"), HasSubstr("malformed YAML"));
  EXPECT_THAT(ParseError("tp: 1\n---\n,seed: 2\n"), StartsWith("bench.yaml:"));
  BenchConfig c;
  EXPECT_TRUE(ParseBenchConfigYaml("", "empty.yaml", &c).ok());  // no document: nothing read
}

TEST(BenchConfigYamlTest, DuplicateKeysAreErrors) {
  EXPECT_EQ(ParseError("tp: 1\nseed: 2\ntp: 2\n"), "bench.yaml:3: key 'tp' is given twice");
}

TEST(BenchConfigYamlTest, AbsentKeysKeepValuesAndErrorsLeaveTheConfigUnchanged) {
  BenchConfig c = ValidConfig();
  c.strategy = "h2o";
  c.strategy_params["heavy_ratio"] = "0.2";
  c.workload.num_requests = 17;
  c.workload.input_len.dist = LengthDist::kUniform;
  c.slo.ttft_ms = 100;
  ASSERT_TRUE(ParseBenchConfigYaml("# nothing\n", "x", &c).ok());
  ASSERT_TRUE(ParseBenchConfigYaml("", "x", &c).ok());
  ASSERT_TRUE(ParseBenchConfigYaml("workload: {input_len: {mean: 99}}\ngoodput: {ttft_ms: null, "
                                   "tpot_ms: 20}\n",
                                   "x", &c)
                  .ok());
  EXPECT_EQ(c.strategy, "h2o");
  EXPECT_EQ(c.strategy_params.at("heavy_ratio"), "0.2");
  EXPECT_EQ(c.workload.num_requests, 17);
  EXPECT_EQ(c.workload.input_len.dist, LengthDist::kUniform);  // merged, not replaced
  EXPECT_EQ(c.workload.input_len.mean, 99);
  EXPECT_FALSE(c.slo.ttft_ms.has_value());
  EXPECT_EQ(c.slo.tpot_ms, 20);

  const nlohmann::json before = BenchConfigToJson(c);
  EXPECT_FALSE(ParseBenchConfigYaml("tp: 8\nstrategy: paged\nworkload: {num_requests: x}\n",
                                    "x", &c)
                   .ok());
  EXPECT_EQ(BenchConfigToJson(c), before);
}

TEST(BenchConfigYamlTest, EmptySourceStillPrefixesErrors) {
  BenchConfig c;
  absl::Status status = ParseBenchConfigYaml("tp: x", "", &c);
  EXPECT_EQ(status.message(), "<yaml>:1: key 'tp': expected an integer, found 'x'");
}

TEST(ValidateBenchConfigTest, AcceptsAValidConfigAndMaxModelLenZero) {
  BenchConfig c = ValidConfig();
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
  c.scheduler.chunked_prefill = false;
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
}

// `backend: cuda` selects the GPU engine. It is a valid configuration in any build (a
// coordinator without CUDA validates GPU trials); a binary built without CUDA refuses to
// run it, naming the key, before any work.
TEST(ValidateBenchConfigTest, BackendAndGpuOptions) {
  BenchConfig c = ValidConfig();
  ASSERT_TRUE(ParseBenchConfigYaml("backend: cuda\ngpu: {dtype: f32, cuda_graphs: true}\n",
                                   "bench.yaml", &c)
                  .ok());
  EXPECT_EQ(c.backend, "cuda");
  EXPECT_EQ(c.gpu_dtype, "f32");
  EXPECT_TRUE(c.cuda_graphs);
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
  const absl::Status st = CheckBenchConfigRunnable(c);
#if KVSCOPE_WITH_CUDA
  EXPECT_TRUE(st.ok()) << st;
#else
  EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
  EXPECT_THAT(st.message(), HasSubstr("backend: cuda"));
  EXPECT_THAT(st.message(), HasSubstr("built without CUDA"));
#endif
  EXPECT_EQ(BenchConfigToJson(c)["backend"], "cuda");
  EXPECT_EQ(BenchConfigToJson(c)["gpu"]["dtype"], "f32");
  c.backend = "tpu";
  EXPECT_THAT(ValidateBenchConfig(c).message(), HasSubstr("backend: found 'tpu', allowed: cpu, cuda"));
  c.backend = "cpu";
  c.gpu_dtype = "int8";
  EXPECT_THAT(ValidateBenchConfig(c).message(), HasSubstr("gpu.dtype"));
  EXPECT_THAT(ParseError("gpu: {dtyp: f32}"), HasSubstr("unknown key 'gpu.dtyp'; allowed: dtype, cuda_graphs"));
  // The default is the CPU, recorded in the result's config.
  EXPECT_EQ(BenchConfigToJson(ValidConfig())["backend"], "cpu");
  EXPECT_FALSE(BenchConfigToJson(ValidConfig()).contains("gpu"));
}

// `nodes`: the processes a trial's tensor-parallel group spans (a gang). Ordinary key,
// recorded in the result only when it is not 1; both backends can span processes.
TEST(ValidateBenchConfigTest, NodesSplitTheTensorParallelGroup) {
  BenchConfig c = ValidConfig();
  EXPECT_EQ(c.nodes, 1);
  EXPECT_FALSE(BenchConfigToJson(c).contains("nodes"));
  ASSERT_TRUE(ParseBenchConfigYaml("tp: 4\nnodes: 2\n", "bench.yaml", &c).ok());
  EXPECT_EQ(c.tp, 4);
  EXPECT_EQ(c.nodes, 2);
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
  EXPECT_TRUE(CheckBenchConfigRunnable(c).ok()) << CheckBenchConfigRunnable(c);
  EXPECT_EQ(BenchConfigToJson(c)["nodes"], 2);
  c.nodes = 4;  // one rank per process
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
  EXPECT_THAT(ParseError("nodes: two"), HasSubstr("key 'nodes': expected an integer"));
  // A GPU gang runs wherever the GPU engine does; only a build without CUDA refuses it,
  // with the same message as any cuda config.
  c.backend = "cuda";
  EXPECT_TRUE(ValidateBenchConfig(c).ok()) << ValidateBenchConfig(c);
  const absl::Status st = CheckBenchConfigRunnable(c);
#if KVSCOPE_WITH_CUDA
  EXPECT_TRUE(st.ok()) << st;
#else
  EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
  EXPECT_THAT(st.message(), HasSubstr("built without CUDA"));
#endif
}

TEST(ValidateBenchConfigTest, RejectsEachBadField) {
  struct Case {
    const char* name;
    void (*mutate)(BenchConfig*);
    const char* message;
  };
  const Case cases[] = {
      {"empty model", [](BenchConfig* c) { c->model.clear(); }, "model"},
      {"empty strategy", [](BenchConfig* c) { c->strategy.clear(); }, "strategy"},
      {"kv memory 0", [](BenchConfig* c) { c->kv_memory_bytes = 0; }, "kv_memory_bytes"},
      {"tp 0", [](BenchConfig* c) { c->tp = 0; }, "tp must be >= 1"},
      {"nodes 0", [](BenchConfig* c) { c->nodes = 0; }, "nodes must be >= 1"},
      {"nodes not dividing tp",
       [](BenchConfig* c) {
         c->tp = 4;
         c->nodes = 3;
       },
       "nodes must divide tp (each process runs tp / nodes ranks), got nodes 3 and tp 4"},
      {"threads -1", [](BenchConfig* c) { c->threads = -1; }, "threads"},
      {"negative rate", [](BenchConfig* c) { c->workload.request_rate = -1; },
       "request_rate must be > 0 or inf"},
      {"negative rate for poisson",
       [](BenchConfig* c) {
         c->workload.arrival = ArrivalKind::kPoisson;
         c->workload.request_rate = -3;
       },
       "request_rate"},
      {"poisson without rate",
       [](BenchConfig* c) { c->workload.arrival = ArrivalKind::kPoisson; }, "rate"},
      {"num_requests 0", [](BenchConfig* c) { c->workload.num_requests = 0; }, "num_requests"},
      {"input min > max",
       [](BenchConfig* c) {
         c->workload.input_len.min = 10;
         c->workload.input_len.max = 5;
       },
       "input_len"},
      {"max_num_seqs 0", [](BenchConfig* c) { c->scheduler.max_num_seqs = 0; }, "max_num_seqs"},
      {"max_model_len 1", [](BenchConfig* c) { c->scheduler.max_model_len = 1; },
       "max_model_len"},
      {"unchunked budget below max_model_len",
       [](BenchConfig* c) {
         c->scheduler.chunked_prefill = false;
         c->scheduler.max_model_len = 4096;
       },
       "chunked prefill"},
      {"goodput 0", [](BenchConfig* c) { c->slo.tpot_ms = 0; }, "tpot_ms"},
      {"empty out", [](BenchConfig* c) { c->out_dir.clear(); }, "out"},
  };
  for (const Case& k : cases) {
    BenchConfig c = ValidConfig();
    k.mutate(&c);
    const absl::Status status = ValidateBenchConfig(c);
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << k.name << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(k.message)) << k.name;
  }
}

TEST(BenchConfigToJsonTest, EveryFieldWithEnumsAsNames) {
  const BenchConfig c = ParseOrDie(
      "model: {preset: llama-tiny, weights_seed: 3}\n"
      "strategy: {name: paged, block_size: 32}\n"
      "memory: {kv_bytes: 1MiB}\n"
      "workload: {num_requests: 9, arrival: poisson, request_rate: 2.5,\n"
      "  input_len: {dist: normal, mean: 100, spread: 10, min: 50, max: 150}, output_len: 7,\n"
      "  dataset: multi-turn, turns: 4, think_time: 0.5}\n"
      "scheduler: {max_num_seqs: 8, max_model_len: 512}\n"
      "goodput: {ttft_ms: 250}\n"
      "tp: 2\nthreads: 3\nseed: 42\nout: /tmp/r\n");
  const nlohmann::json j = BenchConfigToJson(c);
  EXPECT_EQ(j["model"], "preset:llama-tiny");
  EXPECT_EQ(j["weights_seed"], 3);
  EXPECT_EQ(j["strategy"], "paged");
  EXPECT_EQ(j["strategy_params"], nlohmann::json({{"block_size", "32"}}));
  EXPECT_EQ(j["kv_memory_bytes"], 1 << 20);
  EXPECT_EQ(j["tp"], 2);
  EXPECT_EQ(j["threads"], 3);
  EXPECT_EQ(j["seed"], 42);
  EXPECT_EQ(j["out_dir"], "/tmp/r");
  const nlohmann::json& w = j["workload"];
  EXPECT_EQ(w["num_requests"], 9);
  EXPECT_EQ(w["arrival"], "poisson");
  EXPECT_EQ(w["request_rate"], 2.5);
  EXPECT_EQ(w["input_len"], nlohmann::json({{"dist", "normal"},
                                            {"mean", 100.0},
                                            {"spread", 10.0},
                                            {"min", 50},
                                            {"max", 150}}));
  EXPECT_EQ(w["output_len"]["dist"], "fixed");
  EXPECT_EQ(w["output_len"]["mean"], 7.0);
  EXPECT_EQ(w["dataset"], "multi-turn");
  EXPECT_EQ(w["turns"], 4);
  EXPECT_EQ(w["think_time"], 0.5);
  EXPECT_EQ(w["ignore_eos"], true);
  for (const char* key :
       {"burstiness", "concurrency", "text", "trace", "trace_block_tokens", "trace_time_scale",
        "prefix_groups", "prefix_len", "random_prefix_group", "think_time_fixed", "vocab_size",
        "first_token_id", "max_model_len"}) {
    EXPECT_TRUE(w.contains(key)) << key;
  }
  EXPECT_EQ(j["scheduler"], nlohmann::json({{"max_num_seqs", 8},
                                            {"max_num_batched_tokens", 2048},
                                            {"chunked_prefill", true},
                                            {"max_model_len", 512}}));
  EXPECT_EQ(j["slo"]["ttft_ms"], 250.0);
  EXPECT_TRUE(j["slo"]["tpot_ms"].is_null());
  EXPECT_TRUE(j["slo"]["e2el_ms"].is_null());

  // Round trip, of sorts: the names in the JSON parse back to the same values.
  EXPECT_EQ(*ParseArrivalKind(w["arrival"]), c.workload.arrival);
  EXPECT_EQ(*ParseLengthDist(w["input_len"]["dist"]), c.workload.input_len.dist);
  EXPECT_EQ(*ParseSourceKind(w["dataset"]), c.workload.source);
  BenchConfig again;
  // JSON is YAML; keys the YAML schema lacks are rejected, the rest read back the same.
  nlohmann::json subset = w;
  for (const char* key : {"random_prefix_group", "think_time_fixed", "vocab_size", "max_model_len"}) {
    subset.erase(key);
  }
  ASSERT_TRUE(ParseBenchConfigYaml("workload: " + subset.dump(), "json", &again).ok());
  EXPECT_EQ(BenchConfigToJson(again)["workload"], w);
}

TEST(BenchConfigToJsonTest, AllAtOnceRateIsInfAndDumpIsValid) {
  BenchConfig c = ValidConfig();
  const nlohmann::json j = BenchConfigToJson(c);
  EXPECT_EQ(j["workload"]["request_rate"], "inf");
  EXPECT_EQ(j["workload"]["arrival"], "all");
  EXPECT_TRUE(j["strategy_params"].is_object());
  EXPECT_EQ(nlohmann::json::parse(j.dump()), j);
}

TEST(EnumNamesTest, BothWaysAndErrorsListAllowedValues) {
  for (ArrivalKind k : {ArrivalKind::kAllAtOnce, ArrivalKind::kPoisson, ArrivalKind::kGamma,
                        ArrivalKind::kConstant, ArrivalKind::kClosedLoop, ArrivalKind::kTrace}) {
    absl::StatusOr<ArrivalKind> back = ParseArrivalKind(ArrivalKindName(k));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, k);
  }
  for (LengthDist d : {LengthDist::kFixed, LengthDist::kUniform, LengthDist::kNormal,
                       LengthDist::kLognormal}) {
    absl::StatusOr<LengthDist> back = ParseLengthDist(LengthDistName(d));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, d);
  }
  for (SourceKind s : {SourceKind::kRandom, SourceKind::kText, SourceKind::kTrace,
                       SourceKind::kSharedPrefix, SourceKind::kMultiTurn}) {
    absl::StatusOr<SourceKind> back = ParseSourceKind(SourceKindName(s));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, s);
  }
  EXPECT_EQ(ArrivalKindName(ArrivalKind::kClosedLoop), "closed");
  EXPECT_EQ(ArrivalKindName(ArrivalKind::kAllAtOnce), "all");
  EXPECT_EQ(SourceKindName(SourceKind::kSharedPrefix), "shared-prefix");
  EXPECT_EQ(LengthDistName(LengthDist::kLognormal), "lognormal");

  EXPECT_EQ(ParseArrivalKind("Poisson").status().message(),
            "unknown arrival 'Poisson'; allowed: all, poisson, gamma, constant, closed, trace");
  EXPECT_EQ(ParseLengthDist("zipf").status().message(),
            "unknown length distribution 'zipf'; allowed: fixed, uniform, normal, lognormal");
  EXPECT_EQ(ParseSourceKind("sharegpt").status().message(),
            "unknown dataset 'sharegpt'; allowed: random, text, trace, shared-prefix, "
            "multi-turn");
  EXPECT_TRUE(absl::IsInvalidArgument(ParseSourceKind("").status()));
}

}  // namespace
}  // namespace kvscope::engine
