// File: coordinator/grpc_services.h
//
// ClientService and WorkerService (proto/kvscope/v1/) as thin adapters over Coordinator:
// each handler checks the caller's token, checks request sizes, converts the request to
// coordinator/coordinator.h types, calls the Coordinator, and converts the reply and the
// status back (coordinator/grpc_convert.h). No business logic lives here.
//
// ClientService uses gRPC's synchronous API: WatchExperiment blocks in
// Coordinator::WaitForChange (one second at a time, so a cancelled call or a server shutdown
// ends it within a second) on a thread of the server's pool. WorkerService uses the
// callback API (see WorkerServiceImpl).
//
// Thread safety: handlers run concurrently; the Coordinator is thread-safe.
#ifndef KVSCOPE_COORDINATOR_GRPC_SERVICES_H_
#define KVSCOPE_COORDINATOR_GRPC_SERVICES_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "coordinator/coordinator.h"
#include "coordinator/grpc_auth.h"
#include "kvscope/v1/client.grpc.pb.h"
#include "kvscope/v1/worker.grpc.pb.h"

namespace kvscope::coordinator {

// Longest id, worker id or source name a request may carry.
inline constexpr size_t kMaxIdBytes = 256;

class ClientServiceImpl final : public v1::ClientService::Service {
 public:
  // Both must outlive the service.
  ClientServiceImpl(Coordinator* coordinator, const TokenAuthenticator* auth)
      : coordinator_(coordinator), auth_(auth) {}

  grpc::Status Submit(grpc::ServerContext* context, const v1::SubmitRequest* request,
                      v1::SubmitResponse* response) override;
  grpc::Status GetExperiment(grpc::ServerContext* context,
                             const v1::GetExperimentRequest* request,
                             v1::GetExperimentResponse* response) override;
  grpc::Status ListExperiments(grpc::ServerContext* context,
                               const v1::ListExperimentsRequest* request,
                               v1::ListExperimentsResponse* response) override;
  grpc::Status WatchExperiment(grpc::ServerContext* context,
                               const v1::WatchExperimentRequest* request,
                               grpc::ServerWriter<v1::ExperimentSnapshot>* writer) override;
  grpc::Status CancelExperiment(grpc::ServerContext* context,
                                const v1::CancelExperimentRequest* request,
                                v1::CancelExperimentResponse* response) override;
  grpc::Status FetchResults(grpc::ServerContext* context, const v1::FetchResultsRequest* request,
                            grpc::ServerWriter<v1::ResultRow>* writer) override;
  grpc::Status ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest* request,
                           v1::ListWorkersResponse* response) override;

 private:
  Coordinator* coordinator_;
  const TokenAuthenticator* auth_;
};

struct WorkerServiceOptions {
  // Told to workers at registration; the same values the Coordinator was created with.
  double heartbeat_interval_seconds = 5;
  double lease_seconds = 30;
  int32_t max_trials_per_acquire = 64;
  // Added to the work thread's nice value, so that heartbeats, answered on gRPC's threads,
  // win the CPU over the bulk work when it is saturated (as CoordinatorOptions::
  // commit_thread_nice); 0 leaves it.
  int32_t work_thread_nice = 5;
};

// Runs tasks one at a time, in order, on a thread of its own.
class SerialExecutor {
 public:
  // `nice_increment` is added to the thread's nice value (LowerThisThreadPriority).
  explicit SerialExecutor(int32_t nice_increment = 0);
  // Runs the tasks still queued, then stops the thread.
  ~SerialExecutor();
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;
  void Post(std::function<void()> task);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  const int32_t nice_increment_;
  std::thread thread_;
};

// WorkerService uses gRPC's callback API for every method, so the server keeps no pool of
// threads parked in calls. Heartbeat (memory only, its own small lock) finishes inline on
// gRPC's thread. The calls that change trials are posted to one work thread (they would
// take turns on the Coordinator's lock anyway), which makes their in-memory change and hands
// the reply to the Coordinator's asynchronous forms; the commit thread finishes the call once
// the change is durable (group commit). gRPC's threads therefore only read, dispatch and
// write, so a heartbeat does not wait behind a burst of hundreds of ReportResult handlers;
// the work thread runs at a lower priority (WorkerServiceOptions::work_thread_nice) so that
// gRPC's threads win the CPU when it is saturated (docs/benchmarks.md, "Coordinator
// throughput").
//
// Lifetime: the server must be shut down (every call finished) before the service goes.
class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Coordinator* coordinator, const TokenAuthenticator* auth,
                    const WorkerServiceOptions& options)
      : coordinator_(coordinator), auth_(auth), options_(options),
        work_(options.work_thread_nice) {}

  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const v1::RegisterRequest* request,
                                     v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  grpc::ServerUnaryReactor* AcquireTrials(grpc::CallbackServerContext* context,
                                          const v1::AcquireTrialsRequest* request,
                                          v1::AcquireTrialsResponse* response) override;
  grpc::ServerUnaryReactor* ReportProgress(grpc::CallbackServerContext* context,
                                           const v1::ReportProgressRequest* request,
                                           v1::ReportProgressResponse* response) override;
  grpc::ServerUnaryReactor* ReportResult(grpc::CallbackServerContext* context,
                                         const v1::ReportResultRequest* request,
                                         v1::ReportResultResponse* response) override;
  // Posted to the work thread like the calls that change trials (it takes the
  // Coordinator's lock; nothing to commit).
  grpc::ServerUnaryReactor* PublishRendezvous(grpc::CallbackServerContext* context,
                                              const v1::PublishRendezvousRequest* request,
                                              v1::PublishRendezvousResponse* response) override;
  // Waits without holding a thread (Coordinator::AwaitRendezvousAsync) for at most
  // min(the call's deadline, CoordinatorOptions::rendezvous_wait_seconds); a call the
  // client cancels (or a server shutdown) ends the wait at once.
  // Runs on gRPC's thread: AwaitRendezvousAsync and CancelAwait only queue the call for
  // the Coordinator's rendezvous thread (no Coordinator lock), so it never blocks there.
  grpc::ServerUnaryReactor* AwaitRendezvous(grpc::CallbackServerContext* context,
                                            const v1::AwaitRendezvousRequest* request,
                                            v1::AwaitRendezvousResponse* response) override;

  // The handlers' work, for callers that serve WorkerService some other way (the
  // benchmark's gated variant). Each fills `response` and calls `done` exactly once with the
  // call's status: on this thread, or on the Coordinator's commit thread once the change is
  // durable. `request` and `response` must stay valid until then.
  using Done = std::function<void(grpc::Status)>;
  grpc::Status HandleHeartbeat(const grpc::ServerContextBase& context,
                               const v1::HeartbeatRequest* request,
                               v1::HeartbeatResponse* response);
  void HandleRegister(const grpc::ServerContextBase& context, const v1::RegisterRequest* request,
                      v1::RegisterResponse* response, Done done);
  void HandleAcquireTrials(const grpc::ServerContextBase& context,
                           const v1::AcquireTrialsRequest* request,
                           v1::AcquireTrialsResponse* response, Done done);
  void HandleReportProgress(const grpc::ServerContextBase& context,
                            const v1::ReportProgressRequest* request,
                            v1::ReportProgressResponse* response, Done done);
  void HandleReportResult(const grpc::ServerContextBase& context,
                          const v1::ReportResultRequest* request,
                          v1::ReportResultResponse* response, Done done);
  grpc::Status HandlePublishRendezvous(const grpc::ServerContextBase& context,
                                       const v1::PublishRendezvousRequest* request);

 private:
  Coordinator* coordinator_;
  const TokenAuthenticator* auth_;
  WorkerServiceOptions options_;
  SerialExecutor work_;  // Register, AcquireTrials, ReportProgress, ReportResult
};

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_GRPC_SERVICES_H_
