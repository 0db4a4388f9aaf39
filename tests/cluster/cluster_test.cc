// The cluster as users run it: a `kvscope coordinator` process and `kvscope worker`
// processes on loopback, driven by `kvscope submit/results` and checked through the client
// API. Tiny trials (llama-tiny, a few short requests) and 3-second leases keep the folder
// fast; every wait is a poll with a generous deadline, never a fixed sleep as an assertion.
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cluster/cluster_test_util.h"

namespace kvscope::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kWorkerToken[] = "worker-token-0123456789abcdef";
constexpr char kClientToken[] = "client-token-0123456789abcdef";
constexpr double kLeaseSeconds = 3;

// A sweep of llama-tiny trials: `num_requests` short requests each, `rates` request rates,
// `repeats` repeats, plus `extra` top-level lines.
std::string TinySweep(const std::string& name, int num_requests, const std::string& rates,
                      int repeats, const std::string& extra = "",
                      const std::string& extra_axes = "") {
  return "name: " + name + "\n" +
         "model: {preset: llama-tiny}\n"
         "memory: {kv_bytes: 4MiB}\n"
         "workload: {num_requests: " + std::to_string(num_requests) +
         ", input_len: 16, output_len: 8}\n"
         "threads: 1\n"
         "matrix:\n"
         "  request_rate: [" + rates + "]\n" + extra_axes +
         "repeats: " + std::to_string(repeats) + "\n"
         "seed: 7\n" + extra;
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string templ = ::testing::TempDir() + "/kvscope_cluster_XXXXXX";
    ASSERT_NE(mkdtemp(templ.data()), nullptr);
    dir_ = templ;
    port_ = FreePort();
    target_ = "127.0.0.1:" + std::to_string(port_);
  }
  void TearDown() override {
    workers_.clear();
    coordinator_.reset();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
    else std::fprintf(stderr, "logs kept in %s\n", dir_.c_str());
  }

  // Starts (or restarts) the coordinator on the fixed port and the same store.
  void StartCoordinator(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"coordinator", "--listen", target_, "--db",
                                     dir_ + "/store.db", "--lease-seconds",
                                     std::to_string(kLeaseSeconds)};
    args.insert(args.end(), extra.begin(), extra.end());
    const std::string log = dir_ + "/coordinator.log";
    // The log is appended to across restarts: wait for a "listening on" line beyond those
    // of earlier coordinators, or a restarted one may be called before it listens.
    auto listening_lines = [](const std::string& text) {
      size_t n = 0;
      for (size_t at = text.find("listening on"); at != std::string::npos;
           at = text.find("listening on", at + 1)) {
        ++n;
      }
      return n;
    };
    const size_t before = listening_lines(ReadAll(log));
    coordinator_ = std::make_unique<Child>(args, log);
    ASSERT_TRUE(PollUntil([&] {
      return listening_lines(coordinator_->Log()) > before || coordinator_->WaitExit(0);
    }, 60)) << coordinator_->Log();
    ASSERT_FALSE(coordinator_->exited()) << coordinator_->Log();
  }

  Child* StartWorker(const std::vector<std::string>& extra = {}) {
    const int n = static_cast<int>(workers_.size());
    const std::string work = dir_ + "/worker" + std::to_string(n);
    std::filesystem::create_directories(work);
    std::vector<std::string> args = {"worker", "--coordinator", target_, "--work-dir", work};
    args.insert(args.end(), extra.begin(), extra.end());
    workers_.push_back(std::make_unique<Child>(args, work + ".log"));
    return workers_.back().get();
  }

  std::string WriteFile(const std::string& name, const std::string& text) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }

  // Runs `kvscope ARGS` to completion; returns the exit code, output in `output`.
  int Cli(const std::string& args, std::string* output) {
    return RunCommand(KvscopeBinary() + " " + args, output);
  }

  // Waits for the experiment to finish; returns its final info.
  v1::ExperimentInfo WaitFinished(TestClient* client, const std::string& id, double seconds) {
    v1::ExperimentInfo info;
    PollUntil([&] {
      info = client->Info(id);
      return !info.experiment_id().empty() && info.state() != v1::EXPERIMENT_STATE_RUNNING;
    }, seconds);
    return info;
  }

  // Checks that the experiment's results hold each trial exactly once.
  void ExpectEachTrialOnce(TestClient* client, const std::string& id, int trials) {
    std::vector<v1::ResultRow> rows;
    ASSERT_TRUE(client->Results(id, &rows).ok());
    ASSERT_EQ(static_cast<int>(rows.size()), trials);
    std::set<std::string> ids;
    for (const v1::ResultRow& r : rows) {
      ids.insert(r.trial_id());
      EXPECT_EQ(r.state(), v1::TRIAL_STATE_SUCCEEDED) << r.trial_id() << ": " << r.error();
      EXPECT_FALSE(r.summary_json().empty()) << r.trial_id();
      EXPECT_NE(r.attempt_id(), 0) << r.trial_id();
    }
    EXPECT_EQ(static_cast<int>(ids.size()), trials);
  }

  // The id of a trial that `worker_id` runs now, or "".
  std::string TrialRunningOn(TestClient* client, std::string* worker_id) {
    v1::ListWorkersResponse workers;
    if (!client->Workers(&workers).ok()) return "";
    for (const v1::WorkerInfo& w : workers.workers()) {
      if (w.running_trials_size() > 0) {
        *worker_id = w.worker_id();
        return w.running_trials(0);
      }
    }
    return "";
  }

  std::string dir_, target_;
  int port_ = 0;
  std::unique_ptr<Child> coordinator_;
  std::vector<std::unique_ptr<Child>> workers_;
};

// 1. A coordinator and 3 workers run a 30-trial sweep; every result is stored exactly once.
TEST_F(ClusterTest, ThreeWorkersRunThirtyTrialsEachStoredOnce) {
  StartCoordinator();
  EXPECT_THAT(coordinator_->Log(), HasSubstr("loopback connections only"));
  for (int i = 0; i < 3; ++i) StartWorker();
  const std::string sweep =
      WriteFile("thirty.yaml", TinySweep("thirty", 2, "1, 2, 3, 4, 5, 6, 7, 8, 9, 10", 3));
  std::string output;
  ASSERT_EQ(Cli("submit " + sweep + " --coordinator " + target_ + " --wait", &output), 0)
      << output;
  const std::string id = output.substr(0, output.find('\n'));
  ASSERT_FALSE(id.empty());

  TestClient client(target_);
  ExpectEachTrialOnce(&client, id, 30);
  v1::GetExperimentResponse experiment;
  ASSERT_TRUE(client.Get(id, &experiment).ok());
  std::set<std::string> workers_used;
  for (const v1::TrialInfo& t : experiment.trials()) {
    ASSERT_EQ(t.attempts_size(), 1) << t.trial_id();  // no trial ran twice
    workers_used.insert(t.attempts(0).worker_id());
  }
  EXPECT_GE(workers_used.size(), 2u);

  // The acceptance check's view: one JSON object per trial.
  ASSERT_EQ(Cli("results " + id + " --coordinator " + target_ + " --format json", &output), 0)
      << output;
  const nlohmann::json rows = nlohmann::json::parse(output, nullptr, false);
  ASSERT_TRUE(rows.is_array()) << output;
  ASSERT_EQ(rows.size(), 30u);
  for (const nlohmann::json& row : rows) {
    EXPECT_EQ(row["state"], "succeeded");
    EXPECT_EQ(row["attempts"], 1);
    EXPECT_TRUE(row["axes"].contains("request_rate"));
    EXPECT_TRUE(row["summary"].is_object());
  }
  ASSERT_EQ(Cli("results " + id + " --coordinator " + target_ + " --group-by request_rate",
                &output), 0) << output;
  EXPECT_THAT(output, HasSubstr("request_rate"));
}

// 2. kill -9 of a worker running a trial: the trial runs again elsewhere and succeeds.
TEST_F(ClusterTest, KilledWorkersTrialRunsAgainElsewhere) {
  StartCoordinator();
  Child* first = StartWorker();
  TestClient client(target_);
  std::string id;
  ASSERT_TRUE(client.Submit(TinySweep("kill", 24, "4, 8", 1), &id).ok());
  std::string worker_id, trial;
  ASSERT_TRUE(PollUntil([&] { return !(trial = TrialRunningOn(&client, &worker_id)).empty(); }))
      << first->Log();
  first->Crash();
  StartWorker();
  const v1::ExperimentInfo info = WaitFinished(&client, id, 120);
  ASSERT_EQ(info.state(), v1::EXPERIMENT_STATE_SUCCEEDED) << coordinator_->Log();
  ExpectEachTrialOnce(&client, id, 2);
  v1::GetExperimentResponse experiment;
  ASSERT_TRUE(client.Get(id, &experiment).ok());
  for (const v1::TrialInfo& t : experiment.trials()) {
    if (t.trial_id() != trial) continue;
    ASSERT_GE(t.attempts_size(), 2);
    EXPECT_EQ(t.attempts(0).worker_id(), worker_id);
    EXPECT_NE(t.attempts(t.attempts_size() - 1).worker_id(), worker_id);
  }
}

// 3. kill -9 of the coordinator mid-sweep, restarted on the same store: the sweep completes,
// acknowledged results survive, workers reconnect by themselves.
TEST_F(ClusterTest, CoordinatorCrashAndRestartCompletesTheSweep) {
  StartCoordinator();
  StartWorker();
  StartWorker();
  TestClient client(target_);
  std::string id;
  ASSERT_TRUE(client.Submit(TinySweep("crash", 4, "1, 2, 3, 4, 5, 6", 2), &id).ok());
  std::vector<v1::ResultRow> before;
  ASSERT_TRUE(PollUntil([&] { return client.Info(id).succeeded() >= 3; }, 120));
  ASSERT_TRUE(client.Results(id, &before).ok());
  coordinator_->Crash();
  StartCoordinator();
  const v1::ExperimentInfo info = WaitFinished(&client, id, 180);
  ASSERT_EQ(info.state(), v1::EXPERIMENT_STATE_SUCCEEDED) << coordinator_->Log();
  ExpectEachTrialOnce(&client, id, 12);
  std::vector<v1::ResultRow> after;
  ASSERT_TRUE(client.Results(id, &after).ok());
  for (const v1::ResultRow& b : before) {
    if (b.state() != v1::TRIAL_STATE_SUCCEEDED) continue;
    for (const v1::ResultRow& a : after) {
      if (a.trial_id() == b.trial_id()) {
        EXPECT_EQ(a.attempt_id(), b.attempt_id()) << a.trial_id();
        EXPECT_EQ(a.summary_json(), b.summary_json()) << a.trial_id();
      }
    }
  }
  // The workers came back by themselves.
  v1::ListWorkersResponse workers;
  ASSERT_TRUE(client.Workers(&workers).ok());
  int alive = 0;
  for (const v1::WorkerInfo& w : workers.workers()) alive += w.alive() ? 1 : 0;
  EXPECT_GE(alive, 1);
}

// 4. A worker stopped past its lease and resumed: its late report is refused; the re-run's
// result stands.
TEST_F(ClusterTest, LateReportAfterLeaseExpiryIsRefused) {
  StartCoordinator();
  Child* stopped = StartWorker();
  TestClient client(target_);
  std::string id;
  ASSERT_TRUE(client.Submit(TinySweep("stop", 24, "8", 1), &id).ok());
  std::string worker_id, trial;
  ASSERT_TRUE(PollUntil([&] { return !(trial = TrialRunningOn(&client, &worker_id)).empty(); }))
      << stopped->Log();
  stopped->Signal(SIGSTOP);
  StartWorker();
  const v1::ExperimentInfo info = WaitFinished(&client, id, 120);
  ASSERT_EQ(info.state(), v1::EXPERIMENT_STATE_SUCCEEDED) << coordinator_->Log();
  std::vector<v1::ResultRow> rows;
  ASSERT_TRUE(client.Results(id, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  const int64_t stored_attempt = rows[0].attempt_id();
  v1::GetExperimentResponse experiment;
  ASSERT_TRUE(client.Get(id, &experiment).ok());
  ASSERT_GE(experiment.trials(0).attempts_size(), 2);
  const v1::AttemptInfo& first = experiment.trials(0).attempts(0);
  EXPECT_EQ(first.worker_id(), worker_id);
  EXPECT_NE(stored_attempt, first.attempt_id());

  // Resume the stopped worker; its report for the expired attempt must not replace the
  // re-run's result.
  stopped->Signal(SIGCONT);
  PollUntil([&] { return false; }, 2 * kLeaseSeconds);  // give it time to try
  ASSERT_TRUE(client.Results(id, &rows).ok());
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].attempt_id(), stored_attempt);
  EXPECT_EQ(rows[0].state(), v1::TRIAL_STATE_SUCCEEDED);
}

// 5. A trial whose child process dies fails after its attempts with the reason; the other
// trials are unaffected.
TEST_F(ClusterTest, CrashingTrialFailsAfterItsAttemptsOthersSucceed) {
  StartCoordinator();
  StartWorker();
  StartWorker();
  // The test-only bench key `fault` aborts the trial's process once 3 requests have
  // finished: the trial with 4 requests dies every attempt, the one with 2 never does.
  const std::string sweep = WriteFile(
      "fault.yaml", TinySweep("fault", 2, "4", 1,
                              "max_attempts: 2\nfault: {kind: abort, exit_after_requests: 3}\n",
                              "  workload.num_requests: [2, 4]\n"));
  std::string output;
  EXPECT_NE(Cli("submit " + sweep + " --coordinator " + target_ + " --wait", &output), 0)
      << output;
  ASSERT_THAT(output, ::testing::Not(HasSubstr("invalid sweep")))
      << "the sweep parser must accept the test-only bench key `fault` as a base key";
  const std::string id = output.substr(0, output.find('\n'));
  TestClient client(target_);
  std::vector<v1::ResultRow> rows;
  ASSERT_TRUE(client.Results(id, &rows).ok());
  ASSERT_EQ(rows.size(), 2u);
  int failed = 0, succeeded = 0;
  for (const v1::ResultRow& r : rows) {
    if (r.state() == v1::TRIAL_STATE_FAILED) {
      ++failed;
      EXPECT_EQ(r.attempts(), 2);
      EXPECT_FALSE(r.error().empty());
      EXPECT_THAT(r.error(), ::testing::AnyOf(HasSubstr("signal"), HasSubstr("abort"),
                                               HasSubstr("SIGABRT")));
    } else {
      EXPECT_EQ(r.state(), v1::TRIAL_STATE_SUCCEEDED) << r.error();
      ++succeeded;
    }
  }
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(succeeded, 1);
}

// 5b. A trial whose tensor-parallel group spans two worker processes (nodes: 2): the
// rendezvous goes through the coordinator over gRPC, and the result is stored once.
TEST_F(ClusterTest, GangTrialRunsOnTwoWorkerProcesses) {
  StartCoordinator();
  StartWorker();
  StartWorker();
  const std::string sweep =
      WriteFile("gang.yaml", TinySweep("gang", 3, "4", 1, "tp: 2\nnodes: 2\n"));
  std::string output;
  ASSERT_EQ(Cli("submit " + sweep + " --coordinator " + target_ + " --wait", &output), 0)
      << output << coordinator_->Log() << workers_[0]->Log() << workers_[1]->Log();
  const std::string id = output.substr(0, output.find('\n'));
  TestClient client(target_);
  ExpectEachTrialOnce(&client, id, 1);
  for (const auto& w : workers_) EXPECT_THAT(w->Log(), HasSubstr("of gang"));
  EXPECT_THAT(workers_[0]->Log() + workers_[1]->Log(), HasSubstr("published the rendezvous"));
}

// A gang with too few workers: `kvscope status ID` says why it waits; a second worker
// places and finishes it.
TEST_F(ClusterTest, StatusSaysWhyAGangWaits) {
  StartCoordinator();
  StartWorker();
  const std::string sweep =
      WriteFile("gang.yaml", TinySweep("gang", 3, "4", 1, "tp: 2\nnodes: 2\n"));
  std::string output;
  ASSERT_EQ(Cli("submit " + sweep + " --coordinator " + target_, &output), 0) << output;
  const std::string id = output.substr(0, output.find('\n'));
  ASSERT_TRUE(PollUntil([&] {
    return Cli("status " + id + " --coordinator " + target_, &output) == 0 &&
           output.find("waiting for 2 workers") != std::string::npos;
  }, 60)) << output << coordinator_->Log();
  EXPECT_THAT(output, HasSubstr("only 1 worker is alive, fewer than nodes=2"));
  StartWorker();
  TestClient client(target_);
  EXPECT_EQ(WaitFinished(&client, id, 120).state(), v1::EXPERIMENT_STATE_SUCCEEDED)
      << coordinator_->Log();
  ASSERT_EQ(Cli("status " + id + " --coordinator " + target_, &output), 0) << output;
  EXPECT_THAT(output, ::testing::Not(HasSubstr("waiting for")));
}

// 5c. The worker of one rank dies mid-trial: its lease expires, the whole attempt ends
// (rank 0 is stopped, not left waiting), and the trial runs again on two live workers.
TEST_F(ClusterTest, LostGangRankRetriesTheWholeAttempt) {
  StartCoordinator();
  StartWorker();
  StartWorker();
  TestClient client(target_);
  std::string id;
  ASSERT_TRUE(client.Submit(TinySweep("gang-kill", 40, "8", 1, "tp: 2\nnodes: 2\n"), &id).ok());
  // Both ranks running: two workers list the trial.
  auto busy_workers = [&] {
    std::vector<std::string> ids;
    v1::ListWorkersResponse workers;
    if (!client.Workers(&workers).ok()) return ids;
    for (const v1::WorkerInfo& w : workers.workers()) {
      if (w.running_trials_size() > 0) ids.push_back(w.worker_id());
    }
    return ids;
  };
  ASSERT_TRUE(PollUntil([&] { return busy_workers().size() == 2; }, 60))
      << workers_[0]->Log() << workers_[1]->Log();
  // Kill the second worker process (whichever rank it runs); a third one joins.
  workers_[1]->Crash();
  StartWorker();
  const v1::ExperimentInfo info = WaitFinished(&client, id, 120);
  ASSERT_EQ(info.state(), v1::EXPERIMENT_STATE_SUCCEEDED)
      << coordinator_->Log() << workers_[0]->Log() << workers_[2]->Log();
  ExpectEachTrialOnce(&client, id, 1);
  v1::GetExperimentResponse experiment;
  ASSERT_TRUE(client.Get(id, &experiment).ok());
  ASSERT_EQ(experiment.trials_size(), 1);
  EXPECT_GE(experiment.trials(0).attempts_size(), 2);
  EXPECT_THAT(workers_[2]->Log(), HasSubstr("of gang"));
}

// 6. Wrong or missing tokens are rejected for clients and workers; TLS works with
// certificates generated here.
TEST_F(ClusterTest, TokensAndTls) {
  std::string output;
  if (RunCommand("command -v openssl", &output) != 0) GTEST_SKIP() << "needs the openssl CLI";
  // A CA, and a server certificate for 127.0.0.1 / localhost signed by it.
  const std::string d = dir_;
  const std::string script =
      "cd " + d + " && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=kvscope-ca "
      "-keyout ca.key -out ca.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key "
      "-out server.csr && "
      "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext && "
      "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-extfile san.ext -out server.pem && "
      "openssl req -newkey rsa:2048 -nodes -subj /CN=kvscope-client -keyout client.key "
      "-out client.csr && "
      "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
      "-out client.pem";
  ASSERT_EQ(RunCommand(script, &output), 0) << output;
  const std::string worker_tokens = WriteFile("worker.tokens", std::string(kWorkerToken) + "\n");
  const std::string client_tokens = WriteFile("client.tokens", std::string(kClientToken) + "\n");
  StartCoordinator({"--worker-token-file", worker_tokens, "--client-token-file", client_tokens,
                    "--tls-cert", d + "/server.pem", "--tls-key", d + "/server.key"});
  const std::string tls = " --coordinator " + target_ + " --tls-ca " + d + "/ca.pem";

  EXPECT_NE(Cli("workers" + tls, &output), 0);
  EXPECT_THAT(output, HasSubstr("missing client token"));
  EXPECT_NE(Cli("workers" + tls + " --token wrong-token-0123456789", &output), 0);
  EXPECT_THAT(output, HasSubstr("invalid client token"));
  EXPECT_NE(Cli("workers" + tls + " --token " + kWorkerToken, &output), 0);
  EXPECT_THAT(output, HasSubstr("worker token cannot"));
  EXPECT_NE(Cli("workers --coordinator " + target_ + " --token " + kClientToken, &output), 0)
      << "plaintext to a TLS coordinator must fail";

  // A worker with a client token is refused and stops with the reason.
  Child* bad = StartWorker({"--token", kClientToken, "--tls-ca", d + "/ca.pem"});
  int code = 0;
  ASSERT_TRUE(bad->WaitExit(60, &code)) << bad->Log();
  EXPECT_NE(code, 0);
  EXPECT_THAT(bad->Log(), HasSubstr("client token cannot"));

  StartWorker({"--token", kWorkerToken, "--tls-ca", d + "/ca.pem"});
  const std::string sweep = WriteFile("tls.yaml", TinySweep("tls", 2, "2, 4", 1));
  ASSERT_EQ(Cli("submit " + sweep + tls + " --token-file " + client_tokens + " --wait", &output),
            0) << output;
  const std::string id = output.substr(0, output.find('\n'));
  ASSERT_EQ(Cli("results " + id + tls + " --token " + kClientToken + " --format json", &output),
            0) << output;
  const nlohmann::json rows = nlohmann::json::parse(output, nullptr, false);
  ASSERT_TRUE(rows.is_array()) << output;
  EXPECT_EQ(rows.size(), 2u);

  // Mutual TLS: the same coordinator, now demanding client certificates signed by the CA.
  coordinator_->KillGroup();
  StartCoordinator({"--worker-token-file", worker_tokens, "--client-token-file", client_tokens,
                    "--tls-cert", d + "/server.pem", "--tls-key", d + "/server.key",
                    "--tls-client-ca", d + "/ca.pem"});
  EXPECT_NE(Cli("workers" + tls + " --token " + kClientToken, &output), 0)
      << "a client without a certificate must be refused";
  EXPECT_EQ(Cli("workers" + tls + " --token " + kClientToken + " --tls-cert " + d +
                    "/client.pem --tls-key " + d + "/client.key",
                &output),
            0) << output;
}

// Listening beyond loopback without tokens is refused, saying how to fix it.
TEST_F(ClusterTest, NonLoopbackWithoutTokensIsRefused) {
  std::string output;
  EXPECT_NE(Cli("coordinator --listen 0.0.0.0:" + std::to_string(port_) + " --db " + dir_ +
                    "/x.db",
                &output),
            0);
  EXPECT_THAT(output, HasSubstr("--listen 127.0.0.1:PORT"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/x.db"));
}

// 7. Invalid sweep files are refused with the file, line and key, and nothing is stored.
TEST_F(ClusterTest, InvalidSweepIsRefusedAndNothingStored) {
  StartCoordinator();
  const std::string bad = WriteFile(
      "bad.yaml", "name: bad\nmodel: {preset: llama-tiny}\nworkload: {arrival: poison}\n"
                  "matrix:\n  request_rate: [1]\n");
  std::string output;
  EXPECT_NE(Cli("submit " + bad + " --coordinator " + target_, &output), 0);
  EXPECT_THAT(output, HasSubstr("bad.yaml:3"));
  EXPECT_THAT(output, HasSubstr("workload.arrival"));
  const std::string unknown =
      WriteFile("unknown.yaml", "name: u\nmodel: {preset: llama-tiny}\nmatrix:\n  rate: [1]\n");
  EXPECT_NE(Cli("submit " + unknown + " --coordinator " + target_, &output), 0);
  EXPECT_THAT(output, HasSubstr("unknown.yaml:4"));
  TestClient client(target_);
  v1::ListExperimentsResponse experiments;
  ASSERT_TRUE(client.Experiments(&experiments).ok());
  EXPECT_EQ(experiments.experiments_size(), 0);
  ASSERT_EQ(Cli("status --coordinator " + target_, &output), 0) << output;
  EXPECT_THAT(output, HasSubstr("no experiments"));
}

}  // namespace
}  // namespace kvscope::testing
