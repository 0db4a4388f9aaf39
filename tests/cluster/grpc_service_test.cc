// The gRPC services in process: a Coordinator on a temporary store behind a GrpcServer on
// a free loopback port, called through real channels. Covers authentication by kind,
// status mapping end to end, request validation, message limits, fencing and the health
// service.
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "coordinator/coordinator.h"
#include "coordinator/grpc_channel.h"
#include "coordinator/grpc_server.h"
#include "coordinator/store.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "kvscope/v1/client.grpc.pb.h"
#include "kvscope/v1/worker.grpc.pb.h"
#include "worker/grpc_connection.h"

namespace kvscope::coordinator {
namespace {

using ::testing::HasSubstr;

constexpr char kWorkerToken[] = "worker-token-0123456789";
constexpr char kClientToken[] = "client-token-0123456789";

constexpr char kSweep[] = R"(name: svc
model: {preset: llama-tiny}
memory: {kv_bytes: 4MiB}
workload: {num_requests: 2, input_len: 16, output_len: 8}
matrix:
  request_rate: [2, 8]
seed: 1
)";

class GrpcServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "/kvscope_grpc_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    auto store = Store::Open(dir_ + "/store.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    CoordinatorOptions options;
    options.lease_seconds = 30;
    auto coordinator = Coordinator::Create(store_.get(), &clock_, options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
  }
  void TearDown() override {
    server_.reset();
    coordinator_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void StartServer(GrpcServerOptions options = {}) {
    options.listen_address = "127.0.0.1:0";
    if (options.worker_tokens.empty()) options.worker_tokens = {kWorkerToken};
    if (options.client_tokens.empty()) options.client_tokens = {kClientToken};
    auto server = GrpcServer::Start(coordinator_.get(), options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
  }

  std::string Target() const { return "127.0.0.1:" + std::to_string(server_->port()); }

  std::unique_ptr<v1::ClientService::Stub> ClientStub() {
    ChannelOptions options;
    options.target = Target();
    auto channel = MakeChannel(options);
    EXPECT_TRUE(channel.ok());
    return v1::ClientService::NewStub(*channel);
  }

  std::unique_ptr<worker::CoordinatorConnection> WorkerConnection(const std::string& token) {
    worker::GrpcConnectionOptions options;
    options.target = Target();
    options.token = token;
    options.call_timeout_seconds = 5;
    auto connection = worker::ConnectToCoordinator(options);
    EXPECT_TRUE(connection.ok());
    return *std::move(connection);
  }

  grpc::Status Submit(const std::string& yaml, const std::string& token,
                      std::string* id = nullptr) {
    v1::SubmitRequest request;
    request.set_sweep_yaml(yaml);
    request.set_source("sweep.yaml");
    v1::SubmitResponse response;
    grpc::ClientContext context;
    PrepareCall(&context, token, 10);
    grpc::Status status = ClientStub()->Submit(&context, request, &response);
    if (id != nullptr) *id = response.experiment_id();
    return status;
  }

  int ExperimentCount() {
    v1::ListExperimentsResponse response;
    grpc::ClientContext context;
    PrepareCall(&context, kClientToken, 10);
    EXPECT_TRUE(ClientStub()->ListExperiments(&context, {}, &response).ok());
    return response.experiments_size();
  }

  std::string dir_;
  FakeClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<GrpcServer> server_;
};

TEST_F(GrpcServiceTest, ClientServiceWantsAClientToken) {
  StartServer();
  grpc::Status s = Submit(kSweep, "");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(s.error_message(), HasSubstr("missing client token"));
  s = Submit(kSweep, "not-a-token-at-all-000");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  s = Submit(kSweep, kWorkerToken);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("worker token cannot"));
  EXPECT_EQ(ExperimentCount(), 0);
  std::string id;
  s = Submit(kSweep, kClientToken, &id);
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_FALSE(id.empty());
  EXPECT_EQ(ExperimentCount(), 1);
}

TEST_F(GrpcServiceTest, WorkerServiceWantsAWorkerToken) {
  StartServer();
  WorkerCapabilities caps;
  caps.hostname = "test";
  caps.cpu_cores = 1;
  caps.backends = {"cpu"};
  EXPECT_EQ(WorkerConnection("")->Register(caps, "").status().code(),
            absl::StatusCode::kUnauthenticated);
  absl::Status s = WorkerConnection(kClientToken)->Register(caps, "").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(s.message(), HasSubstr("client token cannot"));
  auto registration = WorkerConnection(kWorkerToken)->Register(caps, "");
  ASSERT_TRUE(registration.ok()) << registration.status();
  EXPECT_FALSE(registration->worker_id.empty());
  EXPECT_DOUBLE_EQ(registration->lease_seconds, 30);
}

TEST_F(GrpcServiceTest, InvalidSweepIsInvalidArgumentAndStoresNothing) {
  StartServer();
  const grpc::Status s = Submit("name: bad\nmodel: {preset: llama-tiny}\nmatrix:\n  rate: [1]\n",
                                kClientToken);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("sweep.yaml:"));
  EXPECT_EQ(ExperimentCount(), 0);
}

TEST_F(GrpcServiceTest, AssignmentResultAndFencingOverGrpc) {
  StartServer();
  std::string id;
  ASSERT_TRUE(Submit(kSweep, kClientToken, &id).ok());
  auto connection = WorkerConnection(kWorkerToken);
  WorkerCapabilities caps;
  caps.hostname = "test";
  caps.cpu_cores = 2;
  caps.backends = {"cpu"};
  caps.max_cpu_trials = 1;
  auto registration = connection->Register(caps, "");
  ASSERT_TRUE(registration.ok()) << registration.status();
  const std::string worker_id = registration->worker_id;
  auto assignments = connection->AcquireTrials(worker_id, 1);
  ASSERT_TRUE(assignments.ok()) << assignments.status();
  ASSERT_EQ(assignments->size(), 1u);
  const TrialAssignment first = (*assignments)[0];
  EXPECT_EQ(first.experiment_id, id);
  EXPECT_THAT(first.config_yaml, HasSubstr("llama-tiny"));
  EXPECT_TRUE(connection->ReportProgress(worker_id, first.attempt_id, 1, 2, 0.1).ok());
  // The lease expires; the trial is leased again under a new attempt.
  clock_.AdvanceSeconds(31);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  ASSERT_TRUE(connection->Register(caps, worker_id).ok());
  assignments = connection->AcquireTrials(worker_id, 2);
  ASSERT_TRUE(assignments.ok()) << assignments.status();
  const TrialAssignment* again = nullptr;
  for (const TrialAssignment& t : *assignments) {
    if (t.trial_id == first.trial_id) again = &t;
  }
  ASSERT_NE(again, nullptr);
  const TrialAssignment a = *again;
  EXPECT_NE(a.attempt_id, first.attempt_id);
  ResultReport report;
  report.succeeded = true;
  report.result = {{"summary", {{"request_throughput", 1.5}}}};
  report.requests_jsonl = "{\"id\":0}\n";
  // The expired attempt's reports are stale.
  EXPECT_EQ(connection->ReportProgress(worker_id, first.attempt_id, 2, 2, 0.2).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(connection->ReportResult(worker_id, first.attempt_id, report).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(connection->ReportResult(worker_id, a.attempt_id, report).ok());
  // A retry after a lost acknowledgement is acknowledged again.
  EXPECT_TRUE(connection->ReportResult(worker_id, a.attempt_id, report).ok());
  EXPECT_EQ(connection->Heartbeat("no-such-worker", {}).status().code(),
            absl::StatusCode::kNotFound);

  v1::FetchResultsRequest request;
  request.set_experiment_id(id);
  request.set_include_requests(true);
  grpc::ClientContext context;
  PrepareCall(&context, kClientToken, 10);
  auto stub = ClientStub();
  auto reader = stub->FetchResults(&context, request);
  std::vector<v1::ResultRow> rows;
  v1::ResultRow row;
  while (reader->Read(&row)) rows.push_back(row);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(rows.size(), 2u);
  int succeeded = 0;
  for (const v1::ResultRow& r : rows) {
    if (r.state() != v1::TRIAL_STATE_SUCCEEDED) continue;
    ++succeeded;
    EXPECT_EQ(r.trial_id(), a.trial_id);
    EXPECT_THAT(r.summary_json(), HasSubstr("request_throughput"));
    EXPECT_EQ(r.requests_jsonl(), "{\"id\":0}\n");
    EXPECT_EQ(r.attempts(), 2);
    EXPECT_EQ(r.attempt_id(), a.attempt_id);
    EXPECT_THAT(r.axes_json(), HasSubstr("request_rate"));
  }
  EXPECT_EQ(succeeded, 1);
}

// One call per trial over gRPC: ReportResult with max_next_trials returns the next
// assignment; a stale attempt's report is refused and gets none; a request without the
// field (an older worker) gets none; an out-of-range count is refused.
TEST_F(GrpcServiceTest, ReportResultReturnsTheNextAssignment) {
  StartServer();
  std::string id;
  ASSERT_TRUE(Submit(kSweep, kClientToken, &id).ok());
  auto connection = WorkerConnection(kWorkerToken);
  WorkerCapabilities caps;
  caps.hostname = "test";
  caps.cpu_cores = 2;
  caps.backends = {"cpu"};
  caps.max_cpu_trials = 1;
  auto registration = connection->Register(caps, "");
  ASSERT_TRUE(registration.ok()) << registration.status();
  const std::string worker_id = registration->worker_id;
  auto assignments = connection->AcquireTrials(worker_id, 1);
  ASSERT_TRUE(assignments.ok()) << assignments.status();
  ASSERT_EQ(assignments->size(), 1u);
  const TrialAssignment first = (*assignments)[0];

  ResultReport report;
  report.succeeded = true;
  report.result = {{"summary", {{"request_throughput", 1.5}}}};
  // Out of range: refused before anything changes.
  EXPECT_EQ(connection->ReportResultAndAcquire(worker_id, first.attempt_id, report, 65)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(connection->ReportResultAndAcquire(worker_id, first.attempt_id, report, -1)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);

  // The lease expires and the trial goes to another worker: the late report is refused and
  // leases nothing.
  clock_.AdvanceSeconds(31);
  ASSERT_TRUE(coordinator_->ExpireLeases().ok());
  auto other = connection->Register(caps, "");
  ASSERT_TRUE(other.ok()) << other.status();
  auto rerun = connection->AcquireTrials(other->worker_id, 1);
  ASSERT_TRUE(rerun.ok()) << rerun.status();
  ASSERT_EQ(rerun->size(), 1u);
  ASSERT_EQ((*rerun)[0].trial_id, first.trial_id);
  ASSERT_TRUE(connection->Register(caps, worker_id).ok());
  auto late = connection->ReportResultAndAcquire(worker_id, first.attempt_id, report, 1);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition) << late.status();
  auto info = coordinator_->GetExperiment(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->pending, 1);
  EXPECT_EQ(info->leased, 1);

  // The current attempt's report returns the next trial, with its config.
  auto next = connection->ReportResultAndAcquire(other->worker_id, (*rerun)[0].attempt_id,
                                                 report, 1);
  ASSERT_TRUE(next.ok()) << next.status();
  ASSERT_EQ(next->size(), 1u);
  const TrialAssignment second = (*next)[0];
  EXPECT_EQ(second.experiment_id, id);
  EXPECT_NE(second.trial_id, first.trial_id);
  EXPECT_THAT(second.config_yaml, HasSubstr("llama-tiny"));
  EXPECT_GT(second.attempt_id, (*rerun)[0].attempt_id);

  // A request without max_next_trials (an older worker) is a plain report.
  ChannelOptions options;
  options.target = Target();
  auto worker_stub = v1::WorkerService::NewStub(*MakeChannel(options));
  v1::ReportResultRequest request;
  request.set_worker_id(other->worker_id);
  request.set_attempt_id(second.attempt_id);
  request.set_succeeded(true);
  request.set_result_json("{\"summary\": {}}");
  v1::ReportResultResponse response;
  grpc::ClientContext context;
  PrepareCall(&context, kWorkerToken, 10);
  ASSERT_TRUE(worker_stub->ReportResult(&context, request, &response).ok());
  EXPECT_EQ(response.next_assignments_size(), 0);
  info = coordinator_->GetExperiment(id);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->succeeded, 2);
  EXPECT_EQ(info->state, ExperimentState::kSucceeded);
}

TEST_F(GrpcServiceTest, WatchStreamsUntilTheExperimentFinishes) {
  StartServer();
  std::string id;
  ASSERT_TRUE(Submit(kSweep, kClientToken, &id).ok());
  grpc::ClientContext cancel_context;
  PrepareCall(&cancel_context, kClientToken, 10);
  v1::CancelExperimentRequest cancel;
  cancel.set_experiment_id(id);
  v1::CancelExperimentResponse cancelled;
  auto stub = ClientStub();
  ASSERT_TRUE(stub->CancelExperiment(&cancel_context, cancel, &cancelled).ok());
  EXPECT_EQ(cancelled.experiment().state(), v1::EXPERIMENT_STATE_CANCELLED);
  grpc::ClientContext context;
  PrepareCall(&context, kClientToken, 10);
  v1::WatchExperimentRequest request;
  request.set_experiment_id(id);
  auto reader = stub->WatchExperiment(&context, request);
  v1::ExperimentSnapshot snapshot;
  int snapshots = 0;
  while (reader->Read(&snapshot)) ++snapshots;
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(snapshots, 1);
  EXPECT_EQ(snapshot.experiment().state(), v1::EXPERIMENT_STATE_CANCELLED);
}

TEST_F(GrpcServiceTest, UnknownExperimentIsNotFound) {
  StartServer();
  v1::GetExperimentRequest request;
  request.set_experiment_id("e999");
  v1::GetExperimentResponse response;
  grpc::ClientContext context;
  PrepareCall(&context, kClientToken, 10);
  EXPECT_EQ(ClientStub()->GetExperiment(&context, request, &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  request.set_experiment_id(std::string(1000, 'x'));
  grpc::ClientContext context2;
  PrepareCall(&context2, kClientToken, 10);
  EXPECT_EQ(ClientStub()->GetExperiment(&context2, request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(GrpcServiceTest, OversizedMessageIsRefused) {
  GrpcServerOptions options;
  options.max_message_bytes = 64 << 10;
  StartServer(options);
  const grpc::Status s = Submit(std::string(kSweep) + "# " + std::string(100 << 10, 'x') + "\n",
                                kClientToken);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ExperimentCount(), 0);
}

TEST_F(GrpcServiceTest, HealthServiceAnswersServingWithoutAToken) {
  StartServer();
  ChannelOptions options;
  options.target = Target();
  auto channel = MakeChannel(options);
  ASSERT_TRUE(channel.ok());
  auto health = grpc::health::v1::Health::NewStub(*channel);
  grpc::health::v1::HealthCheckResponse response;
  grpc::ClientContext context;
  PrepareCall(&context, "", 10);
  ASSERT_TRUE(health->Check(&context, {}, &response).ok());
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(GrpcServiceTest, NonLoopbackWithoutTokensDoesNotStart) {
  GrpcServerOptions options;
  options.listen_address = "0.0.0.0:0";
  const auto server = GrpcServer::Start(coordinator_.get(), options);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
}

// Random garbage in every field of every RPC: each call gets an answer (any status) and the
// server keeps serving.
TEST_F(GrpcServiceTest, GarbageRequestsNeverCrashTheServer) {
  StartServer();
  std::mt19937_64 rng(42);
  auto garbage = [&](size_t max_len) {
    std::string out(rng() % (max_len + 1), '\0');
    for (char& c : out) c = static_cast<char>(rng() % 256);
    return out;
  };
  const std::vector<std::string> fragments = {
      "name: x\n", "model: {preset: llama-tiny}\n", "matrix:\n", "  request_rate: [",
      "1, ", "-3", "]\n", "repeats: 99999999999\n", "seed: -1\n", "&a [*a]\n", "{{{{",
      "workload: {num_requests: 1e300}\n", "link: [[request_rate]]\n", "\t", "\xff\xfe"};
  auto yamlish = [&] {
    std::string out;
    for (int i = 0, n = static_cast<int>(rng() % 12); i < n; ++i) {
      out += rng() % 4 == 0 ? garbage(16) : fragments[rng() % fragments.size()];
    }
    return out;
  };
  auto stub = ClientStub();
  auto connection = WorkerConnection(kWorkerToken);
  for (int i = 0; i < 200; ++i) {
    {
      v1::SubmitRequest request;
      request.set_sweep_yaml(yamlish());
      request.set_source(garbage(8));
      v1::SubmitResponse response;
      grpc::ClientContext context;
      PrepareCall(&context, kClientToken, 10);
      stub->Submit(&context, request, &response);
    }
    {
      v1::GetExperimentRequest request;
      request.set_experiment_id(garbage(300));
      request.set_include_trials(true);
      v1::GetExperimentResponse response;
      grpc::ClientContext context;
      PrepareCall(&context, kClientToken, 10);
      stub->GetExperiment(&context, request, &response);
    }
    WorkerCapabilities caps;
    caps.hostname = garbage(300);
    caps.cpu_cores = static_cast<int32_t>(rng());
    caps.max_cpu_trials = static_cast<int32_t>(rng());
    caps.backends = {garbage(5)};
    const std::string worker_id = garbage(4);
    (void)connection->Register(caps, rng() % 2 ? worker_id : "");
    (void)connection->Heartbeat(worker_id, {static_cast<int64_t>(rng())});
    (void)connection->AcquireTrials(worker_id, static_cast<int32_t>(rng() % 200) - 50);
    (void)connection->ReportProgress(worker_id, static_cast<int64_t>(rng() % 10),
                                     static_cast<int64_t>(rng()), -1, -1.0);
    ResultReport report;
    report.succeeded = rng() % 2 == 0;
    report.error = garbage(64);
    report.requests_jsonl = garbage(64);
    (void)connection->ReportResult(worker_id, static_cast<int64_t>(rng() % 10), report);
    (void)connection->ReportResultAndAcquire(worker_id, static_cast<int64_t>(rng() % 10),
                                             report, static_cast<int32_t>(rng() % 200) - 50);
  }
  // Malformed JSON straight through the stub (the connection always sends valid JSON).
  {
    ChannelOptions options;
    options.target = Target();
    auto worker_stub = v1::WorkerService::NewStub(*MakeChannel(options));
    v1::ReportResultRequest request;
    request.set_worker_id("w1");
    request.set_attempt_id(1);
    request.set_succeeded(true);
    request.set_result_json("{\"summary\": [1, 2");
    v1::ReportResultResponse response;
    grpc::ClientContext context;
    PrepareCall(&context, kWorkerToken, 10);
    EXPECT_EQ(worker_stub->ReportResult(&context, request, &response).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Still serving.
  std::string id;
  EXPECT_TRUE(Submit(kSweep, kClientToken, &id).ok());
}

// Gangs over gRPC: a sweep with nodes: 2 is placed on two workers (GangPlacement on the
// wire), rank 1 waits in AwaitRendezvous until rank 0 publishes, and the refusals keep
// their codes end to end.
TEST_F(GrpcServiceTest, GangRendezvousOverGrpc) {
  StartServer();
  std::string id;
  const std::string sweep = std::string(kSweep) + "tp: 2\nnodes: 2\n";
  grpc::Status submitted = Submit(sweep, kClientToken, &id);
  ASSERT_TRUE(submitted.ok()) << submitted.error_message();
  WorkerCapabilities caps;
  caps.hostname = "test";
  caps.cpu_cores = 2;
  caps.backends = {"cpu"};
  caps.max_cpu_trials = 1;
  auto c1 = WorkerConnection(kWorkerToken);
  auto c2 = WorkerConnection(kWorkerToken);
  const std::string w1 = c1->Register(caps, "")->worker_id;
  const std::string w2 = c2->Register(caps, "")->worker_id;
  auto a = c1->AcquireTrials(w1, 1);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_EQ(a->size(), 1u);
  const TrialAssignment rank0 = (*a)[0];
  ASSERT_TRUE(rank0.gang.has_value());
  EXPECT_EQ(rank0.gang->rank, 0);
  EXPECT_EQ(rank0.gang->world_size, 2);
  EXPECT_EQ(rank0.gang->worker_ids, (std::vector<std::string>{w1, w2}));
  EXPECT_THAT(rank0.config_yaml, HasSubstr("nodes: 2"));
  auto b = c2->AcquireTrials(w2, 1);
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ(b->size(), 1u);
  const TrialAssignment rank1 = (*b)[0];
  ASSERT_TRUE(rank1.gang.has_value());
  EXPECT_EQ(rank1.gang->rank, 1);
  EXPECT_EQ(rank1.attempt_id, rank0.attempt_id);
  const std::string gang = rank0.gang->gang_id;

  // Refusals keep their codes.
  EXPECT_EQ(c1->PublishRendezvous(w1, rank0.attempt_id, gang, std::string(300, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c2->PublishRendezvous(w2, rank0.attempt_id, gang, "blob").code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c2->AwaitRendezvous(w2, rank0.attempt_id, gang + "x", 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Not published within the call's deadline: DeadlineExceeded, promptly.
  {
    worker::GrpcConnectionOptions options;
    options.target = Target();
    options.token = kWorkerToken;
    options.call_timeout_seconds = 0.2;
    auto quick = worker::ConnectToCoordinator(options);
    ASSERT_TRUE(quick.ok());
    EXPECT_EQ((*quick)->AwaitRendezvous(w2, rank0.attempt_id, gang, 1).status().code(),
              absl::StatusCode::kDeadlineExceeded);
  }
  // Rank 1 waits; rank 0 publishes; rank 1 gets the blob.
  absl::StatusOr<Rendezvous> got = absl::UnknownError("not yet");
  std::thread waiter([&] { got = c2->AwaitRendezvous(w2, rank1.attempt_id, gang, 1); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const std::string blob = "tcp://127.0.0.1:4242/0123456789abcdef";
  ASSERT_TRUE(c1->PublishRendezvous(w1, rank0.attempt_id, gang, blob).ok());
  waiter.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->blob, blob);
  EXPECT_EQ(got->world_size, 2);
  EXPECT_TRUE(c1->PublishRendezvous(w1, rank0.attempt_id, gang, blob).ok());  // idempotent

  // Rank 1 finishes (no result), rank 0 reports the result; rank 1's late report is fine.
  ResultReport done;
  done.succeeded = true;
  ASSERT_TRUE(c2->ReportResult(w2, rank1.attempt_id, done).ok());
  ResultReport failed;
  failed.error = "driver lost";
  ASSERT_TRUE(c1->ReportResult(w1, rank0.attempt_id, failed).ok());
  EXPECT_TRUE(c2->ReportResult(w2, rank1.attempt_id, done).ok());
  // The attempt ended: AwaitRendezvous says so.
  EXPECT_EQ(c2->AwaitRendezvous(w2, rank1.attempt_id, gang, 1).status().code(),
            absl::StatusCode::kAborted);
}

// A server shutting down does not wait for an AwaitRendezvous call to run out.
TEST_F(GrpcServiceTest, ShutdownEndsAWaitingAwaitRendezvous) {
  StartServer();
  std::string id;
  const std::string sweep = std::string(kSweep) + "tp: 2\nnodes: 2\n";
  ASSERT_TRUE(Submit(sweep, kClientToken, &id).ok());
  WorkerCapabilities caps;
  caps.hostname = "test";
  caps.backends = {"cpu"};
  auto c1 = WorkerConnection(kWorkerToken);
  const std::string w1 = c1->Register(caps, "")->worker_id;
  const std::string w2 = c1->Register(caps, "")->worker_id;
  auto a = c1->AcquireTrials(w1, 1);
  ASSERT_TRUE(a.ok() && a->size() == 1u);
  absl::StatusOr<Rendezvous> got = absl::UnknownError("not yet");
  std::thread waiter([&] {
    got = c1->AwaitRendezvous(w2, (*a)[0].attempt_id, (*a)[0].gang->gang_id, 1);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown(/*grace_seconds=*/0.1);
  server_.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  waiter.join();
  EXPECT_FALSE(got.ok());
}

TEST(GrpcConnectionTest, UnreachableCoordinatorIsUnavailable) {
  worker::GrpcConnectionOptions options;
  options.target = "127.0.0.1:1";  // nothing listens on port 1
  options.call_timeout_seconds = 2;
  auto connection = worker::ConnectToCoordinator(options);
  ASSERT_TRUE(connection.ok());
  const absl::Status s = (*connection)->Heartbeat("w1", {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("127.0.0.1:1"));
  options.target = "";
  EXPECT_EQ(worker::ConnectToCoordinator(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.target = "127.0.0.1:1";
  options.tls_ca_file = "/nonexistent/ca.pem";
  EXPECT_EQ(worker::ConnectToCoordinator(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvscope::coordinator
