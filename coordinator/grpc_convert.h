// File: coordinator/grpc_convert.h
//
// The only place where coordinator/coordinator.h types meet their kvscope.v1 protobuf
// mirrors (proto/kvscope/v1/types.proto), and where absl::Status meets grpc::Status. Used
// by the services (coordinator/grpc_services.cc), the worker's connection
// (worker/grpc_connection.cc) and the CLI. JSON fields travel as JSON text; text that does
// not parse becomes InvalidArgument, never an exception.
#ifndef KVSCOPE_COORDINATOR_GRPC_CONVERT_H_
#define KVSCOPE_COORDINATOR_GRPC_CONVERT_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "grpcpp/support/status.h"
#include "kvscope/v1/types.pb.h"
#include "nlohmann/json.hpp"

namespace kvscope::coordinator {

// absl and gRPC share the canonical code numbering; the message is kept as is.
grpc::Status ToGrpcStatus(const absl::Status& status);
// `peer` (e.g. "coordinator at 10.0.0.5:7070") prefixes the message. UNAVAILABLE and
// DEADLINE_EXCEEDED become absl Unavailable (the caller may retry); every other code is kept.
absl::Status FromGrpcStatus(const grpc::Status& status, const std::string& peer);

v1::TrialState ToProto(TrialState state);
TrialState FromProto(v1::TrialState state);  // UNSPECIFIED -> kPending
v1::ExperimentState ToProto(ExperimentState state);
ExperimentState FromProto(v1::ExperimentState state);  // UNSPECIFIED -> kRunning
// "succeeded" for TRIAL_STATE_SUCCEEDED, ... (TrialStateName's words).
const char* TrialStateWord(v1::TrialState state);
const char* ExperimentStateWord(v1::ExperimentState state);

void ToProto(const GpuInfo& in, v1::GpuInfo* out);
GpuInfo FromProto(const v1::GpuInfo& in);
void ToProto(const WorkerCapabilities& in, v1::WorkerCapabilities* out);
absl::StatusOr<WorkerCapabilities> FromProto(const v1::WorkerCapabilities& in);
void ToProto(const WorkerInfo& in, v1::WorkerInfo* out);
absl::StatusOr<WorkerInfo> FromProto(const v1::WorkerInfo& in);
void ToProto(const GangPlacement& in, v1::GangPlacement* out);
GangPlacement FromProto(const v1::GangPlacement& in);
// `gang` travels as the message's presence: unset for an ordinary assignment.
void ToProto(const TrialAssignment& in, v1::TrialAssignment* out);
TrialAssignment FromProto(const v1::TrialAssignment& in);
void ToProto(const AttemptInfo& in, v1::AttemptInfo* out);
AttemptInfo FromProto(const v1::AttemptInfo& in);
void ToProto(const TrialInfo& in, v1::TrialInfo* out);
absl::StatusOr<TrialInfo> FromProto(const v1::TrialInfo& in);
void ToProto(const ExperimentInfo& in, v1::ExperimentInfo* out);
ExperimentInfo FromProto(const v1::ExperimentInfo& in);

// JSON text -> value; "" -> `empty`. InvalidArgument names `field` when the text is not JSON.
absl::StatusOr<nlohmann::json> ParseJsonField(const std::string& text, const char* field,
                                              const nlohmann::json& empty = nullptr);
// Compact JSON text; never throws (invalid UTF-8 is replaced).
std::string DumpJson(const nlohmann::json& value);

}  // namespace kvscope::coordinator

#endif  // KVSCOPE_COORDINATOR_GRPC_CONVERT_H_
