#include "coordinator/grpc_convert.h"

#include <utility>

namespace kvscope::coordinator {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status, const std::string& peer) {
  if (status.ok()) return absl::OkStatus();
  const std::string message = peer + ": " + status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
      return absl::UnavailableError(message + " (is the coordinator running and reachable?)");
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::UnavailableError(message + " (deadline exceeded)");
    default:
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()), message);
  }
}

v1::TrialState ToProto(TrialState state) {
  switch (state) {
    case TrialState::kPending: return v1::TRIAL_STATE_PENDING;
    case TrialState::kLeased: return v1::TRIAL_STATE_LEASED;
    case TrialState::kRunning: return v1::TRIAL_STATE_RUNNING;
    case TrialState::kSucceeded: return v1::TRIAL_STATE_SUCCEEDED;
    case TrialState::kFailed: return v1::TRIAL_STATE_FAILED;
    case TrialState::kCancelled: return v1::TRIAL_STATE_CANCELLED;
  }
  return v1::TRIAL_STATE_UNSPECIFIED;
}

TrialState FromProto(v1::TrialState state) {
  switch (state) {
    case v1::TRIAL_STATE_LEASED: return TrialState::kLeased;
    case v1::TRIAL_STATE_RUNNING: return TrialState::kRunning;
    case v1::TRIAL_STATE_SUCCEEDED: return TrialState::kSucceeded;
    case v1::TRIAL_STATE_FAILED: return TrialState::kFailed;
    case v1::TRIAL_STATE_CANCELLED: return TrialState::kCancelled;
    default: return TrialState::kPending;
  }
}

v1::ExperimentState ToProto(ExperimentState state) {
  switch (state) {
    case ExperimentState::kRunning: return v1::EXPERIMENT_STATE_RUNNING;
    case ExperimentState::kSucceeded: return v1::EXPERIMENT_STATE_SUCCEEDED;
    case ExperimentState::kFailed: return v1::EXPERIMENT_STATE_FAILED;
    case ExperimentState::kCancelled: return v1::EXPERIMENT_STATE_CANCELLED;
  }
  return v1::EXPERIMENT_STATE_UNSPECIFIED;
}

ExperimentState FromProto(v1::ExperimentState state) {
  switch (state) {
    case v1::EXPERIMENT_STATE_SUCCEEDED: return ExperimentState::kSucceeded;
    case v1::EXPERIMENT_STATE_FAILED: return ExperimentState::kFailed;
    case v1::EXPERIMENT_STATE_CANCELLED: return ExperimentState::kCancelled;
    default: return ExperimentState::kRunning;
  }
}

const char* TrialStateWord(v1::TrialState state) {
  switch (state) {
    case v1::TRIAL_STATE_PENDING: return "pending";
    case v1::TRIAL_STATE_LEASED: return "leased";
    case v1::TRIAL_STATE_RUNNING: return "running";
    case v1::TRIAL_STATE_SUCCEEDED: return "succeeded";
    case v1::TRIAL_STATE_FAILED: return "failed";
    case v1::TRIAL_STATE_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

const char* ExperimentStateWord(v1::ExperimentState state) {
  switch (state) {
    case v1::EXPERIMENT_STATE_RUNNING: return "running";
    case v1::EXPERIMENT_STATE_SUCCEEDED: return "succeeded";
    case v1::EXPERIMENT_STATE_FAILED: return "failed";
    case v1::EXPERIMENT_STATE_CANCELLED: return "cancelled";
    default: return "unknown";
  }
}

absl::StatusOr<nlohmann::json> ParseJsonField(const std::string& text, const char* field,
                                              const nlohmann::json& empty) {
  if (text.empty()) return empty;
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    return absl::InvalidArgumentError(std::string("field '") + field + "' is not valid JSON");
  }
  return value;
}

std::string DumpJson(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void ToProto(const GpuInfo& in, v1::GpuInfo* out) {
  out->set_index(in.index);
  out->set_name(in.name);
  out->set_memory_bytes(in.memory_bytes);
  out->set_compute_capability(in.compute_capability);
  out->set_driver(in.driver);
}

GpuInfo FromProto(const v1::GpuInfo& in) {
  GpuInfo out;
  out.index = in.index();
  out.name = in.name();
  out.memory_bytes = in.memory_bytes();
  out.compute_capability = in.compute_capability();
  out.driver = in.driver();
  return out;
}

void ToProto(const WorkerCapabilities& in, v1::WorkerCapabilities* out) {
  out->set_hostname(in.hostname);
  out->set_cpu_cores(in.cpu_cores);
  out->set_memory_bytes(in.memory_bytes);
  for (const GpuInfo& gpu : in.gpus) ToProto(gpu, out->add_gpus());
  out->set_topology(in.topology);
  for (const std::string& b : in.backends) out->add_backends(b);
  for (const std::string& m : in.models) out->add_models(m);
  out->set_max_cpu_trials(in.max_cpu_trials);
  out->set_fingerprint_json(DumpJson(in.fingerprint));
}

absl::StatusOr<WorkerCapabilities> FromProto(const v1::WorkerCapabilities& in) {
  WorkerCapabilities out;
  out.hostname = in.hostname();
  out.cpu_cores = in.cpu_cores();
  out.memory_bytes = in.memory_bytes();
  for (const v1::GpuInfo& gpu : in.gpus()) out.gpus.push_back(FromProto(gpu));
  out.topology = in.topology();
  out.backends.assign(in.backends().begin(), in.backends().end());
  out.models.assign(in.models().begin(), in.models().end());
  out.max_cpu_trials = in.max_cpu_trials();
  absl::StatusOr<nlohmann::json> fingerprint =
      ParseJsonField(in.fingerprint_json(), "fingerprint_json", nlohmann::json::object());
  if (!fingerprint.ok()) return fingerprint.status();
  out.fingerprint = *std::move(fingerprint);
  return out;
}

void ToProto(const WorkerInfo& in, v1::WorkerInfo* out) {
  out->set_worker_id(in.worker_id);
  ToProto(in.capabilities, out->mutable_capabilities());
  out->set_alive(in.alive);
  out->set_last_heartbeat_unix_s(in.last_heartbeat_unix_s);
  for (const std::string& t : in.running_trials) out->add_running_trials(t);
}

absl::StatusOr<WorkerInfo> FromProto(const v1::WorkerInfo& in) {
  WorkerInfo out;
  out.worker_id = in.worker_id();
  absl::StatusOr<WorkerCapabilities> capabilities = FromProto(in.capabilities());
  if (!capabilities.ok()) return capabilities.status();
  out.capabilities = *std::move(capabilities);
  out.alive = in.alive();
  out.last_heartbeat_unix_s = in.last_heartbeat_unix_s();
  out.running_trials.assign(in.running_trials().begin(), in.running_trials().end());
  return out;
}

void ToProto(const TrialAssignment& in, v1::TrialAssignment* out) {
  out->set_experiment_id(in.experiment_id);
  out->set_trial_id(in.trial_id);
  out->set_attempt_id(in.attempt_id);
  out->set_attempt_number(in.attempt_number);
  out->set_config_yaml(in.config_yaml);
  for (int32_t g : in.gpu_indices) out->add_gpu_indices(g);
  out->set_lease_seconds(in.lease_seconds);
  if (in.gang) ToProto(*in.gang, out->mutable_gang());
}

void ToProto(const GangPlacement& in, v1::GangPlacement* out) {
  out->set_gang_id(in.gang_id);
  out->set_rank(in.rank);
  out->set_world_size(in.world_size);
  for (const std::string& w : in.worker_ids) out->add_worker_ids(w);
  out->set_gpus_per_rank(in.gpus_per_rank);
}

GangPlacement FromProto(const v1::GangPlacement& in) {
  GangPlacement out;
  out.gang_id = in.gang_id();
  out.rank = in.rank();
  out.world_size = in.world_size();
  out.worker_ids.assign(in.worker_ids().begin(), in.worker_ids().end());
  out.gpus_per_rank = in.gpus_per_rank();
  return out;
}

TrialAssignment FromProto(const v1::TrialAssignment& in) {
  TrialAssignment out;
  out.experiment_id = in.experiment_id();
  out.trial_id = in.trial_id();
  out.attempt_id = in.attempt_id();
  out.attempt_number = in.attempt_number();
  out.config_yaml = in.config_yaml();
  out.gpu_indices.assign(in.gpu_indices().begin(), in.gpu_indices().end());
  out.lease_seconds = in.lease_seconds();
  if (in.has_gang()) out.gang = FromProto(in.gang());
  return out;
}

void ToProto(const AttemptInfo& in, v1::AttemptInfo* out) {
  out->set_attempt_id(in.attempt_id);
  out->set_number(in.number);
  out->set_worker_id(in.worker_id);
  out->set_state(in.state);
  out->set_error(in.error);
  out->set_started_unix_s(in.started_unix_s);
  out->set_finished_unix_s(in.finished_unix_s);
}

AttemptInfo FromProto(const v1::AttemptInfo& in) {
  AttemptInfo out;
  out.attempt_id = in.attempt_id();
  out.number = in.number();
  out.worker_id = in.worker_id();
  out.state = in.state();
  out.error = in.error();
  out.started_unix_s = in.started_unix_s();
  out.finished_unix_s = in.finished_unix_s();
  return out;
}

void ToProto(const TrialInfo& in, v1::TrialInfo* out) {
  out->set_trial_id(in.trial_id);
  out->set_index(in.index);
  out->set_repeat(in.repeat);
  out->set_axes_json(DumpJson(in.axes));
  out->set_label(in.label);
  out->set_state(ToProto(in.state));
  for (const AttemptInfo& a : in.attempts) ToProto(a, out->add_attempts());
  out->set_requests_done(in.requests_done);
  out->set_requests_total(in.requests_total);
  out->set_elapsed_s(in.elapsed_s);
  out->set_error(in.error);
  out->set_waiting(in.waiting);
}

absl::StatusOr<TrialInfo> FromProto(const v1::TrialInfo& in) {
  TrialInfo out;
  out.trial_id = in.trial_id();
  out.index = in.index();
  out.repeat = in.repeat();
  absl::StatusOr<nlohmann::json> axes =
      ParseJsonField(in.axes_json(), "axes_json", nlohmann::json::object());
  if (!axes.ok()) return axes.status();
  out.axes = *std::move(axes);
  out.label = in.label();
  out.state = FromProto(in.state());
  for (const v1::AttemptInfo& a : in.attempts()) out.attempts.push_back(FromProto(a));
  out.requests_done = in.requests_done();
  out.requests_total = in.requests_total();
  out.elapsed_s = in.elapsed_s();
  out.error = in.error();
  out.waiting = in.waiting();
  return out;
}

void ToProto(const ExperimentInfo& in, v1::ExperimentInfo* out) {
  out->set_experiment_id(in.experiment_id);
  out->set_name(in.name);
  out->set_state(ToProto(in.state));
  out->set_created_unix_s(in.created_unix_s);
  out->set_num_trials(in.num_trials);
  out->set_pending(in.pending);
  out->set_leased(in.leased);
  out->set_running(in.running);
  out->set_succeeded(in.succeeded);
  out->set_failed(in.failed);
  out->set_cancelled(in.cancelled);
  out->set_version(in.version);
}

ExperimentInfo FromProto(const v1::ExperimentInfo& in) {
  ExperimentInfo out;
  out.experiment_id = in.experiment_id();
  out.name = in.name();
  out.state = FromProto(in.state());
  out.created_unix_s = in.created_unix_s();
  out.num_trials = in.num_trials();
  out.pending = in.pending();
  out.leased = in.leased();
  out.running = in.running();
  out.succeeded = in.succeeded();
  out.failed = in.failed();
  out.cancelled = in.cancelled();
  out.version = in.version();
  return out;
}

}  // namespace kvscope::coordinator
