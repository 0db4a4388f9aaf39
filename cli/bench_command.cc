// `kvscope bench`: one benchmark run on this machine (model x KV strategy x workload).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <time.h>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/bench_gang.h"
#include "cli/commands.h"
#include "cli/flag_set.h"
#include "cli/progress.h"
#include "common/env_fingerprint.h"
#include "common/status_macros.h"
#include "common/units.h"
#include "engine/bench_config.h"
#include "engine/engine.h"
#include "engine/gang_driver.h"
#include "engine/gang_session.h"
#include "engine/metrics.h"
#include "engine/model.h"
#include "engine/model_source.h"
#include "engine/quality.h"
#include "engine/recording_kv_manager.h"
#include "engine/serving.h"
#include "engine/workload.h"
#include "kvcache/registry.h"

#if KVSCOPE_WITH_CUDA
#include "engine/cuda/gpu_engine.h"
#endif

namespace kvscope::cli {
namespace {

std::atomic<bool> g_stop{false};
std::atomic<int64_t> g_first_sigint_ns{0};

// First Ctrl-C: finish the step in flight and write what was measured. A second one more
// than a second later quits at once. (A signal sent to the process and to its process group,
// as `timeout` does, arrives twice within microseconds; that is still the first Ctrl-C.)
void OnSigint(int) {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const int64_t now = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  const int64_t first = g_first_sigint_ns.load();
  if (first == 0) {
    g_first_sigint_ns.store(now);
    g_stop.store(true);
    return;
  }
  if (now - first > 1000000000) {
    static const char kMessage[] = "\nkvscope bench: second Ctrl-C, quitting without results\n";
    (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    _exit(130);
  }
}

// --progress-file: {"requests_done":N,"requests_total":M,"elapsed_s":S}, replaced atomically
// (write FILE.tmp, then rename) at most every 0.25 s of serving time and at the end, so a
// reader (the worker daemon) never sees a partial file.
class ProgressFile {
 public:
  explicit ProgressFile(std::string path) : path_(std::move(path)) {}
  void Update(int64_t done, int64_t total, double elapsed_s, bool force) {
    if (path_.empty() || (!force && elapsed_s - last_write_s_ < 0.25)) return;
    last_write_s_ = elapsed_s;
    const std::string tmp = path_ + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << "{\"requests_done\":" << done << ",\"requests_total\":" << total
          << ",\"elapsed_s\":" << elapsed_s << "}\n";
      if (!out) return Warn();
    }
    if (std::rename(tmp.c_str(), path_.c_str()) != 0) Warn();
  }

 private:
  void Warn() {
    if (!warned_) {
      std::fprintf(stderr, "kvscope bench: cannot write --progress-file %s\n", path_.c_str());
    }
    warned_ = true;
  }
  std::string path_;
  double last_write_s_ = -1e9;
  bool warned_ = false;
};

// The test-only `fault:` key (docs/bench.md): ends the process as a crash would.
[[noreturn]] void FireFault(const engine::BenchFault& fault, int64_t finished) {
  std::fflush(stdout);
  std::fprintf(stderr, "kvscope bench: test fault '%s' after %lld finished requests\n",
               engine::FaultKindName(fault.kind).c_str(), static_cast<long long>(finished));
  std::fflush(stderr);
  switch (fault.kind) {
    case engine::FaultKind::kKill:
      std::raise(SIGKILL);
      break;
    case engine::FaultKind::kExit:
      std::_Exit(3);
    case engine::FaultKind::kAbort:
    case engine::FaultKind::kNone:
      break;
  }
  std::abort();
}

// Flag values; only flags the user gave override the YAML file.
struct BenchFlags {
  std::string config, model, strategy, kv_memory, request_rate, arrival, input_dist, output_dist;
  std::string dataset, text, trace, out, goodput, progress_file;
  std::vector<std::string> strategy_params;
  int64_t num_requests = 0, concurrency = 0, input_len = 0, output_len = 0, input_min = 0,
          input_max = 0, output_min = 0, output_max = 0, prefix_groups = 0, prefix_len = 0,
          turns = 0, seed = 0, tp = 0, nodes = 0, threads = 0, max_num_seqs = 0,
          max_num_batched_tokens = 0, max_model_len = 0, weights_seed = 0;
  double burstiness = 0, input_spread = 0, output_spread = 0, think_time = 0;
  bool no_chunked_prefill = false, no_ignore_eos = false;
  // Quality vs the full cache (engine/quality.h); not part of the YAML config.
  double quality_sample_rate = -1;  // < 0: 1 for lossy strategies, 0 otherwise
  int64_t quality_steps = 0;        // 0: the request's output length, capped at 64
  std::string perplexity_text;
  std::string calibration_text;
  GangFlags gang;  // --gang-*: this process is one of a gang's (cli/bench_gang.h)
};

absl::Status ApplyFlags(const FlagSet& flags, const BenchFlags& f, engine::BenchConfig* c) {
  auto set = [&](const char* name) { return flags.IsSet(name); };
  if (set("model")) c->model = f.model;
  if (set("weights-seed")) c->weights_seed = static_cast<uint64_t>(f.weights_seed);
  if (set("strategy") && f.strategy != c->strategy) {
    // Another strategy: parameters from the file belonged to the old one (as in YAML).
    c->strategy = f.strategy;
    c->strategy_params.clear();
  }
  for (const std::string& kv : f.strategy_params) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.first.empty() || kv.find('=') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--strategy-param expects KEY=VALUE, got '", kv, "'"));
    }
    c->strategy_params[p.first] = p.second;
  }
  if (set("kv-memory")) {
    KVSCOPE_ASSIGN_OR_RETURN(c->kv_memory_bytes, ParseBytes(f.kv_memory));
  }
  engine::WorkloadSpec& w = c->workload;
  if (set("num-requests")) w.num_requests = f.num_requests;
  if (set("request-rate")) {
    if (f.request_rate == "inf") {
      w.request_rate = 0;
      if (!set("arrival")) w.arrival = engine::ArrivalKind::kAllAtOnce;
    } else {
      double rate;
      if (!absl::SimpleAtod(f.request_rate, &rate) || !(rate > 0) || rate > 1e12) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--request-rate must be a number > 0 or inf, got '", f.request_rate, "'"));
      }
      w.request_rate = rate;
      if (!set("arrival") && w.arrival == engine::ArrivalKind::kAllAtOnce) {
        w.arrival = engine::ArrivalKind::kPoisson;
      }
    }
  }
  if (set("arrival")) {
    KVSCOPE_ASSIGN_OR_RETURN(w.arrival, engine::ParseArrivalKind(f.arrival));
  }
  if (set("request-rate") && f.request_rate == "inf" &&
      (w.arrival == engine::ArrivalKind::kPoisson || w.arrival == engine::ArrivalKind::kGamma ||
       w.arrival == engine::ArrivalKind::kConstant)) {
    w.arrival = engine::ArrivalKind::kAllAtOnce;  // an infinite rate means all at t=0
  }
  if (set("burstiness")) w.burstiness = f.burstiness;
  if (set("concurrency")) w.concurrency = static_cast<int32_t>(f.concurrency);
  auto length = [&](const char* prefix, int64_t value, const std::string& dist, double spread,
                    int64_t min, int64_t max, engine::LengthSpec* spec) -> absl::Status {
    const std::string p = prefix;
    if (set((p + "-len").c_str())) {
      spec->mean = static_cast<double>(value);
      if (!set((p + "-dist").c_str())) spec->dist = engine::LengthDist::kFixed;
    }
    if (set((p + "-dist").c_str())) {
      KVSCOPE_ASSIGN_OR_RETURN(spec->dist, engine::ParseLengthDist(dist));
    }
    if (set((p + "-spread").c_str())) spec->spread = spread;
    if (set((p + "-min").c_str())) spec->min = min;
    if (set((p + "-max").c_str())) spec->max = max;
    return absl::OkStatus();
  };
  KVSCOPE_RETURN_IF_ERROR(length("input", f.input_len, f.input_dist, f.input_spread, f.input_min,
                                 f.input_max, &w.input_len));
  KVSCOPE_RETURN_IF_ERROR(length("output", f.output_len, f.output_dist, f.output_spread,
                                 f.output_min, f.output_max, &w.output_len));
  if (set("dataset")) {
    KVSCOPE_ASSIGN_OR_RETURN(w.source, engine::ParseSourceKind(f.dataset));
  }
  if (set("text")) w.text_path = f.text;
  if (set("trace")) w.trace_path = f.trace;
  if (set("prefix-groups")) w.num_prefix_groups = static_cast<int32_t>(f.prefix_groups);
  if (set("prefix-len")) w.shared_prefix_len = f.prefix_len;
  if (set("turns")) w.turns = static_cast<int32_t>(f.turns);
  if (set("think-time")) w.think_time_s = f.think_time;
  if (set("seed")) w.seed = static_cast<uint64_t>(f.seed);
  if (set("no-ignore-eos") || (set("ignore-eos") && f.no_ignore_eos)) w.ignore_eos = false;
  if (set("out")) c->out_dir = f.out;
  if (set("tp")) c->tp = static_cast<int32_t>(f.tp);
  if (set("nodes")) c->nodes = static_cast<int32_t>(f.nodes);
  if (set("threads")) c->threads = static_cast<int32_t>(f.threads);
  engine::SchedulerOptions& s = c->scheduler;
  if (set("max-num-seqs")) s.max_num_seqs = static_cast<int32_t>(f.max_num_seqs);
  if (set("max-num-batched-tokens")) s.max_num_batched_tokens = f.max_num_batched_tokens;
  if (set("no-chunked-prefill")) s.chunked_prefill = !f.no_chunked_prefill;
  if (set("max-model-len")) s.max_model_len = f.max_model_len;
  if (set("goodput")) {
    for (absl::string_view part : absl::StrSplit(f.goodput, ',', absl::SkipWhitespace())) {
      std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits(':', 1));
      double ms;
      if (!absl::SimpleAtod(kv.second, &ms) || !(ms > 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--goodput expects ttft:MS,tpot:MS,e2el:MS with MS > 0, got '", part, "'"));
      }
      if (kv.first == "ttft") {
        c->slo.ttft_ms = ms;
      } else if (kv.first == "tpot") {
        c->slo.tpot_ms = ms;
      } else if (kv.first == "e2el") {
        c->slo.e2el_ms = ms;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--goodput: unknown objective '", kv.first, "' (ttft, tpot, e2el)"));
      }
    }
  }
  return absl::OkStatus();
}

// Runs the benchmark; returns the process exit code after printing errors.
absl::StatusOr<int> Run(engine::BenchConfig c, const BenchFlags& f) {
  KVSCOPE_RETURN_IF_ERROR(engine::ValidateBenchConfig(c));
  KVSCOPE_RETURN_IF_ERROR(engine::CheckBenchConfigRunnable(c));
  KVSCOPE_RETURN_IF_ERROR(CheckGangFlags(f.gang, c));
  const bool gang_driver = f.gang.enabled && f.gang.rank == 0;
  const bool gang_follower = f.gang.enabled && f.gang.rank > 0;
  engine::BenchQualityOptions quality;
  quality.sample_rate = f.quality_sample_rate;
  quality.steps = static_cast<int32_t>(std::clamp<int64_t>(f.quality_steps, -1, INT32_MAX));
  KVSCOPE_RETURN_IF_ERROR(engine::ValidateBenchQualityOptions(quality));
  // Strategy name and parameters are checked before the model is loaded.
  KVSCOPE_RETURN_IF_ERROR(kvcache::ParseStrategyParams(c.strategy, c.strategy_params).status());
  // A gang's driver publishes the rendezvous blob first, so that the followers can start
  // joining while every process loads the model; they all must have joined by the deadline.
  std::unique_ptr<engine::GangDriverSession> gang_session;
  const engine::Deadline gang_deadline = engine::DeadlineIn(f.gang.timeout_s);
  if (gang_driver) {
    KVSCOPE_ASSIGN_OR_RETURN(gang_session,
                             engine::GangDriverSession::Listen(LayoutOf(f.gang, c),
                                                               f.gang.listen_host,
                                                               f.gang.rendezvous_file));
    std::printf("kvscope bench: gang driver, rendezvous %s in %s\n", gang_session->blob().c_str(),
                f.gang.rendezvous_file.c_str());
    std::fflush(stdout);
  }
  KVSCOPE_ASSIGN_OR_RETURN(engine::LoadedModel model,
                           engine::LoadModel(c.model, {c.weights_seed, 0}));
  const engine::ModelConfig& mc = model.weights->config;
  if (!f.perplexity_text.empty()) {
    std::ifstream in(f.perplexity_text);
    std::stringstream text;
    if (!in || !(text << in.rdbuf())) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read --perplexity-text ", f.perplexity_text));
    }
    if (model.tokenizer == nullptr) {
      return absl::InvalidArgumentError("--perplexity-text needs a model with a tokenizer");
    }
    KVSCOPE_ASSIGN_OR_RETURN(quality.perplexity_ids, model.tokenizer->Encode(text.str()));
    if (quality.perplexity_ids.size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("--perplexity-text ", f.perplexity_text, " has fewer than 2 tokens"));
    }
  }
  KVSCOPE_RETURN_IF_ERROR(engine::ValidateTensorParallelSize(mc, c.tp));
  if (c.scheduler.max_model_len == 0) c.scheduler.max_model_len = mc.max_position_embeddings;
  if (c.scheduler.max_model_len > mc.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("max_model_len ", c.scheduler.max_model_len,
                                                   " exceeds the model's context of ",
                                                   mc.max_position_embeddings));
  }
  KVSCOPE_RETURN_IF_ERROR(engine::ValidateSchedulerOptions(c.scheduler));
  c.workload.vocab_size = mc.vocab_size;
  c.workload.max_model_len = c.scheduler.max_model_len;
  // Followers replay the driver's steps: they build no workload.
  std::vector<engine::RequestSpec> workload;
  if (!gang_follower) {
    KVSCOPE_ASSIGN_OR_RETURN(workload, engine::BuildWorkload(c.workload, model.tokenizer.get()));
  }

  kvcache::KvManagerContext context{engine::KvGeometryFor(mc, c.tp), c.kv_memory_bytes,
                                    c.scheduler.max_model_len};
  if (!f.calibration_text.empty()) {
    std::ifstream in(f.calibration_text);
    std::stringstream text;
    if (!in || !(text << in.rdbuf())) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot read --calibration-text ", f.calibration_text));
    }
    if (model.tokenizer == nullptr) {
      return absl::InvalidArgumentError(
          "--calibration-text needs a model with a tokenizer (presets calibrate on seeded "
          "random prompts: strategy params calibration_tokens, calibration_seed)");
    }
    KVSCOPE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, model.tokenizer->Encode(text.str()));
    if (ids.size() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("--calibration-text ", f.calibration_text, " has fewer than 2 tokens"));
    }
    context.calibration_ids = std::make_shared<const std::vector<int32_t>>(std::move(ids));
  }
  // The GPU engine keeps the K/V in its device pool: its rank caches keep bookkeeping only.
  // (The quality check below builds its own managers from `context`.)
  kvcache::KvManagerContext serving_context = context;
  serving_context.host_kv_storage = c.backend != "cuda";
  if (gang_follower) {
    return RunGangFollowerProcess(f.gang, c, model.weights, serving_context);
  }
  KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<kvcache::KvManager> kv,
                           kvcache::CreateKvManager(c.strategy, c.strategy_params, serving_context));
  // A gang's driver records the manager calls its followers replay.
  engine::RecordingKvManager* recording = nullptr;
  if (gang_driver) {
    auto wrapped = std::make_unique<engine::RecordingKvManager>(std::move(kv));
    recording = wrapped.get();
    kv = std::move(wrapped);
  }
  int64_t smallest = INT64_MAX;
  for (const engine::RequestSpec& r : workload) {
    smallest = std::min<int64_t>(smallest, kv->PeakTokens({r.id, r.prompt, r.output_len}));
  }
  if (smallest > kv->CapacityTokens()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--kv-memory ", FormatBytes(c.kv_memory_bytes), " holds ", kv->CapacityTokens(),
        " tokens with ", c.strategy, ", but the smallest request needs ", smallest,
        " (prompt + output); raise --kv-memory"));
  }

  kvcache::KvManager* manager = kv.get();
  // The forward pass: the CPU engine, or (backend: cuda) the GPU engine, whose device KV pool
  // takes the strategy's blocks and mirrors each plan's block copies.
  std::unique_ptr<engine::Engine> eng;
  std::unique_ptr<engine::GangDriver> gang;
  engine::StepForward forward;
#if KVSCOPE_WITH_CUDA
  std::unique_ptr<engine::cuda::GpuEngine> gpu;
#endif
  if (c.backend == "cuda") {
#if KVSCOPE_WITH_CUDA
    if (gang_driver) {
      // A GPU gang: this process runs ranks [0, tp / nodes); the data plane (NCCL or
      // host-staged over the gang's TCP communicators) is agreed with the followers.
      std::printf("kvscope bench: gang driver waiting for %d follower process(es)\n",
                  c.nodes - 1);
      std::fflush(stdout);
      KVSCOPE_ASSIGN_OR_RETURN(
          engine::GangMembership membership,
          gang_session->Gather(GangFingerprint(c, serving_context), gang_deadline,
                               engine::TcpCommOptions{}));
      KVSCOPE_ASSIGN_OR_RETURN(gpu, CreateGpuGangEngine(c, LayoutOf(f.gang, c), &membership,
                                                        model.weights, manager,
                                                        f.gang.timeout_s));
      gang = std::make_unique<engine::GangDriver>(gpu.get(), recording,
                                                  std::move(membership.followers),
                                                  engine::GangDriverOptions{});
      engine::GangDriver* driver = gang.get();
      forward = [driver](absl::Span<const engine::SeqInput> batch,
                         const kvcache::StepPlan& plan) { return driver->Forward(batch, &plan); };
    } else {
      KVSCOPE_ASSIGN_OR_RETURN(engine::cuda::GpuEngineOptions g,
                               GpuEngineOptionsFor(c, manager));
      for (int r = 0; r < c.tp; ++r) g.devices.push_back(r);
      g.comm =
          c.tp > 1 ? engine::cuda::GpuCommKind::kNccl : engine::cuda::GpuCommKind::kHostStaged;
      KVSCOPE_ASSIGN_OR_RETURN(gpu, engine::cuda::GpuEngine::Create(model.weights, g));
      engine::cuda::GpuEngine* gpu_engine = gpu.get();
      forward = [gpu_engine](absl::Span<const engine::SeqInput> batch,
                             const kvcache::StepPlan& plan)
          -> absl::StatusOr<engine::ForwardOutput> {
        KVSCOPE_RETURN_IF_ERROR(gpu_engine->ApplyPlan(plan));
        return gpu_engine->Forward(batch);
      };
    }
    for (const engine::cuda::GpuMemoryReport& m : gpu->MemoryReports()) {
      std::printf("kvscope bench: GPU %s\n", m.Describe().c_str());
    }
#else
    return absl::InvalidArgumentError(
        "backend: cuda, but this kvscope was built without CUDA (configure with "
        "-DKVSCOPE_CUDA=ON)");
#endif
  } else {
    engine::EngineOptions options;
    options.tp_size = c.tp;
    options.num_threads = c.threads;
    options.kv_factory = [manager](const kvcache::KvShape&, int rank) {
      return manager->CreateRankCache(rank);
    };
    engine::GangMembership membership;
    if (gang_driver) {
      std::printf("kvscope bench: gang driver waiting for %d follower process(es)\n",
                  c.nodes - 1);
      std::fflush(stdout);
      KVSCOPE_ASSIGN_OR_RETURN(
          membership, gang_session->Gather(GangFingerprint(c, serving_context), gang_deadline,
                                           engine::TcpCommOptions{}));
      options.local_ranks = c.tp / c.nodes;
      std::vector<std::unique_ptr<engine::Communicator>>* comms = &membership.comms;
      options.comm_factory =
          [comms](int rank) -> absl::StatusOr<std::unique_ptr<engine::Communicator>> {
        return std::move((*comms)[rank]);
      };
    }
    KVSCOPE_ASSIGN_OR_RETURN(eng, engine::Engine::Create(model.weights, options));
    engine::Engine* cpu_engine = eng.get();
    if (gang_driver) {
      gang = std::make_unique<engine::GangDriver>(cpu_engine, recording,
                                                  std::move(membership.followers),
                                                  engine::GangDriverOptions{});
      engine::GangDriver* driver = gang.get();
      forward = [driver](absl::Span<const engine::SeqInput> batch, const kvcache::StepPlan&) {
        return driver->Forward(batch);
      };
    } else {
      forward = [cpu_engine](absl::Span<const engine::SeqInput> batch,
                             const kvcache::StepPlan&) { return cpu_engine->Forward(batch); };
    }
  }

  std::printf("kvscope bench: %s, strategy %s, KV %s (%lld tokens), %zu requests, tp=%d\n",
              c.model.c_str(), c.strategy.c_str(), FormatBytes(c.kv_memory_bytes).c_str(),
              static_cast<long long>(kv->CapacityTokens()), workload.size(), c.tp);
  std::fflush(stdout);
  ProgressReporter progress("requests", isatty(STDERR_FILENO) == 1);
  engine::ServingOptions serving;
  serving.scheduler = c.scheduler;
  serving.arrival = c.workload.arrival;
  serving.concurrency = c.workload.concurrency;
  serving.ignore_eos = c.workload.ignore_eos;
  serving.eos_ids = mc.eos_token_ids;
  serving.stop = &g_stop;
  ProgressFile progress_file(f.progress_file);
  const int64_t num_requests = static_cast<int64_t>(workload.size());
  progress_file.Update(0, num_requests, 0, /*force=*/true);
  const engine::BenchFault fault = c.fault;
  if (fault.kind != engine::FaultKind::kNone && fault.exit_after_requests == 0) {
    FireFault(fault, 0);
  }
  serving.on_progress = [&](const engine::ServingProgress& p) {
    progress.Update(p.finished, p.total, p.elapsed_s);
    progress_file.Update(p.finished, p.total, p.elapsed_s, p.finished == p.total);
    if (fault.kind != engine::FaultKind::kNone && p.finished >= fault.exit_after_requests) {
      FireFault(fault, p.finished);
    }
  };
  engine::ServingResult run = engine::RunServing(forward, *kv, workload, serving);
  progress.Finish();
  // Followers exit 0 on "done"; after an incomplete run they see the driver go away instead.
  if (gang != nullptr && run.complete) {
    const absl::Status finished = gang->Finish();
    if (!finished.ok()) {
      std::fprintf(stderr, "kvscope bench: %s\n", std::string(finished.message()).c_str());
    }
  }

  engine::ResultDocument doc;
  doc.config = engine::BenchConfigToJson(c);
  doc.config["strategy_params_resolved"] =
      kvcache::ParseStrategyParams(c.strategy, c.strategy_params)->values();
  doc.config["kv_capacity_tokens"] = kv->CapacityTokens();
  doc.environment = EnvironmentFingerprint(static_cast<int64_t>(std::time(nullptr)));
#if KVSCOPE_WITH_CUDA
  // Device memory (weights, KV pool, workspace, the plan), pinned host memory, PCIe bytes.
  if (gpu != nullptr) doc.environment["gpu_memory"] = gpu->MemoryJson();
#endif
  const double target = c.workload.arrival == engine::ArrivalKind::kAllAtOnce ||
                                c.workload.arrival == engine::ArrivalKind::kClosedLoop
                            ? 0.0
                            : c.workload.request_rate;
  doc.summary = engine::Summarize(run.requests, run.steps, target, c.slo);
  engine::ApplyKvCounters(kv->Counters(), &doc.summary);
  doc.steps = std::move(run.steps);
  doc.requests = std::move(run.requests);
  doc.complete = run.complete;
  doc.status_message = run.status_message;
  // Quality against the full cache (engine/quality.h), measured after the timed run: on the
  // GPU for `backend: cuda` (the run's engine goes first, the checks build their own on the
  // same devices), on the CPU otherwise and in a gang's driver (its devices may be fewer
  // than tp).
#if KVSCOPE_WITH_CUDA
  if (gpu != nullptr && !gang_driver && !g_stop.load()) {
    forward = nullptr;
    gpu.reset();
    KVSCOPE_ASSIGN_OR_RETURN(engine::cuda::GpuEngineOptions g, GpuEngineOptionsFor(c, manager));
    for (int r = 0; r < c.tp; ++r) g.devices.push_back(r);
    g.comm =
        c.tp > 1 ? engine::cuda::GpuCommKind::kNccl : engine::cuda::GpuCommKind::kHostStaged;
    // The replays' longest sequence (MeasureBenchQuality: the context, plus block slack).
    quality.engine_factory =
        engine::cuda::GpuQualityEngineFactory(g, c.scheduler.max_model_len + 64);
    quality.host_kv_storage = false;
  }
#endif
  if (!g_stop.load()) {
    quality.seed = c.workload.seed;
    quality.num_threads = c.threads;
    KVSCOPE_ASSIGN_OR_RETURN(
        const engine::BenchQualityReport q,
        engine::MeasureBenchQuality(model.weights, c.strategy, c.strategy_params, context,
                                    workload, quality, &doc.requests));
    for (const std::string& w : q.warnings) {
      std::fprintf(stderr, "kvscope bench: quality check skipped: %s\n", w.c_str());
    }
    if (!q.perplexity_error.empty()) {
      std::fprintf(stderr, "kvscope bench: no strategy perplexity: %s\n",
                   q.perplexity_error.c_str());
    }
    engine::ApplyQualityToSummary(doc.requests, q, &doc.summary);
    doc.config["quality"] = {{"sample_rate", q.sample_rate},
                             {"steps", quality.steps},
                             {"sampled_requests", q.sampled},
                             {"measured_requests", q.measured},
                             {"perplexity_text", f.perplexity_text},
                             {"perplexity_tokens", quality.perplexity_ids.size()},
                             {"perplexity_error", q.perplexity_error}};
  }
  KVSCOPE_RETURN_IF_ERROR(engine::WriteResult(c.out_dir, doc));
  std::fputs(engine::FormatSummaryTable(doc.summary).c_str(), stdout);
  std::printf("results: %s/result.json, %s/requests.jsonl%s\n", c.out_dir.c_str(),
              c.out_dir.c_str(), run.complete ? "" : " (incomplete)");
  if (!run.complete) {
    std::fprintf(stderr, "kvscope bench: %s\n", run.status_message.c_str());
    return g_stop.load() ? 130 : 1;
  }
  return 0;
}

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  BenchFlags f;
  FlagSet flags("kvscope bench", "--model DIR|preset:NAME --out DIR [flags] | --config FILE [flags]",
                "Runs one benchmark on this machine: the model serves a generated request load\n"
                "with continuous batching under one KV-cache strategy, and the run's latency,\n"
                "throughput, memory and scheduler figures go to DIR/result.json and\n"
                "DIR/requests.jsonl. Flags override the YAML file (docs/bench.md).");
  flags.String("config", &f.config, "YAML file with the run (docs/bench.md)");
  flags.String("model", &f.model, "model directory or preset:NAME");
  flags.String("strategy", &f.strategy, "KV strategy (kvscope strategies lists them)");
  flags.StringList("strategy-param", &f.strategy_params, "strategy parameter KEY=VALUE");
  flags.String("kv-memory", &f.kv_memory, "device KV budget per rank, e.g. 64MiB (default 64MiB)");
  flags.Int("num-requests", &f.num_requests, "requests in the workload (default 100)");
  flags.String("request-rate", &f.request_rate, "requests/s, or inf for all at t=0 (default inf)");
  flags.String("arrival", &f.arrival, "all, poisson, gamma, constant, closed or trace");
  flags.Double("burstiness", &f.burstiness, "gamma shape (1 = Poisson)");
  flags.Int("concurrency", &f.concurrency, "requests in flight for --arrival closed");
  flags.Int("input-len", &f.input_len, "prompt length (mean for distributions)");
  flags.String("input-dist", &f.input_dist, "fixed, uniform, normal or lognormal");
  flags.Double("input-spread", &f.input_spread, "uniform half-width, normal stddev, lognormal sigma");
  flags.Int("input-min", &f.input_min, "shortest prompt");
  flags.Int("input-max", &f.input_max, "longest prompt");
  flags.Int("output-len", &f.output_len, "output length (mean for distributions)");
  flags.String("output-dist", &f.output_dist, "fixed, uniform, normal or lognormal");
  flags.Double("output-spread", &f.output_spread, "as --input-spread");
  flags.Int("output-min", &f.output_min, "shortest output");
  flags.Int("output-max", &f.output_max, "longest output");
  flags.String("dataset", &f.dataset, "random, text, trace, shared-prefix or multi-turn");
  flags.String("text", &f.text, "text file for --dataset text");
  flags.String("trace", &f.trace, "JSONL trace for --dataset trace");
  flags.Int("prefix-groups", &f.prefix_groups, "groups for --dataset shared-prefix");
  flags.Int("prefix-len", &f.prefix_len, "shared prefix tokens for --dataset shared-prefix");
  flags.Int("turns", &f.turns, "turns per conversation for --dataset multi-turn");
  flags.Double("think-time", &f.think_time, "seconds between turns for --dataset multi-turn");
  flags.Int("seed", &f.seed, "workload seed");
  flags.String("out", &f.out, "output directory for result.json and requests.jsonl");
  flags.Int("tp", &f.tp, "tensor-parallel size");
  flags.Int("nodes", &f.nodes, "worker processes the tensor-parallel group spans (a gang)");
  flags.Int("threads", &f.threads, "CPU threads over all ranks; 0 = every core");
  flags.Int("max-num-seqs", &f.max_num_seqs, "most sequences per step (default 256)");
  flags.Int("max-num-batched-tokens", &f.max_num_batched_tokens, "token budget per step (default 2048)");
  flags.Bool("no-chunked-prefill", &f.no_chunked_prefill, "compute each prompt in one step");
  flags.Int("max-model-len", &f.max_model_len, "longest prompt + output; 0 = the model's context");
  flags.String("goodput", &f.goodput, "objectives, e.g. ttft:500,tpot:50,e2el:2000 (ms)");
  flags.Int("weights-seed", &f.weights_seed, "seed of a preset's random weights");
  flags.Bool("no-ignore-eos", &f.no_ignore_eos, "stop requests at end-of-sequence tokens");
  flags.Double("quality-sample-rate", &f.quality_sample_rate,
               "fraction of requests checked against the full cache (default 1 for lossy "
               "strategies, 0 otherwise)");
  flags.Int("quality-steps", &f.quality_steps,
            "teacher-forced steps per checked request (default: output length, at most 64)");
  flags.String("perplexity-text", &f.perplexity_text,
               "text file whose perplexity is reported under the strategy and the full cache");
  flags.String("calibration-text", &f.calibration_text,
               "text file for strategies calibrated offline (infinigen's skewing SVD); "
               "default: a seeded random prompt");
  flags.String("progress-file", &f.progress_file,
               "rewrite FILE (atomically) with {\"requests_done\",\"requests_total\","
               "\"elapsed_s\"} as the run progresses");
  flags.Int("gang-rank", &f.gang.rank,
            "this process's place in a gang (0 = the driver, which writes the results)");
  flags.Int("gang-size", &f.gang.size, "processes in the gang (= the configuration's nodes)");
  flags.String("gang-rendezvous-file", &f.gang.rendezvous_file,
               "rank 0 writes the gang's rendezvous blob here (atomically); others read it");
  flags.String("gang-listen-host", &f.gang.listen_host,
               "rank 0 listens on this host, reachable from the other processes "
               "(default 127.0.0.1)");
  flags.Double("gang-timeout", &f.gang.timeout_s,
               "seconds for every process to join the gang (default 120)");
  if (std::optional<int> code = flags.ParseOrExitCode(args, nullptr)) return *code;
  f.gang.enabled = flags.IsSet("gang-rank") || flags.IsSet("gang-size") ||
                   flags.IsSet("gang-rendezvous-file");
  f.gang.all_given = flags.IsSet("gang-rank") && flags.IsSet("gang-size") &&
                     flags.IsSet("gang-rendezvous-file");
  // Ctrl-C from here on stops the run cleanly (during set-up: before any request starts).
  g_stop.store(false);
  g_first_sigint_ns.store(0);
  std::signal(SIGINT, OnSigint);
  engine::BenchConfig config;
  absl::Status status;
  if (!f.config.empty()) {
    std::ifstream in(f.config);
    if (!in) {
      std::fprintf(stderr, "kvscope bench: error: cannot read --config %s\n", f.config.c_str());
      return 1;
    }
    std::stringstream text;
    text << in.rdbuf();
    status = engine::ParseBenchConfigYaml(text.str(), f.config, &config);
  }
  if (status.ok()) status = ApplyFlags(flags, f, &config);
  absl::StatusOr<int> code = status.ok() ? Run(std::move(config), f) : absl::StatusOr<int>(status);
  if (!code.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "kvscope bench: error: %s\n", std::string(code.status().message()).c_str());
    return absl::IsInvalidArgument(code.status()) ? 2 : 1;
  }
  return *code;
}

}  // namespace kvscope::cli
