// A seeded mutation fuzz test of ParseSweep: valid and invalid sweeps, mutated at the byte,
// token and line level, must each give either a sweep whose every trial is a valid bench
// YAML, or InvalidArgument with a message; never a crash, an exception or a hang. Runs in
// a few seconds (also under ASan+UBSan). KVSCOPE_SWEEP_FUZZ_ITERATIONS and
// KVSCOPE_SWEEP_FUZZ_SEED override the count and the seed.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "coordinator/sweep.h"
#include "engine/bench_config.h"
#include "gtest/gtest.h"

namespace kvscope::coordinator {
namespace {

const std::vector<std::string>& Corpus() {
  static const std::vector<std::string> corpus = {
      R"(name: quickstart
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
)",
      R"(name: linked
model: preset:llama-tiny
strategy: h2o
backend: cuda
max_attempts: 2
matrix:
  strategy.kv_budget: [0.1, 0.2, 0.5]
  kv_bytes: [1MiB, 2MiB, 4MiB]
  tp: [1, 2]
link: [[strategy.kv_budget, kv_bytes]]
)",
      R"(name: dotted
model:
  preset: opt-tiny
  weights_seed: 3
workload:
  num_requests: 10
  input_len: 64
  output_len: {dist: uniform, mean: 32, spread: 4}
scheduler: {max_num_seqs: 8, chunked_prefill: false, max_num_batched_tokens: 4096}
goodput: {ttft_ms: 100, tpot_ms: ~}
matrix:
  workload.input_len.dist: [fixed, normal]
  scheduler.max_num_seqs: [1, 2, 4]
  goodput.e2el_ms: [null, 1000]
  backend: [cpu, cuda]
)",
      R"(name: bad
model: {preset: llama-tiny, path: /x}
matrix:
  rate: [1]
  tp: []
link: [[tp, rate], 3]
out: /tmp
)",
      "name: anchors\nmodel: &m {preset: llama-tiny}\nmatrix:\n  model: [*m, *m]\n"
      "  workload: [{num_requests: 1}, {<<: *m}]\n",
      "name: 'quoted '' x'\nmodel: \"preset:llama-tiny\"\nworkload: {dataset: \"text\", "
      "text: \"a\\tb\\u00e9\\x01\"}\nmatrix: {request_rate: [.inf, \"8\", 1e-3, 0x10]}\n",
  };
  return corpus;
}

const std::vector<std::string>& Tokens() {
  static const std::vector<std::string> tokens = {
      "matrix",
      "link",
      "repeats",
      "seed",
      "name",
      "tp",
      "strategy",
      "model",
      "kv_bytes",
      "backend",
      "workload",
      "request_rate",
      "workload.output_len",
      "strategy.kv_budget",
      "-1",
      "0",
      "1e308",
      "nan",
      "inf",
      "~",
      "null",
      "&a ",
      "*a",
      "<<: ",
      "!!str ",
      "? ",
      "- ",
      "{",
      "}",
      "[",
      "]",
      ",",
      ": ",
      "\n  ",
      "\n- ",
      "'",
      "\"",
      "#",
      "|\n  x\n",
      ">-\n  y\n",
      "---\n",
      "...\n",
      "%YAML 1.2\n",
      "\t",
      "\\",
      "18446744073709551616",
      "99999999999",
      "paged",
      "h2o",
      "streaming",
      "64MiB",
      "preset:llama-tiny",
      "cuda",
      "\xff\xfe",
      std::string(5000, 'a'),
      "[[[[[[[[[[[[",
      "{a: {b: {c: {d: ",
  };
  return tokens;
}

std::string Mutate(std::string s, std::mt19937_64& rng) {
  auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  const int rounds = 1 + static_cast<int>(rng() % 4);
  for (int r = 0; r < rounds; ++r) {
    switch (rng() % 8) {
      case 0:  // flip a byte
        if (!s.empty()) s[pick(s.size())] ^= static_cast<char>(1 << (rng() % 8));
        break;
      case 1: {  // insert a YAML-significant character
        static const std::string kChars = "{}[],:-#&*!|>'\"%@? \n\t0123456789abcxyz.~";
        s.insert(pick(s.size() + 1), 1, kChars[pick(kChars.size())]);
        break;
      }
      case 2: {  // delete a range
        const size_t at = pick(s.size() + 1);
        s.erase(at, pick(16) + 1);
        break;
      }
      case 3: {  // insert a token
        s.insert(pick(s.size() + 1), Tokens()[pick(Tokens().size())]);
        break;
      }
      case 4: {  // duplicate a range
        const size_t at = pick(s.size() + 1);
        const std::string piece = s.substr(at, pick(40) + 1);
        s.insert(pick(s.size() + 1), piece);
        break;
      }
      case 5: {  // splice a line of another corpus entry
        const std::string& other = Corpus()[pick(Corpus().size())];
        const size_t from = pick(other.size() + 1);
        const size_t end = other.find('\n', from);
        const std::string line =
            other.substr(from, end == std::string::npos ? end : end - from + 1);
        s.insert(pick(s.size() + 1), line);
        break;
      }
      case 6: {  // repeat a line many times
        const size_t from = pick(s.size() + 1);
        const size_t end = s.find('\n', from);
        const std::string line = s.substr(from, end == std::string::npos ? end : end - from + 1);
        std::string many;
        for (int i = 0; i < 50 && many.size() < 4096; ++i) many += line;
        s.insert(from, many);
        break;
      }
      default: {  // replace a value after ": " with a token
        const size_t colon = s.find(": ", pick(s.size() + 1));
        if (colon != std::string::npos) {
          const size_t end = s.find_first_of(",}\n", colon + 2);
          s.replace(colon + 2, end == std::string::npos ? std::string::npos : end - colon - 2,
                    Tokens()[pick(Tokens().size())]);
        }
        break;
      }
    }
  }
  return s;
}

int Iterations() {
  const char* env = std::getenv("KVSCOPE_SWEEP_FUZZ_ITERATIONS");
  return env != nullptr ? std::atoi(env) : 3000;
}

TEST(SweepFuzzTest, NeverCrashesAndEitherParsesOrExplains) {
  const char* seed_env = std::getenv("KVSCOPE_SWEEP_FUZZ_SEED");
  std::mt19937_64 rng(seed_env != nullptr ? std::strtoull(seed_env, nullptr, 10) : 20261127);
  SweepLimits small;
  small.max_trials = 64;  // keeps each parse cheap; the default limits run too
  small.max_text_bytes = 16 << 10;
  int ok = 0, invalid = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < Iterations(); ++i) {
    const std::string& seed_text = Corpus()[static_cast<size_t>(rng() % Corpus().size())];
    const std::string text = (rng() % 10 == 0) ? seed_text : Mutate(seed_text, rng);
    const SweepLimits limits = (i % 4 == 0) ? SweepLimits{} : small;
    absl::StatusOr<Sweep> sweep;
    try {
      sweep = ParseSweep(text, "fuzz.yaml", limits);
    } catch (const std::exception& e) {
      FAIL() << "case " << i << " threw " << e.what() << " on:\n" << text;
    } catch (...) {
      FAIL() << "case " << i << " threw on:\n" << text;
    }
    if (sweep.ok()) {
      ++ok;
      ASSERT_FALSE(sweep->trials.empty()) << text;
      ASSERT_LE(static_cast<int64_t>(sweep->trials.size()), limits.max_trials) << text;
      // Every trial is a bench YAML the worker will accept (checked on a few).
      for (size_t t = 0; t < sweep->trials.size(); t += 1 + sweep->trials.size() / 3) {
        engine::BenchConfig config;
        const absl::Status status =
            engine::ParseBenchConfigYaml(sweep->trials[t].config_yaml, "trial", &config);
        ASSERT_TRUE(status.ok()) << status << "\nsweep:\n"
                                 << text << "\ntrial:\n"
                                 << sweep->trials[t].config_yaml;
        ASSERT_EQ(config.workload.seed, sweep->trials[t].seed);
      }
    } else {
      ++invalid;
      ASSERT_TRUE(absl::IsInvalidArgument(sweep.status())) << sweep.status() << "\n" << text;
      ASSERT_FALSE(sweep.status().message().empty()) << text;
      ASSERT_EQ(sweep.status().message().rfind("fuzz.yaml", 0), 0u) << sweep.status();
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Both outcomes are exercised.
  EXPECT_GT(ok, Iterations() / 50);
  EXPECT_GT(invalid, Iterations() / 4);
  EXPECT_LT(seconds, 60) << "the parser is too slow on some inputs";
  std::printf("fuzz: %d cases, %d parsed, %d refused, %.2f s\n", Iterations(), ok, invalid,
              seconds);
}

}  // namespace
}  // namespace kvscope::coordinator
