// Coordinator throughput (issue: cluster, "Benchmark"): a coordinator with its real SQLite
// store (WAL, synchronous=FULL) and gRPC server on 127.0.0.1:0, N simulated workers that
// register, heartbeat every interval and loop AcquireTrials -> ReportResult on a sweep of
// instant trials. Reports trial assignments per second and the latency of each call.
//
//   build/bench/coordinator_bench [--workers 200] [--trials 10000] [--heartbeat-interval 1]
//                                 [--db-dir DIR] [--channels 0] [--transport grpc|inproc]
//                                 [--max-trials 1] [--progress] [--timeout 600]
//                                 [--active-workers N] [--target-rate R] [--idle 3]
//                                 [--tcp shared|per-worker] [--gate K] [--calls one|two]
//                                 [--client threads|callback]
//
// Each simulated worker is two threads: one heartbeats on a fixed schedule (first beats
// staggered over one interval) naming the attempts the worker holds, the other takes one
// trial (--max-trials) and reports it succeeded at once, like a worker daemon with one slot
// whose trials take no time. With --calls one (the default, as the worker daemon) each
// report also asks for the next trial, so a worker makes one call per trial and calls
// AcquireTrials only when it holds nothing; --calls two is AcquireTrials + ReportResult.
// --client callback (the default) runs the trial loops without a thread per worker: each
// worker's next call is issued from its previous reply's callback (gRPC's callback API), so
// 200 loops cost a few of gRPC's threads instead of 200 threads woken once per call;
// --client threads gives each loop its own thread making blocking calls. The coordinator's once-a-second ExpireLeases runs as in
// `kvscope coordinator`. Heartbeats run alone for --idle seconds, then the sweep starts.
//
// Connections: --channels 0 gives every worker its own ConnectToCoordinator connection (its
// own grpc::Channel); --channels K shares K of them round-robin. Channels to one address
// with the same arguments share gRPC's global subchannel pool, so all of them ride ONE TCP
// connection (the table prints the count). --tcp per-worker gives each worker a channel with
// a local subchannel pool instead (own TCP connection, as workers on separate machines).
//
// Breakdowns: --transport inproc calls the Coordinator directly (no gRPC); a probe thread
// calls Coordinator::Heartbeat directly every 10 ms ("heartbeat direct" row: the mutex wait
// and scheduling delay without transport); process CPU is split into the simulated
// workers' threads and the rest (gRPC server + Coordinator + SQLite). --active-workers N
// lets only N workers acquire (all heartbeat); --target-rate R paces acquires to R trials/s;
// --gate K serves WorkerService through a wrapper admitting K non-heartbeat calls at once.
// A plain main() rather than Google Benchmark: one run is one long multi-threaded experiment.
//
// Assignments/s = trials / (first AcquireTrials sent -> last ReportResult acknowledged).
// Client and server share the machine's cores, so on a small machine the latencies include
// the client threads' CPU use and scheduling delay. Exit status 0 iff every trial succeeded
// once, with no call failing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/grpc_channel.h"
#include "coordinator/grpc_convert.h"
#include "coordinator/grpc_auth.h"
#include "coordinator/grpc_server.h"
#include "coordinator/grpc_services.h"
#include "coordinator/store.h"
#include "coordinator/sweep.h"
#include "engine/metrics.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/channel_arguments.h"
#include "kvscope/v1/worker.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "worker/coordinator_connection.h"
#include "worker/grpc_connection.h"

namespace kvscope::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;
using coordinator::Coordinator;

struct BenchOptions {
  int32_t workers = 200;
  int64_t trials = 10000;
  double heartbeat_interval_s = 1;
  std::string db_dir;  // the store goes in a fresh DIR/coordinator-bench-XXXXXX, removed at
                       // the end; "" = under $TMPDIR or /tmp
  int32_t channels = 0;     // 0 = one connection per worker
  std::string transport = "grpc";
  int32_t max_trials = 1;   // per AcquireTrials call
  bool progress = false;    // one ReportProgress (leased -> running) before each result
  double timeout_s = 600;
  double lease_seconds = 30;
  double acquire_poll_s = 1;  // the worker daemon's acquire_interval_seconds
  int32_t active_workers = -1;  // workers that acquire trials; -1 = all (all heartbeat)
  double target_rate = 0;       // trials/s the workers pace their acquires to; 0 = unpaced
  double idle_s = 3;            // heartbeats alone before the sweep starts
  // "shared": ConnectToCoordinator per worker; gRPC's global subchannel pool then carries
  // every channel over one TCP connection. "per-worker": the bench's own channel per worker
  // with a local subchannel pool, so each worker has its own TCP connection, as workers on
  // separate machines would.
  std::string tcp = "shared";
  // Experiment for a proposed server fix: > 0 serves the WorkerService through a wrapper that
  // lets at most `gate` calls other than Heartbeat run at once (heartbeats never wait).
  int32_t gate = 0;
  // "one": each result report also asks for the worker's next trial (ReportResult with
  // max_next_trials, as the worker daemon does), so a busy worker makes one call per trial;
  // AcquireTrials only when it holds nothing. "two": AcquireTrials then ReportResult per
  // trial (the protocol before the piggy-backed assignment).
  std::string calls = "one";
  // How the simulated workers' trial loops run. "threads": one thread per worker making
  // blocking calls. "callback": no thread per worker; each loop is a chain of gRPC
  // callback-API calls, the next call issued from the previous reply's callback (a worker
  // still has one call in flight at a time, on its own channel). Heartbeats always run on
  // a thread per worker with blocking calls. callback needs --transport grpc and no
  // --target-rate.
  std::string client = "callback";
};

void Usage() {
  std::fprintf(stderr,
               "usage: coordinator_bench [--workers N] [--trials N] [--heartbeat-interval S]\n"
               "                         [--db-dir DIR] [--channels K] [--transport grpc|inproc]\n"
               "                         [--max-trials N] [--progress] [--timeout S]\n"
               "                         [--active-workers N] [--target-rate R] [--idle S]\n"
               "                         [--tcp shared|per-worker] [--gate K] [--calls one|two]\n"
               "                         [--client threads|callback]\n");
}

// --name value or --name=value.
bool ParseFlags(int argc, char** argv, BenchOptions* o) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--progress") {
      o->progress = true;
      continue;
    }

    std::string value;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "coordinator_bench: %s needs a value\n", arg.c_str());
      return false;
    }
    try {
      if (arg == "--workers") {
        o->workers = std::stoi(value);
      } else if (arg == "--trials") {
        o->trials = std::stoll(value);
      } else if (arg == "--heartbeat-interval") {
        o->heartbeat_interval_s = std::stod(value);
      } else if (arg == "--db-dir") {
        o->db_dir = value;
      } else if (arg == "--channels") {
        o->channels = std::stoi(value);
      } else if (arg == "--transport") {
        o->transport = value;
      } else if (arg == "--max-trials") {
        o->max_trials = std::stoi(value);
      } else if (arg == "--timeout") {
        o->timeout_s = std::stod(value);
      } else if (arg == "--active-workers") {
        o->active_workers = std::stoi(value);
      } else if (arg == "--target-rate") {
        o->target_rate = std::stod(value);
      } else if (arg == "--gate") {
        o->gate = std::stoi(value);
      } else if (arg == "--tcp") {
        o->tcp = value;
      } else if (arg == "--client") {
        o->client = value;
      } else if (arg == "--calls") {
        o->calls = value;
      } else if (arg == "--idle") {
        o->idle_s = std::stod(value);
      } else {
        std::fprintf(stderr, "coordinator_bench: unknown flag %s\n", arg.c_str());
        return false;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "coordinator_bench: bad value for %s: \"%s\"\n", arg.c_str(),
                   value.c_str());
      return false;
    }
  }
  if (o->workers < 1 || o->trials < 1 || !(o->heartbeat_interval_s > 0) || o->channels < 0 ||
      o->max_trials < 1 || (o->transport != "grpc" && o->transport != "inproc") ||
      (o->tcp != "shared" && o->tcp != "per-worker") ||
      (o->calls != "one" && o->calls != "two") ||
      (o->client != "threads" && o->client != "callback")) {
    std::fprintf(stderr, "coordinator_bench: --workers, --trials, --heartbeat-interval and "
                         "--max-trials must be positive; --transport grpc or inproc; "
                         "--tcp shared or per-worker; --calls one or two; --client threads or "
                         "callback\n");
    return false;
  }
  return true;
}

// The worker API straight on the Coordinator, for --transport inproc.
class InProcessConnection final : public worker::CoordinatorConnection {
 public:
  explicit InProcessConnection(Coordinator* c) : c_(c) {}
  absl::StatusOr<worker::Registration> Register(const coordinator::WorkerCapabilities& caps,
                                                const std::string& worker_id) override {
    absl::StatusOr<std::string> id = c_->RegisterWorker(caps, worker_id);
    if (!id.ok()) return id.status();
    worker::Registration r;
    r.worker_id = *id;
    r.heartbeat_interval_seconds = c_->options().heartbeat_interval_seconds;
    r.lease_seconds = c_->options().lease_seconds;
    return r;
  }
  absl::StatusOr<coordinator::HeartbeatReply> Heartbeat(
      const std::string& worker_id, const std::vector<int64_t>& running) override {
    return c_->Heartbeat(worker_id, running);
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> AcquireTrials(
      const std::string& worker_id, int32_t max_trials) override {
    return c_->AcquireTrials(worker_id, max_trials);
  }
  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id,
                              int64_t done, int64_t total, double elapsed_s) override {
    return c_->ReportProgress(worker_id, attempt_id, done, total, elapsed_s);
  }
  absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                            const coordinator::ResultReport& report) override {
    return c_->ReportResult(worker_id, attempt_id, report);
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const coordinator::ResultReport& report,
      int32_t max_next_trials) override {
    return c_->ReportResultAndAcquire(worker_id, attempt_id, report, max_next_trials);
  }

 private:
  Coordinator* const c_;
};

// WorkerService over a channel of its own TCP connection (--tcp per-worker). The calls are
// those of worker/grpc_connection.cc; only the channel differs: MakeChannel's channels share
// gRPC's global subchannel pool, so N of them to one address use one TCP connection.
class OwnTcpConnection final : public worker::CoordinatorConnection {
 public:
  explicit OwnTcpConnection(const std::string& target) : peer_("coordinator at " + target) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stub_ = v1::WorkerService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args));
  }
  absl::StatusOr<worker::Registration> Register(const coordinator::WorkerCapabilities& caps,
                                                const std::string& worker_id) override {
    v1::RegisterRequest request;
    coordinator::ToProto(caps, request.mutable_capabilities());
    request.set_worker_id(worker_id);
    v1::RegisterResponse response;
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, "", 10);
    absl::Status st =
        coordinator::FromGrpcStatus(stub_->Register(&context, request, &response), peer_);
    if (!st.ok()) return st;
    worker::Registration r;
    r.worker_id = response.worker_id();
    return r;
  }
  absl::StatusOr<coordinator::HeartbeatReply> Heartbeat(
      const std::string& worker_id, const std::vector<int64_t>& running) override {
    v1::HeartbeatRequest request;
    request.set_worker_id(worker_id);
    for (int64_t a : running) request.add_running_attempts(a);
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, "", 10);
    absl::Status st =
        coordinator::FromGrpcStatus(stub_->Heartbeat(&context, request, &response), peer_);
    if (!st.ok()) return st;
    coordinator::HeartbeatReply reply;
    reply.stop_attempts.assign(response.stop_attempts().begin(), response.stop_attempts().end());
    return reply;
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> AcquireTrials(
      const std::string& worker_id, int32_t max_trials) override {
    v1::AcquireTrialsRequest request;
    request.set_worker_id(worker_id);
    request.set_max_trials(max_trials);
    v1::AcquireTrialsResponse response;
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, "", 10);
    absl::Status st =
        coordinator::FromGrpcStatus(stub_->AcquireTrials(&context, request, &response), peer_);
    if (!st.ok()) return st;
    std::vector<coordinator::TrialAssignment> out;
    for (const v1::TrialAssignment& a : response.assignments()) {
      out.push_back(coordinator::FromProto(a));
    }
    return out;
  }
  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id, int64_t done,
                              int64_t total, double elapsed_s) override {
    v1::ReportProgressRequest request;
    request.set_worker_id(worker_id);
    request.set_attempt_id(attempt_id);
    request.set_requests_done(done);
    request.set_requests_total(total);
    request.set_elapsed_s(elapsed_s);
    v1::ReportProgressResponse response;
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, "", 10);
    return coordinator::FromGrpcStatus(stub_->ReportProgress(&context, request, &response),
                                       peer_);
  }
  absl::Status ReportResult(const std::string& worker_id, int64_t attempt_id,
                            const coordinator::ResultReport& report) override {
    return ReportResultAndAcquire(worker_id, attempt_id, report, 0).status();
  }
  absl::StatusOr<std::vector<coordinator::TrialAssignment>> ReportResultAndAcquire(
      const std::string& worker_id, int64_t attempt_id, const coordinator::ResultReport& report,
      int32_t max_next_trials) override {
    v1::ReportResultRequest request;
    request.set_worker_id(worker_id);
    request.set_attempt_id(attempt_id);
    request.set_succeeded(report.succeeded);
    request.set_error(report.error);
    if (!report.result.is_null()) request.set_result_json(coordinator::DumpJson(report.result));
    request.set_requests_jsonl(report.requests_jsonl);
    request.set_max_next_trials(max_next_trials);
    v1::ReportResultResponse response;
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, "", 10);
    absl::Status st =
        coordinator::FromGrpcStatus(stub_->ReportResult(&context, request, &response), peer_);
    if (!st.ok()) return st;
    std::vector<coordinator::TrialAssignment> out;
    for (const v1::TrialAssignment& a : response.next_assignments()) {
      out.push_back(coordinator::FromProto(a));
    }
    return out;
  }

 private:
  const std::string peer_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
};

// --gate K: the coordinator's WorkerServiceImpl behind a limit of K concurrent calls other
// than Heartbeat, on a plain ServerBuilder (insecure, loopback). Tests whether admission
// control in front of the work RPCs keeps heartbeats fast while the sweep saturates the CPU.
class GatedWorkerService final : public v1::WorkerService::Service {
 public:
  GatedWorkerService(Coordinator* c, const coordinator::TokenAuthenticator* auth,
                     const coordinator::WorkerServiceOptions& options, int32_t gate)
      : inner_(c, auth, options), free_(gate) {}
  grpc::Status Register(grpc::ServerContext* ctx, const v1::RegisterRequest* req,
                        v1::RegisterResponse* resp) override {
    Slot slot(this);
    return Wait([&](Done done) { inner_.HandleRegister(*ctx, req, resp, std::move(done)); });
  }
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    return inner_.HandleHeartbeat(*ctx, req, resp);
  }
  grpc::Status AcquireTrials(grpc::ServerContext* ctx, const v1::AcquireTrialsRequest* req,
                             v1::AcquireTrialsResponse* resp) override {
    Slot slot(this);
    return Wait([&](Done done) { inner_.HandleAcquireTrials(*ctx, req, resp, std::move(done)); });
  }
  grpc::Status ReportProgress(grpc::ServerContext* ctx, const v1::ReportProgressRequest* req,
                              v1::ReportProgressResponse* resp) override {
    Slot slot(this);
    return Wait(
        [&](Done done) { inner_.HandleReportProgress(*ctx, req, resp, std::move(done)); });
  }
  grpc::Status ReportResult(grpc::ServerContext* ctx, const v1::ReportResultRequest* req,
                            v1::ReportResultResponse* resp) override {
    Slot slot(this);
    return Wait([&](Done done) { inner_.HandleReportResult(*ctx, req, resp, std::move(done)); });
  }

 private:
  using Done = coordinator::WorkerServiceImpl::Done;
  // Runs an asynchronous handler and blocks this (synchronous-pool) thread until it is done.
  template <typename F>
  static grpc::Status Wait(F start) {
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
    grpc::Status result;
    start([&](grpc::Status st) {
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(st);
      finished = true;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return finished; });
    return result;
  }
  struct Slot {
    explicit Slot(GatedWorkerService* g) : g(g) {
      std::unique_lock<std::mutex> lock(g->mu_);
      g->cv_.wait(lock, [&] { return g->free_ > 0; });
      --g->free_;
    }
    ~Slot() {
      std::lock_guard<std::mutex> lock(g->mu_);
      ++g->free_;
      g->cv_.notify_one();
    }
    GatedWorkerService* g;
  };
  coordinator::WorkerServiceImpl inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  int32_t free_;
};

// Latency samples (ms) of one call kind, from many threads.
class Samples {
 public:
  void Add(double ms) {
    std::lock_guard<std::mutex> lock(mu_);
    values_.push_back(ms);
  }
  std::vector<double> Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return values_;
  }

 private:
  std::mutex mu_;
  std::vector<double> values_;
};

double Ms(SteadyClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Errors by call, the first few printed.
class Errors {
 public:
  void Add(const char* call, const absl::Status& s) {
    const int64_t n = count_.fetch_add(1);
    if (n < 5) {
      std::fprintf(stderr, "coordinator_bench: %s: %s\n", call, s.ToString().c_str());
    }
  }
  int64_t count() const { return count_.load(); }

 private:
  std::atomic<int64_t> count_{0};
};

struct Shared {
  const BenchOptions* options = nullptr;
  std::atomic<bool> go{false};    // start acquiring
  std::atomic<bool> stop{false};  // heartbeats and workers end
  std::atomic<int64_t> completed{0};
  std::atomic<int64_t> assigned{0};
  std::atomic<int64_t> first_acquire_ns{INT64_MAX};
  std::atomic<int64_t> last_result_ns{0};
  std::atomic<int64_t> sweep_end_ns{INT64_MAX};  // heartbeats after this are not "during"
  std::mutex mu;
  std::condition_variable cv;  // go, stop, completion
  Samples heartbeat_during, heartbeat_idle, heartbeat_all, acquire, acquire_empty, progress,
      report, report_and_acquire;
  std::atomic<int64_t> paced_slot{0};    // --target-rate: next acquire slot (ns since pace0)
  SteadyClock::time_point pace0;
  std::mutex cpu_mu;
  double client_cpu_s = 0;  // worker threads' CPU from the sweep start to its end
  Errors errors;
};

void AtomicMin(std::atomic<int64_t>* a, int64_t v) {
  int64_t cur = a->load();
  while (v < cur && !a->compare_exchange_weak(cur, v)) {
  }
}
void AtomicMax(std::atomic<int64_t>* a, int64_t v) {
  int64_t cur = a->load();
  while (v > cur && !a->compare_exchange_weak(cur, v)) {
  }
}

struct SimWorker {
  int32_t index = 0;
  worker::CoordinatorConnection* conn = nullptr;
  std::string id;
  std::mutex mu;
  std::vector<int64_t> held;  // attempts leased and not yet reported
};

double ThreadCpuSeconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) * 1e-9;
}

// Adds this thread's CPU time spent between the sweep start (`at_go`, read once go was
// seen; -1 if never) and now to the client total. Called when the sweep ends.
void AddClientCpu(Shared* s, double at_go) {
  if (at_go < 0) return;
  const double used = ThreadCpuSeconds() - at_go;
  std::lock_guard<std::mutex> lock(s->cpu_mu);
  s->client_cpu_s += used;
}

void HeartbeatLoop(SimWorker* w, Shared* s, SteadyClock::time_point first) {
  pthread_setname_np(pthread_self(), ("hb-" + std::to_string(w->index)).substr(0, 15).c_str());
  double at_go = -1;
  bool counted = false;
  const auto interval = std::chrono::duration_cast<SteadyClock::duration>(
      std::chrono::duration<double>(s->options->heartbeat_interval_s));
  SteadyClock::time_point next = first;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(s->mu);
      if (s->cv.wait_until(lock, next, [&] { return s->stop.load(); })) break;
    }
    if (at_go < 0 && s->go.load()) at_go = ThreadCpuSeconds();
    if (!counted && s->completed.load() >= s->options->trials) {
      AddClientCpu(s, at_go);
      counted = true;
    }
    std::vector<int64_t> running;
    {
      std::lock_guard<std::mutex> lock(w->mu);
      running = w->held;
    }
    const auto t0 = SteadyClock::now();
    absl::StatusOr<coordinator::HeartbeatReply> reply = w->conn->Heartbeat(w->id, running);
    const auto t1 = SteadyClock::now();
    if (!reply.ok()) {
      s->errors.Add("Heartbeat", reply.status());
    } else {
      const double ms = Ms(t1 - t0);
      s->heartbeat_all.Add(ms);
      const int64_t start_ns = t0.time_since_epoch().count();
      if (!s->go.load()) {
        s->heartbeat_idle.Add(ms);
      } else if (start_ns >= s->first_acquire_ns.load() && start_ns <= s->sweep_end_ns.load()) {
        s->heartbeat_during.Add(ms);
      }
    }
    next += interval;
    if (next < t1) next = t1;  // a heartbeat longer than the interval: no burst to catch up
  }
  if (!counted) AddClientCpu(s, at_go);
}

void WorkLoop(SimWorker* w, Shared* s) {
  pthread_setname_np(pthread_self(), ("work-" + std::to_string(w->index)).substr(0, 15).c_str());
  const BenchOptions& o = *s->options;
  {
    std::unique_lock<std::mutex> lock(s->mu);
    s->cv.wait(lock, [&] { return s->go.load() || s->stop.load(); });
  }
  const double at_go = ThreadCpuSeconds();
  struct CountCpu {
    Shared* s;
    double at_go;
    ~CountCpu() { AddClientCpu(s, at_go); }
  } count_cpu{s, at_go};
  const int64_t slot_ns =
      o.target_rate > 0 ? static_cast<int64_t>(1e9 / o.target_rate * o.max_trials) : 0;
  coordinator::ResultReport ok;
  ok.succeeded = true;
  const bool one_call = o.calls == "one";
  // Leased and not yet reported: from AcquireTrials, or from the last report's reply.
  std::vector<coordinator::TrialAssignment> got;
  // Waits for the pace slot of one acquisition (--target-rate); false when the sweep ended.
  auto pace = [&]() {
    if (slot_ns <= 0) return true;
    const int64_t slot = s->paced_slot.fetch_add(slot_ns);
    std::this_thread::sleep_until(s->pace0 + std::chrono::nanoseconds(slot));
    return !s->stop.load() && s->completed.load() < o.trials;
  };
  while (!s->stop.load() && s->completed.load() < o.trials) {
    if (got.empty()) {
      if (!pace()) break;
      const auto t0 = SteadyClock::now();
      AtomicMin(&s->first_acquire_ns, t0.time_since_epoch().count());
      absl::StatusOr<std::vector<coordinator::TrialAssignment>> acquired =
          w->conn->AcquireTrials(w->id, o.max_trials);
      const auto t1 = SteadyClock::now();
      if (!acquired.ok()) {
        s->errors.Add("AcquireTrials", acquired.status());
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      if (acquired->empty()) {
        s->acquire_empty.Add(Ms(t1 - t0));
        // As the daemon: wait acquire_interval_seconds, or until the sweep is done.
        std::unique_lock<std::mutex> lock(s->mu);
        s->cv.wait_for(lock, std::chrono::duration<double>(o.acquire_poll_s), [&] {
          return s->stop.load() || s->completed.load() >= o.trials;
        });
        continue;
      }
      s->acquire.Add(Ms(t1 - t0));
      got = *std::move(acquired);
      s->assigned.fetch_add(static_cast<int64_t>(got.size()));
      std::lock_guard<std::mutex> lock(w->mu);
      for (const auto& a : got) w->held.push_back(a.attempt_id);
    }
    std::vector<coordinator::TrialAssignment> batch = std::move(got);
    got.clear();
    for (size_t i = 0; i < batch.size(); ++i) {
      const coordinator::TrialAssignment& a = batch[i];
      if (o.progress) {
        const auto p0 = SteadyClock::now();
        absl::Status st = w->conn->ReportProgress(w->id, a.attempt_id, 0, 1, 0.0);
        if (!st.ok()) {
          s->errors.Add("ReportProgress", st);
        } else {
          s->progress.Add(Ms(SteadyClock::now() - p0));
        }
      }
      ok.result = {{"summary", {{"ok", true}}}, {"trial", a.trial_id}};
      // The last report of a batch frees every slot: it asks for the next batch.
      const int32_t want = one_call && i + 1 == batch.size() ? o.max_trials : 0;
      if (want > 0 && !pace()) break;
      const auto r0 = SteadyClock::now();
      absl::StatusOr<std::vector<coordinator::TrialAssignment>> next =
          w->conn->ReportResultAndAcquire(w->id, a.attempt_id, ok, want);
      const auto r1 = SteadyClock::now();
      {
        std::lock_guard<std::mutex> lock(w->mu);
        w->held.erase(std::remove(w->held.begin(), w->held.end(), a.attempt_id), w->held.end());
        if (next.ok()) {
          for (const auto& n : *next) w->held.push_back(n.attempt_id);
        }
      }
      if (!next.ok()) {
        s->errors.Add("ReportResult", next.status());
        continue;
      }
      if (!next->empty()) {
        s->assigned.fetch_add(static_cast<int64_t>(next->size()));
        got = *std::move(next);
      }
      (want > 0 ? s->report_and_acquire : s->report).Add(Ms(r1 - r0));
      AtomicMax(&s->last_result_ns, r1.time_since_epoch().count());
      if (s->completed.fetch_add(1) + 1 == o.trials) {
        std::lock_guard<std::mutex> lock(s->mu);
        s->sweep_end_ns.store(r1.time_since_epoch().count());
        s->cv.notify_all();
      }
    }
  }
  // Trials leased by the last replies after the sweep ended are left to expire.
}

// --client callback: one simulated worker's trial loop as a chain of callback-API calls on
// its own stub. At most one call of a loop is in flight; its callback issues the next.
// A loop with nothing to do (an empty AcquireTrials, or a failed call) goes idle until the
// re-poll thread restarts it, as the daemon polls every acquire_interval_seconds.
class AsyncWorkLoop {
 public:
  AsyncWorkLoop(SimWorker* w, Shared* s, std::shared_ptr<grpc::Channel> channel)
      : w_(w), s_(s), stub_(v1::WorkerService::NewStub(std::move(channel))) {}

  // Starts the loop with AcquireTrials (the loop must be idle).
  void Start() {
    idle_.store(false);
    Acquire();
  }
  bool idle() const { return idle_.load(); }
  // Calls in flight across all loops (wait for 0 before tearing down channels).
  static std::atomic<int64_t>& InFlight() {
    static std::atomic<int64_t> n{0};
    return n;
  }

 private:
  struct AcquireCall {
    grpc::ClientContext context;
    v1::AcquireTrialsRequest request;
    v1::AcquireTrialsResponse response;
    SteadyClock::time_point t0;
  };
  struct ReportCall {
    grpc::ClientContext context;
    v1::ReportResultRequest request;
    v1::ReportResultResponse response;
    SteadyClock::time_point t0;
    int64_t attempt_id = 0;
    bool asked_next = false;
  };

  bool Ended() const { return s_->stop.load() || s_->completed.load() >= s_->options->trials; }

  // Counts the CPU this callback used towards the simulated workers.
  struct CountCpu {
    Shared* s;
    double t0 = ThreadCpuSeconds();
    ~CountCpu() {
      const double used = ThreadCpuSeconds() - t0;
      std::lock_guard<std::mutex> lock(s->cpu_mu);
      s->client_cpu_s += used;
    }
  };

  void GoIdle() { idle_.store(true); }

  void Acquire() {
    if (Ended()) return GoIdle();
    auto call = std::make_shared<AcquireCall>();
    call->request.set_worker_id(w_->id);
    call->request.set_max_trials(s_->options->max_trials);
    coordinator::PrepareCall(&call->context, "", 10);
    call->t0 = SteadyClock::now();
    AtomicMin(&s_->first_acquire_ns, call->t0.time_since_epoch().count());
    InFlight().fetch_add(1);
    stub_->async()->AcquireTrials(&call->context, &call->request, &call->response,
                                  [this, call](grpc::Status status) {
                                    OnAcquired(call.get(), status);
                                    InFlight().fetch_sub(1);
                                  });
  }

  void OnAcquired(AcquireCall* call, const grpc::Status& status) {
    CountCpu cpu{s_};
    const auto t1 = SteadyClock::now();
    if (!status.ok()) {
      s_->errors.Add("AcquireTrials", coordinator::FromGrpcStatus(status, "coordinator"));
      return GoIdle();
    }
    if (call->response.assignments().empty()) {
      s_->acquire_empty.Add(Ms(t1 - call->t0));
      return GoIdle();
    }
    s_->acquire.Add(Ms(t1 - call->t0));
    Take(call->response.assignments());
    Report();
  }

  void Take(const google::protobuf::RepeatedPtrField<v1::TrialAssignment>& assignments) {
    s_->assigned.fetch_add(assignments.size());
    std::lock_guard<std::mutex> lock(w_->mu);
    for (const v1::TrialAssignment& a : assignments) {
      held_.push_back({a.attempt_id(), a.trial_id()});
      w_->held.push_back(a.attempt_id());
    }
  }

  void Report() {
    if (s_->stop.load()) return GoIdle();
    std::pair<int64_t, std::string> next = held_.front();
    held_.pop_front();
    auto call = std::make_shared<ReportCall>();
    call->attempt_id = next.first;
    // The last report of a batch frees every slot: it asks for the next batch.
    call->asked_next = s_->options->calls == "one" && held_.empty();
    call->request.set_worker_id(w_->id);
    call->request.set_attempt_id(next.first);
    call->request.set_succeeded(true);
    call->request.set_result_json(coordinator::DumpJson(
        nlohmann::json{{"summary", {{"ok", true}}}, {"trial", next.second}}));
    call->request.set_max_next_trials(call->asked_next ? s_->options->max_trials : 0);
    coordinator::PrepareCall(&call->context, "", 10);
    call->t0 = SteadyClock::now();
    InFlight().fetch_add(1);
    stub_->async()->ReportResult(&call->context, &call->request, &call->response,
                                 [this, call](grpc::Status status) {
                                   OnReported(call.get(), status);
                                   InFlight().fetch_sub(1);
                                 });
  }

  void OnReported(ReportCall* call, const grpc::Status& status) {
    CountCpu cpu{s_};
    const auto t1 = SteadyClock::now();
    {
      std::lock_guard<std::mutex> lock(w_->mu);
      w_->held.erase(std::remove(w_->held.begin(), w_->held.end(), call->attempt_id),
                     w_->held.end());
    }
    if (!status.ok()) {
      s_->errors.Add("ReportResult", coordinator::FromGrpcStatus(status, "coordinator"));
    } else {
      (call->asked_next ? s_->report_and_acquire : s_->report).Add(Ms(t1 - call->t0));
      AtomicMax(&s_->last_result_ns, t1.time_since_epoch().count());
      if (s_->completed.fetch_add(1) + 1 == s_->options->trials) {
        std::lock_guard<std::mutex> lock(s_->mu);
        s_->sweep_end_ns.store(t1.time_since_epoch().count());
        s_->cv.notify_all();
      }
      if (!call->response.next_assignments().empty()) Take(call->response.next_assignments());
    }
    if (!held_.empty()) return Report();
    if (call->asked_next && status.ok() && !Ended()) {
      // Asked and got nothing: nothing pending now; wait for the re-poll like the daemon.
      return GoIdle();
    }
    if (s_->options->calls == "two" && !Ended()) return Acquire();
    GoIdle();
  }

  SimWorker* const w_;
  Shared* const s_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::deque<std::pair<int64_t, std::string>> held_;  // attempt id, trial id; loop-owned
  std::atomic<bool> idle_{true};
};

coordinator::Sweep MakeSweep(int64_t trials) {
  coordinator::Sweep sweep;
  sweep.name = "coordinator-bench";
  sweep.repeats = 1;
  sweep.seed = 1;
  sweep.max_attempts = 3;
  sweep.axis_names = {"i"};
  sweep.trials.reserve(static_cast<size_t>(trials));
  for (int64_t i = 0; i < trials; ++i) {
    coordinator::TrialSpec t;
    t.index = i;
    t.seed = 1;
    t.axes = {{"i", i}};
    t.label = "i=" + std::to_string(i) + " repeat=0";
    // What the sweep parser writes for a small CPU trial, roughly (~200 bytes).
    t.config_yaml = "model: {preset: llama-tiny}\nstrategy: {name: paged}\n"
                    "memory: {kv_bytes: 64MiB}\nworkload: {num_requests: 1, request_rate: inf, "
                    "input_len: 16, output_len: 1}\nseed: 1\n# trial " +
                    std::to_string(i) + "\n";
    t.requirements.backend = "cpu";
    sweep.trials.push_back(std::move(t));
  }
  return sweep;
}

// ESTABLISHED TCP connections whose local or remote port is `port` (loopback: both ends).
int CountTcpConnections(int port) {
  int n = 0;
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, state;
      f >> sl >> local >> remote >> state;
      if (state != "01") continue;
      auto port_of = [](const std::string& addr) {
        const size_t c = addr.rfind(':');
        return c == std::string::npos ? -1 : std::stoi(addr.substr(c + 1), nullptr, 16);
      };
      if (port_of(remote) == port) ++n;  // count the client ends only
    }
  }
  return n;
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

// User + system CPU seconds of this process (coordinator and simulated workers together).
// Context switches of this process, voluntary (blocking) and involuntary (preempted).
void ContextSwitches(int64_t* voluntary, int64_t* involuntary) {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  *voluntary = u.ru_nvcsw;
  *involuntary = u.ru_nivcsw;
}

double ProcessCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

struct Stats {
  size_t n = 0;
  double p50 = 0, p99 = 0, max = 0;
};
Stats Summarize(std::vector<double> v) {
  Stats s;
  s.n = v.size();
  if (v.empty()) return s;
  s.p50 = engine::Percentile(v, 0.50);
  s.p99 = engine::Percentile(v, 0.99);
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}
void PrintRow(const char* name, const Stats& s) {
  std::printf("  %-26s %8zu %9.2f %9.2f %9.2f\n", name, s.n, s.p50, s.p99, s.max);
}

int Run(const BenchOptions& o) {
  // A fresh store directory: --db-dir/coordinator-bench-XXXXXX, removed at the end.
  std::string parent = o.db_dir;
  if (parent.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    parent = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  }
  std::string templ = parent + "/coordinator-bench-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    std::fprintf(stderr, "coordinator_bench: cannot create a directory in %s: %s\n",
                 parent.c_str(), std::strerror(errno));
    return 1;
  }
  const std::string dir = buf.data();
  struct RemoveDir {
    std::string path;
    ~RemoveDir() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove_dir{dir};

  absl::StatusOr<std::unique_ptr<coordinator::Store>> store =
      coordinator::Store::Open(dir + "/coordinator.db");
  if (!store.ok()) {
    std::fprintf(stderr, "coordinator_bench: %s\n", store.status().ToString().c_str());
    return 1;
  }
  coordinator::CoordinatorOptions copts;
  copts.lease_seconds = o.lease_seconds;
  copts.heartbeat_interval_seconds = o.heartbeat_interval_s;
  absl::StatusOr<std::unique_ptr<Coordinator>> coord =
      Coordinator::Create(store->get(), &RealClock::Get(), copts);
  if (!coord.ok()) {
    std::fprintf(stderr, "coordinator_bench: %s\n", coord.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<coordinator::GrpcServer> server;
  coordinator::TokenAuthenticator no_tokens({}, {});
  std::unique_ptr<GatedWorkerService> gated;
  std::unique_ptr<grpc::Server> gated_server;
  int port = 0;
  std::vector<std::unique_ptr<worker::CoordinatorConnection>> conns;
  const int32_t nconn = o.transport == "inproc" ? 1 : (o.channels > 0 ? o.channels : o.workers);
  if (o.transport == "grpc" && o.gate > 0) {
    gated = std::make_unique<GatedWorkerService>(
        coord->get(), &no_tokens,
        coordinator::WorkerServiceOptions{o.heartbeat_interval_s, o.lease_seconds}, o.gate);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(gated.get());
    gated_server = builder.BuildAndStart();
    if (gated_server == nullptr || port == 0) {
      std::fprintf(stderr, "coordinator_bench: cannot start the gated server\n");
      return 1;
    }
  } else if (o.transport == "grpc") {
    coordinator::GrpcServerOptions sopts;
    sopts.listen_address = "127.0.0.1:0";
    sopts.heartbeat_interval_seconds = o.heartbeat_interval_s;
    sopts.lease_seconds = o.lease_seconds;
    absl::StatusOr<std::unique_ptr<coordinator::GrpcServer>> started =
        coordinator::GrpcServer::Start(coord->get(), sopts);
    if (!started.ok()) {
      std::fprintf(stderr, "coordinator_bench: %s\n", started.status().ToString().c_str());
      return 1;
    }
    server = *std::move(started);
    port = server->port();
  }
  if (o.transport == "grpc") {
    for (int32_t i = 0; i < nconn; ++i) {
      if (o.tcp == "per-worker") {
        conns.push_back(std::make_unique<OwnTcpConnection>("127.0.0.1:" + std::to_string(port)));
        continue;
      }
      worker::GrpcConnectionOptions c;
      c.target = "127.0.0.1:" + std::to_string(port);
      absl::StatusOr<std::unique_ptr<worker::CoordinatorConnection>> conn =
          worker::ConnectToCoordinator(c);
      if (!conn.ok()) {
        std::fprintf(stderr, "coordinator_bench: %s\n", conn.status().ToString().c_str());
        return 1;
      }
      conns.push_back(*std::move(conn));
    }
  } else {
    conns.push_back(std::make_unique<InProcessConnection>(coord->get()));
  }

  Shared s;
  s.options = &o;

  // The daemon's once-a-second lease expiry (it also writes heartbeat times).
  Samples expire;
  std::thread expirer([&] {
    while (true) {
      {
        std::unique_lock<std::mutex> lock(s.mu);
        if (s.cv.wait_for(lock, std::chrono::seconds(1), [&] { return s.stop.load(); })) return;
      }
      const auto t0 = SteadyClock::now();
      absl::Status st = (*coord)->ExpireLeases();
      if (!st.ok()) s.errors.Add("ExpireLeases", st);
      expire.Add(Ms(SteadyClock::now() - t0));
    }
  });

  // A probe worker heartbeats the Coordinator directly (no gRPC) every 10 ms: its latency
  // is the wait for the coordinator's mutex plus the scheduling delay, without transport.
  Samples probe;
  absl::StatusOr<std::string> probe_id =
      (*coord)->RegisterWorker(coordinator::WorkerCapabilities{}, "");
  std::thread prober([&] {
    if (!probe_id.ok()) return;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(s.mu);
        if (s.cv.wait_for(lock, std::chrono::milliseconds(10), [&] { return s.stop.load(); })) {
          return;
        }
      }
      const auto t0 = SteadyClock::now();
      absl::StatusOr<coordinator::HeartbeatReply> r = (*coord)->Heartbeat(*probe_id, {});
      const auto t1 = SteadyClock::now();
      if (!r.ok()) {
        s.errors.Add("probe Heartbeat", r.status());
      } else if (s.go.load() && t0.time_since_epoch().count() >= s.first_acquire_ns.load() &&
                 t0.time_since_epoch().count() <= s.sweep_end_ns.load()) {
        probe.Add(Ms(t1 - t0));
      }
    }
  });

  // Register every worker (from its own thread would only add noise: do it up front).
  std::vector<std::unique_ptr<SimWorker>> workers;
  const auto reg0 = SteadyClock::now();
  for (int32_t i = 0; i < o.workers; ++i) {
    auto w = std::make_unique<SimWorker>();
    w->index = i;
    w->conn = conns[static_cast<size_t>(i % nconn)].get();
    coordinator::WorkerCapabilities caps;
    caps.hostname = "sim-" + std::to_string(i);
    caps.cpu_cores = 2;
    caps.memory_bytes = int64_t{8} << 30;
    caps.backends = {"cpu"};
    caps.max_cpu_trials = o.max_trials;
    absl::StatusOr<worker::Registration> reg = w->conn->Register(caps, "");
    if (!reg.ok()) {
      std::fprintf(stderr, "coordinator_bench: register worker %d: %s\n", i,
                   reg.status().ToString().c_str());
      s.stop = true;
      s.cv.notify_all();
      expirer.join();
      prober.join();
      return 1;
    }
    w->id = reg->worker_id;
    workers.push_back(std::move(w));
  }
  const double register_s = std::chrono::duration<double>(SteadyClock::now() - reg0).count();

  // Heartbeats start now, staggered over one interval.
  std::vector<std::thread> threads;
  // The callback client needs gRPC and unpaced loops; otherwise the loops run on threads.
  const bool callback_client =
      o.client == "callback" && o.transport == "grpc" && o.target_rate <= 0;
  std::vector<std::unique_ptr<AsyncWorkLoop>> loops;
  const auto hb0 = SteadyClock::now();
  for (int32_t i = 0; i < o.workers; ++i) {
    const auto first = hb0 + std::chrono::duration_cast<SteadyClock::duration>(
                                 std::chrono::duration<double>(o.heartbeat_interval_s * i /
                                                               o.workers));
    threads.emplace_back(HeartbeatLoop, workers[i].get(), &s, first);
    const int32_t active = o.active_workers < 0 ? o.workers : o.active_workers;
    if (i < active && !callback_client) threads.emplace_back(WorkLoop, workers[i].get(), &s);
    if (i < active && callback_client) {
      std::shared_ptr<grpc::Channel> channel;
      if (o.tcp == "per-worker") {
        grpc::ChannelArguments args;
        args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
        channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                            grpc::InsecureChannelCredentials(), args);
      } else {
        coordinator::ChannelOptions c;
        c.target = "127.0.0.1:" + std::to_string(port);
        channel = *coordinator::MakeChannel(c);
      }
      loops.push_back(std::make_unique<AsyncWorkLoop>(workers[i].get(), &s, std::move(channel)));
    }
  }
  // --client callback: restarts idle loops every acquire poll interval (as the daemon asks
  // for trials every acquire_interval_seconds) until the sweep ends.
  std::thread repoller;
  if (callback_client) {
    repoller = std::thread([&] {
      {
        std::unique_lock<std::mutex> lock(s.mu);
        s.cv.wait(lock, [&] { return s.go.load() || s.stop.load(); });
      }
      for (auto& loop : loops) loop->Start();
      while (true) {
        {
          std::unique_lock<std::mutex> lock(s.mu);
          if (s.cv.wait_for(lock, std::chrono::duration<double>(o.acquire_poll_s), [&] {
                return s.stop.load() || s.completed.load() >= o.trials;
              })) {
            return;
          }
        }
        for (auto& loop : loops) {
          if (loop->idle()) loop->Start();
        }
      }
    });
  }

  const auto sub0 = SteadyClock::now();
  absl::StatusOr<std::string> experiment =
      (*coord)->SubmitParsed(MakeSweep(o.trials), "# synthetic sweep\n", "coordinator_bench");
  const double submit_s = std::chrono::duration<double>(SteadyClock::now() - sub0).count();
  if (!experiment.ok()) {
    std::fprintf(stderr, "coordinator_bench: submit: %s\n",
                 experiment.status().ToString().c_str());
    s.stop = true;
    s.cv.notify_all();
    for (auto& t : threads) t.join();
    if (repoller.joinable()) repoller.join();
    expirer.join();
    prober.join();
    return 1;
  }
  // Let the heartbeats settle for one interval, then start the sweep.
  std::this_thread::sleep_until(hb0 + std::chrono::duration_cast<SteadyClock::duration>(
                                          std::chrono::duration<double>(std::max(
                                              o.idle_s, o.heartbeat_interval_s))));
  const std::string load_before = LoadAverage();
  const double cpu0 = ProcessCpuSeconds();
  int64_t vcsw0 = 0, icsw0 = 0;
  ContextSwitches(&vcsw0, &icsw0);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.pace0 = SteadyClock::now();
    s.go = true;
    s.cv.notify_all();
  }
  int connections = -1;
  bool timed_out = false;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    const auto deadline =
        SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                 std::chrono::duration<double>(o.timeout_s));
    // Sample the TCP connection count once the sweep runs.
    s.cv.wait_for(lock, std::chrono::seconds(2),
                  [&] { return s.completed.load() >= o.trials; });
    if (port != 0) {
      lock.unlock();
      connections = CountTcpConnections(port);
      lock.lock();
    }
    timed_out = !s.cv.wait_until(lock, deadline, [&] {
      return s.completed.load() >= o.trials || s.errors.count() > 1000;
    });
  }
  const std::string load_after = LoadAverage();
  const double cpu_s = ProcessCpuSeconds() - cpu0;
  int64_t vcsw1 = 0, icsw1 = 0;
  ContextSwitches(&vcsw1, &icsw1);
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stop = true;
    s.cv.notify_all();
  }
  for (auto& t : threads) t.join();
  if (repoller.joinable()) repoller.join();
  // Callback loops: no call may be in flight when their stubs go.
  for (int i = 0; i < 1000 && AsyncWorkLoop::InFlight().load() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  expirer.join();
  prober.join();

  absl::StatusOr<coordinator::ExperimentInfo> info = (*coord)->GetExperiment(*experiment);
  const double window_s = static_cast<double>(s.last_result_ns.load() -
                                              s.first_acquire_ns.load()) * 1e-9;
  const int64_t done = s.completed.load();

  std::printf("coordinator_bench: %d workers (%s%s, %d connection%s%s), %lld trials, %s call%s "
              "per trial, %s client, heartbeat every %.2f s, store %s\n",
              o.workers, o.transport.c_str(),
              o.gate > 0 ? (" gated " + std::to_string(o.gate)).c_str() : "", nconn,
              nconn == 1 ? "" : "s",
              connections >= 0 ? (", " + std::to_string(connections) + " TCP").c_str() : "",
              static_cast<long long>(o.trials), o.calls.c_str(), o.calls == "one" ? "" : "s",
              callback_client ? "callback" : "threads", o.heartbeat_interval_s, dir.c_str());
  std::printf("  load average before %s, after %s\n", load_before.c_str(), load_after.c_str());
  std::printf("  register %d workers    %8.2f s\n", o.workers, register_s);
  std::printf("  submit %lld trials     %8.2f s\n", static_cast<long long>(o.trials), submit_s);
  std::printf("  sweep wall time         %8.2f s  (%lld of %lld trials succeeded%s)\n", window_s,
              static_cast<long long>(done), static_cast<long long>(o.trials),
              timed_out ? ", TIMED OUT" : "");
  std::printf("  assignments/s           %8.1f     (goal >= 500)\n",
              window_s > 0 ? static_cast<double>(done) / window_s : 0.0);
  const double per_trial = done > 0 ? 1e6 / static_cast<double>(done) : 0.0;
  std::printf("  process CPU             %8.2f s  (%.2f cores busy; %.0f us per trial)\n", cpu_s,
              window_s > 0 ? cpu_s / window_s : 0.0, cpu_s * per_trial);
  std::printf("    simulated workers     %8.2f s  (%.0f us per trial; their threads%s)\n",
              s.client_cpu_s, s.client_cpu_s * per_trial,
              callback_client ? " and reply callbacks" : "");
  std::printf("    coordinator side      %8.2f s  (%.0f us per trial; gRPC server, Coordinator,"
              " SQLite)\n", cpu_s - s.client_cpu_s, (cpu_s - s.client_cpu_s) * per_trial);
  std::printf("  context switches        %8.1f voluntary, %.1f involuntary per trial\n",
              static_cast<double>(vcsw1 - vcsw0) * per_trial * 1e-6,
              static_cast<double>(icsw1 - icsw0) * per_trial * 1e-6);
  std::printf("  %-26s %8s %9s %9s %9s\n", "latency (ms)", "n", "p50", "p99", "max");
  const Stats hb = Summarize(s.heartbeat_during.Take());
  PrintRow("heartbeat (during sweep)", hb);
  PrintRow("heartbeat (idle, no sweep)", Summarize(s.heartbeat_idle.Take()));
  PrintRow("heartbeat (all)", Summarize(s.heartbeat_all.Take()));
  PrintRow("heartbeat direct, no gRPC", Summarize(probe.Take()));
  PrintRow("acquire (got a trial)", Summarize(s.acquire.Take()));
  PrintRow("acquire (empty)", Summarize(s.acquire_empty.Take()));
  if (o.progress) PrintRow("report progress", Summarize(s.progress.Take()));
  PrintRow("report result", Summarize(s.report.Take()));
  PrintRow("report result + next trial", Summarize(s.report_and_acquire.Take()));
  PrintRow("expire leases (1/s)", Summarize(expire.Take()));
  std::printf("  heartbeat p99 during sweep %.2f ms (goal < 20 ms)\n", hb.p99);
  std::printf("  errors %lld", static_cast<long long>(s.errors.count()));
  if (info.ok()) {
    std::printf("; experiment %s: %s, %lld succeeded, %lld pending, %lld leased\n",
                info->experiment_id.c_str(), coordinator::ExperimentStateName(info->state),
                static_cast<long long>(info->succeeded), static_cast<long long>(info->pending),
                static_cast<long long>(info->leased));
  } else {
    std::printf("; %s\n", info.status().ToString().c_str());
  }
  std::fflush(stdout);
  if (server != nullptr) server->Shutdown(1);
  if (gated_server != nullptr) {
    gated_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  const bool ok = !timed_out && done == o.trials && info.ok() &&
                  info->succeeded == o.trials && s.errors.count() == 0;
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace kvscope::bench

int main(int argc, char** argv) {
  kvscope::bench::BenchOptions options;
  if (!kvscope::bench::ParseFlags(argc, argv, &options)) {
    kvscope::bench::Usage();
    return 2;
  }
  return kvscope::bench::Run(options);
}
