#include "worker/grpc_connection.h"

#include <utility>

#include "absl/strings/str_cat.h"

#include "coordinator/grpc_channel.h"
#include "coordinator/grpc_convert.h"
#include "kvscope/v1/worker.grpc.pb.h"

namespace kvscope::worker {
namespace {

using coordinator::FromGrpcStatus;

class GrpcConnection final : public CoordinatorConnection {
 public:
  GrpcConnection(const GrpcConnectionOptions& options, std::shared_ptr<grpc::Channel> channel)
      : options_(options),
        peer_("coordinator at " + options.target),
        stub_(v1::WorkerService::NewStub(std::move(channel))) {}

  absl::StatusOr<Registration> Register(const coordinator::WorkerCapabilities& capabilities,
                                        const std::string& worker_id) override {
    v1::RegisterRequest request;
    coordinator::ToProto(capabilities, request.mutable_capabilities());
    request.set_worker_id(worker_id);
    v1::RegisterResponse response;
    grpc::ClientContext context;
    Prepare(&context);
    if (absl::Status s = FromGrpcStatus(stub_->Register(&context, request, &response), peer_);
        !s.ok()) {
      return s;
    }
    Registration registration;
    registration.worker_id = response.worker_id();
    if (response.heartbeat_interval_seconds() > 0) {
      registration.heartbeat_interval_seconds = response.heartbeat_interval_seconds();
    }
    if (response.lease_seconds() > 0) registration.lease_seconds = response.lease_seconds();
    return registration;
  }

  absl::StatusOr<coordinator::HeartbeatReply> Heartbeat(
      const std::string& worker_id, const std::vector<int64_t>& running_attempts) override {
    v1::HeartbeatRequest request;
    request.set_worker_id(worker_id);
    for (int64_t a : running_attempts) request.add_running_attempts(a);
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    Prepare(&context);
    if (absl::Status s = FromGrpcStatus(stub_->Heartbeat(&context, request, &response), peer_);
        !s.ok()) {
      return s;
    }
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
    Prepare(&context);
    if (absl::Status s =
            FromGrpcStatus(stub_->AcquireTrials(&context, request, &response), peer_);
        !s.ok()) {
      return s;
    }
    std::vector<coordinator::TrialAssignment> out;
    out.reserve(response.assignments_size());
    for (const v1::TrialAssignment& a : response.assignments()) {
      out.push_back(coordinator::FromProto(a));
    }
    return out;
  }

  absl::Status ReportProgress(const std::string& worker_id, int64_t attempt_id,
                              int64_t requests_done, int64_t requests_total,
                              double elapsed_s) override {
    v1::ReportProgressRequest request;
    request.set_worker_id(worker_id);
    request.set_attempt_id(attempt_id);
    request.set_requests_done(requests_done);
    request.set_requests_total(requests_total);
    request.set_elapsed_s(elapsed_s);
    v1::ReportProgressResponse response;
    grpc::ClientContext context;
    Prepare(&context);
    return FromGrpcStatus(stub_->ReportProgress(&context, request, &response), peer_);
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
    Prepare(&context);
    if (absl::Status s =
            FromGrpcStatus(stub_->ReportResult(&context, request, &response), peer_);
        !s.ok()) {
      return s;
    }
    std::vector<coordinator::TrialAssignment> next;
    next.reserve(response.next_assignments_size());
    for (const v1::TrialAssignment& a : response.next_assignments()) {
      next.push_back(coordinator::FromProto(a));
    }
    return next;
  }

  absl::Status PublishRendezvous(const std::string& worker_id, int64_t attempt_id,
                                 const std::string& gang_id, const std::string& blob) override {
    v1::PublishRendezvousRequest request;
    request.set_worker_id(worker_id);
    request.set_attempt_id(attempt_id);
    request.set_gang_id(gang_id);
    request.set_nccl_unique_id(blob);
    v1::PublishRendezvousResponse response;
    grpc::ClientContext context;
    Prepare(&context);
    return FromGrpcStatus(stub_->PublishRendezvous(&context, request, &response), peer_);
  }

  absl::StatusOr<coordinator::Rendezvous> AwaitRendezvous(const std::string& worker_id,
                                                          int64_t attempt_id,
                                                          const std::string& gang_id,
                                                          int32_t rank) override {
    v1::AwaitRendezvousRequest request;
    request.set_worker_id(worker_id);
    request.set_attempt_id(attempt_id);
    request.set_gang_id(gang_id);
    request.set_rank(rank);
    v1::AwaitRendezvousResponse response;
    grpc::ClientContext context;
    // The call's deadline also bounds the coordinator's wait (which it caps at about 10 s).
    Prepare(&context);
    const grpc::Status status = stub_->AwaitRendezvous(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      // Not published within the wait (the coordinator's answer or this call's deadline):
      // kept apart from Unavailable so that the caller asks again at once.
      return absl::DeadlineExceededError(
          absl::StrCat(peer_, ": the rendezvous of gang ", gang_id,
                       " is not published yet (", status.error_message(), ")"));
    }
    if (absl::Status s = FromGrpcStatus(status, peer_); !s.ok()) return s;
    coordinator::Rendezvous rv;
    rv.blob = response.nccl_unique_id();
    rv.world_size = response.world_size();
    return rv;
  }

 private:
  void Prepare(grpc::ClientContext* context) const {
    coordinator::PrepareCall(context, options_.token, options_.call_timeout_seconds);
  }

  const GrpcConnectionOptions options_;
  const std::string peer_;
  // Stubs are thread-safe; each call has its own ClientContext.
  std::unique_ptr<v1::WorkerService::Stub> stub_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorConnection>> ConnectToCoordinator(
    const GrpcConnectionOptions& options) {
  coordinator::ChannelOptions channel_options;
  channel_options.target = options.target;
  channel_options.token = options.token;
  channel_options.tls_ca_file = options.tls_ca_file;
  channel_options.tls_cert_file = options.tls_cert_file;
  channel_options.tls_key_file = options.tls_key_file;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      coordinator::MakeChannel(channel_options);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<CoordinatorConnection>(
      new GrpcConnection(options, *std::move(channel)));
}

}  // namespace kvscope::worker
