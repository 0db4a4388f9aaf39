// File: coordinator/grpc_services.h
//
// ClientService and WorkerService (proto/kvscope/v1/) as thin adapters over Coordinator:
// each handler checks the caller's token, checks request sizes, converts the request to
// coordinator/coordinator.h types, calls the Coordinator, and converts the reply and the
// status back (coordinator/grpc_convert.h). No business logic lives here.
//
// They use gRPC's synchronous API: WatchExperiment blocks in Coordinator::WaitForChange
// (one second at a time, so a cancelled call or a server shutdown ends it within a second)
// on a thread of the server's pool.
//
// Thread safety: handlers run concurrently; the Coordinator is thread-safe.
#ifndef KVSCOPE_COORDINATOR_GRPC_SERVICES_H_
#define KVSCOPE_COORDINATOR_GRPC_SERVICES_H_

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
};

// Heartbeat uses the callback API: it never blocks (Coordinator::Heartbeat takes only its
// own small lock), so it is answered on gRPC's callback threads instead of waiting in the
// synchronous pool's queue behind calls that wait for a commit. That keeps its latency low
// while hundreds of workers keep AcquireTrials/ReportResult calls in flight
// (docs/benchmarks.md, "Coordinator throughput").
class WorkerServiceImpl final
    : public v1::WorkerService::WithCallbackMethod_Heartbeat<v1::WorkerService::Service> {
 public:
  WorkerServiceImpl(Coordinator* coordinator, const TokenAuthenticator* auth,
                    const WorkerServiceOptions& options)
      : coordinator_(coordinator), auth_(auth), options_(options) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* context,
                                      const v1::HeartbeatRequest* request,
                                      v1::HeartbeatResponse* response) override;
  // The handler's work, for callers that serve Heartbeat some other way.
  grpc::Status HandleHeartbeat(const grpc::ServerContextBase& context,
                               const v1::HeartbeatRequest* request,
                               v1::HeartbeatResponse* response);
  grpc::Status AcquireTrials(grpc::ServerContext* context,
                             const v1::AcquireTrialsRequest* request,
                             v1::AcquireTrialsResponse* response) override;
  grpc::Status ReportProgress(grpc::ServerContext* context,
                              const v1::ReportProgressRequest* request,
                              v1::ReportProgressResponse* response) override;
  grpc::Status ReportResult(grpc::ServerContext* context, const v1::ReportResultRequest* request,
                            v1::ReportResultResponse* response) override;
  // PublishRendezvous / AwaitRendezvous: not overridden, so UNIMPLEMENTED (design only).

 private:
  Coordinator* coordinator_;
  const TokenAuthenticator* auth_;
  WorkerServiceOptions options_;
};

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_GRPC_SERVICES_H_
