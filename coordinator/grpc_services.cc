#include "coordinator/grpc_services.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "coordinator/grpc_convert.h"

namespace kvscope::coordinator {
namespace {

// Returns early from a handler with the converted status when `expr` is not OK.
#define KVSCOPE_GRPC_RETURN_IF_ERROR(expr)                  \
  do {                                                      \
    ::absl::Status kvscope_grpc_status_ = (expr);           \
    if (!kvscope_grpc_status_.ok()) {                       \
      return ToGrpcStatus(kvscope_grpc_status_);            \
    }                                                       \
  } while (0)

absl::Status CheckId(const std::string& value, const char* field, bool required = true) {
  if (required && value.empty()) {
    return absl::InvalidArgumentError(std::string(field) + " is empty");
  }
  if (value.size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(std::string(field) + " is longer than " +
                                      std::to_string(kMaxIdBytes) + " bytes");
  }
  return absl::OkStatus();
}

}  // namespace

// ----- ClientService -----

grpc::Status ClientServiceImpl::Submit(grpc::ServerContext* context,
                                       const v1::SubmitRequest* request,
                                       v1::SubmitResponse* response) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->source(), "source", /*required=*/false));
  if (request->sweep_yaml().empty()) {
    return ToGrpcStatus(absl::InvalidArgumentError("the sweep is empty"));
  }
  absl::StatusOr<std::string> id = coordinator_->Submit(
      request->sweep_yaml(), request->source().empty() ? "<sweep>" : request->source());
  KVSCOPE_GRPC_RETURN_IF_ERROR(id.status());
  response->set_experiment_id(*id);
  return grpc::Status::OK;
}

grpc::Status ClientServiceImpl::GetExperiment(grpc::ServerContext* context,
                                              const v1::GetExperimentRequest* request,
                                              v1::GetExperimentResponse* response) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->experiment_id(), "experiment_id"));
  absl::StatusOr<ExperimentInfo> info = coordinator_->GetExperiment(request->experiment_id());
  KVSCOPE_GRPC_RETURN_IF_ERROR(info.status());
  ToProto(*info, response->mutable_experiment());
  if (request->include_trials()) {
    absl::StatusOr<std::vector<TrialInfo>> trials =
        coordinator_->ListTrials(request->experiment_id());
    KVSCOPE_GRPC_RETURN_IF_ERROR(trials.status());
    for (const TrialInfo& t : *trials) ToProto(t, response->add_trials());
  }
  return grpc::Status::OK;
}

grpc::Status ClientServiceImpl::ListExperiments(grpc::ServerContext* context,
                                                const v1::ListExperimentsRequest* request,
                                                v1::ListExperimentsResponse* response) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  absl::StatusOr<std::vector<ExperimentInfo>> list = coordinator_->ListExperiments();
  KVSCOPE_GRPC_RETURN_IF_ERROR(list.status());
  for (const ExperimentInfo& e : *list) ToProto(e, response->add_experiments());
  return grpc::Status::OK;
}

grpc::Status ClientServiceImpl::WatchExperiment(
    grpc::ServerContext* context, const v1::WatchExperimentRequest* request,
    grpc::ServerWriter<v1::ExperimentSnapshot>* writer) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->experiment_id(), "experiment_id"));
  absl::StatusOr<ExperimentInfo> info = coordinator_->GetExperiment(request->experiment_id());
  KVSCOPE_GRPC_RETURN_IF_ERROR(info.status());
  int64_t sent_version = -1;
  while (!context->IsCancelled()) {
    if (info->version != sent_version) {
      v1::ExperimentSnapshot snapshot;
      ToProto(*info, snapshot.mutable_experiment());
      if (request->include_trials()) {
        absl::StatusOr<std::vector<TrialInfo>> trials =
            coordinator_->ListTrials(request->experiment_id());
        KVSCOPE_GRPC_RETURN_IF_ERROR(trials.status());
        for (const TrialInfo& t : *trials) ToProto(t, snapshot.add_trials());
      }
      if (!writer->Write(snapshot)) break;  // the client went away
      sent_version = info->version;
      if (info->state != ExperimentState::kRunning) return grpc::Status::OK;
    }
    info = coordinator_->WaitForChange(request->experiment_id(), sent_version,
                                       /*timeout_seconds=*/1.0);
    KVSCOPE_GRPC_RETURN_IF_ERROR(info.status());
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled");
}

grpc::Status ClientServiceImpl::CancelExperiment(grpc::ServerContext* context,
                                                 const v1::CancelExperimentRequest* request,
                                                 v1::CancelExperimentResponse* response) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->experiment_id(), "experiment_id"));
  KVSCOPE_GRPC_RETURN_IF_ERROR(coordinator_->Cancel(request->experiment_id()));
  absl::StatusOr<ExperimentInfo> info = coordinator_->GetExperiment(request->experiment_id());
  KVSCOPE_GRPC_RETURN_IF_ERROR(info.status());
  ToProto(*info, response->mutable_experiment());
  return grpc::Status::OK;
}

grpc::Status ClientServiceImpl::FetchResults(grpc::ServerContext* context,
                                             const v1::FetchResultsRequest* request,
                                             grpc::ServerWriter<v1::ResultRow>* writer) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->experiment_id(), "experiment_id"));
  absl::StatusOr<std::vector<TrialInfo>> trials =
      coordinator_->ListTrials(request->experiment_id());
  KVSCOPE_GRPC_RETURN_IF_ERROR(trials.status());
  absl::StatusOr<std::vector<TrialResult>> results =
      coordinator_->Results(request->experiment_id());
  KVSCOPE_GRPC_RETURN_IF_ERROR(results.status());
  std::unordered_map<std::string, const TrialResult*> by_trial;
  for (const TrialResult& r : *results) by_trial[r.trial_id] = &r;
  for (const TrialInfo& t : *trials) {
    if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
    v1::ResultRow row;
    row.set_trial_id(t.trial_id);
    row.set_index(t.index);
    row.set_repeat(t.repeat);
    row.set_axes_json(DumpJson(t.axes));
    row.set_label(t.label);
    row.set_state(ToProto(t.state));
    row.set_attempts(static_cast<int32_t>(t.attempts.size()));
    row.set_error(t.error);
    auto it = by_trial.find(t.trial_id);
    if (it != by_trial.end()) {
      const TrialResult& r = *it->second;
      row.set_attempt_id(r.attempt_id);
      if (r.result.is_object() && r.result.contains("summary")) {
        row.set_summary_json(DumpJson(r.result["summary"]));
      }
      if (request->include_result()) row.set_result_json(DumpJson(r.result));
      if (request->include_requests()) row.set_requests_jsonl(r.requests_jsonl);
    }
    if (!writer->Write(row)) break;
  }
  return grpc::Status::OK;
}

grpc::Status ClientServiceImpl::ListWorkers(grpc::ServerContext* context,
                                            const v1::ListWorkersRequest* request,
                                            v1::ListWorkersResponse* response) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kClient, *context));
  absl::StatusOr<std::vector<WorkerInfo>> workers = coordinator_->ListWorkers();
  KVSCOPE_GRPC_RETURN_IF_ERROR(workers.status());
  for (const WorkerInfo& w : *workers) ToProto(w, response->add_workers());
  return grpc::Status::OK;
}

// ----- WorkerService -----

namespace {

// A reactor's Done: finishes the call.
WorkerServiceImpl::Done FinishReactor(grpc::ServerUnaryReactor* reactor) {
  return [reactor](grpc::Status status) { reactor->Finish(std::move(status)); };
}

// Returns early from a Handle* method, calling `done` with the converted status, when
// `expr` is not OK.
#define KVSCOPE_GRPC_DONE_IF_ERROR(expr, done)              \
  do {                                                      \
    ::absl::Status kvscope_grpc_status_ = (expr);           \
    if (!kvscope_grpc_status_.ok()) {                       \
      return (done)(ToGrpcStatus(kvscope_grpc_status_));    \
    }                                                       \
  } while (0)

absl::Status CheckMaxTrials(int32_t value, int32_t limit, const char* field) {
  if (value < 0 || value > limit) {
    return absl::InvalidArgumentError(std::string(field) + " must be in [0, " +
                                      std::to_string(limit) + "], got " + std::to_string(value));
  }
  return absl::OkStatus();
}

}  // namespace

SerialExecutor::SerialExecutor(int32_t nice_increment)
    : nice_increment_(nice_increment), thread_([this] { Loop(); }) {}

SerialExecutor::~SerialExecutor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void SerialExecutor::Post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
}

void SerialExecutor::Loop() {
  LowerThisThreadPriority(nice_increment_);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
    if (tasks_.empty()) return;  // stop_, and everything ran
    // Take every queued task at once: one wake-up per burst of calls.
    std::deque<std::function<void()>> batch;
    batch.swap(tasks_);
    lock.unlock();
    for (std::function<void()>& task : batch) task();
    lock.lock();
  }
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Register(grpc::CallbackServerContext* context,
                                                      const v1::RegisterRequest* request,
                                                      v1::RegisterResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  work_.Post([this, context, request, response, reactor] {
    HandleRegister(*context, request, response, FinishReactor(reactor));
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(grpc::CallbackServerContext* context,
                                                       const v1::HeartbeatRequest* request,
                                                       v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(HandleHeartbeat(*context, request, response));
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::AcquireTrials(
    grpc::CallbackServerContext* context, const v1::AcquireTrialsRequest* request,
    v1::AcquireTrialsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  work_.Post([this, context, request, response, reactor] {
    HandleAcquireTrials(*context, request, response, FinishReactor(reactor));
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::ReportProgress(
    grpc::CallbackServerContext* context, const v1::ReportProgressRequest* request,
    v1::ReportProgressResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  work_.Post([this, context, request, response, reactor] {
    HandleReportProgress(*context, request, response, FinishReactor(reactor));
  });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::ReportResult(grpc::CallbackServerContext* context,
                                                          const v1::ReportResultRequest* request,
                                                          v1::ReportResultResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  work_.Post([this, context, request, response, reactor] {
    HandleReportResult(*context, request, response, FinishReactor(reactor));
  });
  return reactor;
}

void WorkerServiceImpl::HandleRegister(const grpc::ServerContextBase& context,
                                       const v1::RegisterRequest* request,
                                       v1::RegisterResponse* response, Done done) {
  KVSCOPE_GRPC_DONE_IF_ERROR(auth_->Check(TokenKind::kWorker, context), done);
  KVSCOPE_GRPC_DONE_IF_ERROR(CheckId(request->worker_id(), "worker_id", /*required=*/false),
                             done);
  KVSCOPE_GRPC_DONE_IF_ERROR(
      CheckId(request->capabilities().hostname(), "capabilities.hostname", false), done);
  absl::StatusOr<WorkerCapabilities> capabilities = FromProto(request->capabilities());
  KVSCOPE_GRPC_DONE_IF_ERROR(capabilities.status(), done);
  coordinator_->RegisterWorkerAsync(
      *capabilities, request->worker_id(),
      [this, response, done = std::move(done)](absl::StatusOr<std::string> id) {
        KVSCOPE_GRPC_DONE_IF_ERROR(id.status(), done);
        response->set_worker_id(*id);
        response->set_heartbeat_interval_seconds(options_.heartbeat_interval_seconds);
        response->set_lease_seconds(options_.lease_seconds);
        done(grpc::Status::OK);
      });
}

grpc::Status WorkerServiceImpl::HandleHeartbeat(const grpc::ServerContextBase& context,
                                                const v1::HeartbeatRequest* request,
                                                v1::HeartbeatResponse* response) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kWorker, context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->worker_id(), "worker_id"));
  const std::vector<int64_t> running(request->running_attempts().begin(),
                                     request->running_attempts().end());
  absl::StatusOr<HeartbeatReply> reply = coordinator_->Heartbeat(request->worker_id(), running);
  KVSCOPE_GRPC_RETURN_IF_ERROR(reply.status());
  for (int64_t a : reply->stop_attempts) response->add_stop_attempts(a);
  return grpc::Status::OK;
}

void WorkerServiceImpl::HandleAcquireTrials(const grpc::ServerContextBase& context,
                                            const v1::AcquireTrialsRequest* request,
                                            v1::AcquireTrialsResponse* response, Done done) {
  KVSCOPE_GRPC_DONE_IF_ERROR(auth_->Check(TokenKind::kWorker, context), done);
  KVSCOPE_GRPC_DONE_IF_ERROR(CheckId(request->worker_id(), "worker_id"), done);
  KVSCOPE_GRPC_DONE_IF_ERROR(
      CheckMaxTrials(request->max_trials(), options_.max_trials_per_acquire, "max_trials"),
      done);
  coordinator_->AcquireTrialsAsync(
      request->worker_id(), request->max_trials(),
      [response, done = std::move(done)](
          absl::StatusOr<std::vector<TrialAssignment>> assignments) {
        KVSCOPE_GRPC_DONE_IF_ERROR(assignments.status(), done);
        for (const TrialAssignment& a : *assignments) ToProto(a, response->add_assignments());
        done(grpc::Status::OK);
      });
}

void WorkerServiceImpl::HandleReportProgress(const grpc::ServerContextBase& context,
                                             const v1::ReportProgressRequest* request,
                                             v1::ReportProgressResponse* response, Done done) {
  KVSCOPE_GRPC_DONE_IF_ERROR(auth_->Check(TokenKind::kWorker, context), done);
  KVSCOPE_GRPC_DONE_IF_ERROR(CheckId(request->worker_id(), "worker_id"), done);
  coordinator_->ReportProgressAsync(
      request->worker_id(), request->attempt_id(), request->requests_done(),
      request->requests_total(), request->elapsed_s(),
      [done = std::move(done)](absl::Status status) { done(ToGrpcStatus(status)); });
}

void WorkerServiceImpl::HandleReportResult(const grpc::ServerContextBase& context,
                                           const v1::ReportResultRequest* request,
                                           v1::ReportResultResponse* response, Done done) {
  KVSCOPE_GRPC_DONE_IF_ERROR(auth_->Check(TokenKind::kWorker, context), done);
  KVSCOPE_GRPC_DONE_IF_ERROR(CheckId(request->worker_id(), "worker_id"), done);
  KVSCOPE_GRPC_DONE_IF_ERROR(CheckMaxTrials(request->max_next_trials(),
                                            options_.max_trials_per_acquire, "max_next_trials"),
                             done);
  ResultReport report;
  report.succeeded = request->succeeded();
  report.error = request->error();
  absl::StatusOr<nlohmann::json> result = ParseJsonField(request->result_json(), "result_json");
  KVSCOPE_GRPC_DONE_IF_ERROR(result.status(), done);
  if (report.succeeded && !request->result_json().empty() && !result->is_object()) {
    return done(ToGrpcStatus(absl::InvalidArgumentError(
        "a succeeded result must carry result_json, a JSON object")));
  }
  report.result = *std::move(result);
  report.requests_jsonl = request->requests_jsonl();
  // (A success without result_json is a gang's rank > 0 releasing its rank; the
  // Coordinator refuses it for a report that must store a result.)
  coordinator_->ReportResultAndAcquireAsync(
      request->worker_id(), request->attempt_id(), report, request->max_next_trials(),
      [response, done = std::move(done)](absl::StatusOr<std::vector<TrialAssignment>> next) {
        KVSCOPE_GRPC_DONE_IF_ERROR(next.status(), done);
        for (const TrialAssignment& a : *next) ToProto(a, response->add_next_assignments());
        done(grpc::Status::OK);
      });
}

}  // namespace kvscope::coordinator

namespace kvscope::coordinator {

// ----- gang rendezvous -----

grpc::ServerUnaryReactor* WorkerServiceImpl::PublishRendezvous(
    grpc::CallbackServerContext* context, const v1::PublishRendezvousRequest* request,
    v1::PublishRendezvousResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  work_.Post([this, context, request, reactor] {
    reactor->Finish(HandlePublishRendezvous(*context, request));
  });
  return reactor;
}

grpc::Status WorkerServiceImpl::HandlePublishRendezvous(
    const grpc::ServerContextBase& context, const v1::PublishRendezvousRequest* request) {
  KVSCOPE_GRPC_RETURN_IF_ERROR(auth_->Check(TokenKind::kWorker, context));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->worker_id(), "worker_id"));
  KVSCOPE_GRPC_RETURN_IF_ERROR(CheckId(request->gang_id(), "gang_id"));
  return ToGrpcStatus(coordinator_->PublishRendezvous(request->worker_id(),
                                                      request->attempt_id(), request->gang_id(),
                                                      request->nccl_unique_id()));
}

namespace {

// An AwaitRendezvous call: finished by the Coordinator's answer; a cancelled call (client
// gone, deadline passed, server shutting down) cancels the Coordinator's wait so that the
// answer, and the end of the call, come at once.
class AwaitReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit AwaitReactor(Coordinator* coordinator) : coordinator_(coordinator) {}
  // Starts the wait; called once, before the reactor is returned to gRPC. An answer that
  // comes before Start is done is held until then, so that nothing touches the reactor
  // after Finish (it may be deleted by OnDone any time after).
  void Start(const v1::AwaitRendezvousRequest& request, double timeout_seconds,
             v1::AwaitRendezvousResponse* response) {
    const int64_t handle = coordinator_->AwaitRendezvousAsync(
        request.worker_id(), request.attempt_id(), request.gang_id(), request.rank(),
        timeout_seconds, [this, response](absl::StatusOr<Rendezvous> rv) {
          grpc::Status status = grpc::Status::OK;
          if (rv.ok()) {
            response->set_nccl_unique_id(rv->blob);
            response->set_world_size(rv->world_size);
          } else {
            status = ToGrpcStatus(rv.status());
          }
          {
            std::lock_guard<std::mutex> lock(mu_);
            if (!started_) {
              early_ = std::move(status);
              return;
            }
          }
          Finish(std::move(status));
        });
    std::optional<grpc::Status> early;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle_ = handle;
      started_ = true;
      early.swap(early_);
    }
    if (early) Finish(*std::move(early));
  }
  void OnCancel() override {
    int64_t handle = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      handle = handle_;
    }
    if (handle != 0) coordinator_->CancelAwait(handle);
  }
  void OnDone() override { delete this; }

 private:
  Coordinator* const coordinator_;
  std::mutex mu_;
  int64_t handle_ = 0;  // Coordinator::CancelAwait's handle; 0 = none (coordinator closing)
  bool started_ = false;
  std::optional<grpc::Status> early_;  // an answer that came before Start returned
};

}  // namespace

grpc::ServerUnaryReactor* WorkerServiceImpl::AwaitRendezvous(
    grpc::CallbackServerContext* context, const v1::AwaitRendezvousRequest* request,
    v1::AwaitRendezvousResponse* response) {
  absl::Status refused = auth_->Check(TokenKind::kWorker, *context);
  if (refused.ok()) refused = CheckId(request->worker_id(), "worker_id");
  if (refused.ok()) refused = CheckId(request->gang_id(), "gang_id");
  if (!refused.ok()) {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(ToGrpcStatus(refused));
    return reactor;
  }
  // What is left of the call's deadline (infinite when the client set none).
  const double timeout_seconds = std::max(
      0.0, std::chrono::duration<double>(context->deadline() - std::chrono::system_clock::now())
               .count());
  auto* reactor = new AwaitReactor(coordinator_);
  reactor->Start(*request, timeout_seconds, response);
  return reactor;
}

}  // namespace kvscope::coordinator
