// File: tests/cluster/cluster_test_util.h
//
// Real processes on loopback for the cluster tests: free ports, child processes of the
// kvscope binary (each in its own process group, its output in a log file, killed in
// teardown), a gRPC client for checks, and polling with generous deadlines.
#ifndef KVSCOPE_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_
#define KVSCOPE_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "coordinator/grpc_channel.h"
#include "gtest/gtest.h"
#include "kvscope/v1/client.grpc.pb.h"
#include "tests/test_util.h"

namespace kvscope::testing {

// A port that was free a moment ago on 127.0.0.1.
inline int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

inline bool PollUntil(const std::function<bool()>& condition, double seconds = 60) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(int64_t(seconds * 1000));
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return condition();
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A child process running `kvscope ARGS...` in its own process group; stdout and stderr go
// to `log`. The destructor kills the whole group (the worker's trial children included).
class Child {
 public:
  Child(std::vector<std::string> args, std::string log) : log_(std::move(log)) {
    args.insert(args.begin(), KvscopeBinary());
    pid_ = fork();
    if (pid_ == 0) {
      setpgid(0, 0);
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    setpgid(pid_, pid_);
  }
  ~Child() { KillGroup(); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  std::string Log() const { return ReadAll(log_); }
  void Signal(int sig) {
    if (pid_ > 0 && !exited_) kill(pid_, sig);
  }
  // SIGKILL to the whole group, then reaps the process.
  void KillGroup() {
    if (pid_ <= 0) return;
    if (!exited_) {
      kill(-pid_, SIGCONT);
      kill(-pid_, SIGKILL);
      waitpid(pid_, &status_, 0);
      exited_ = true;
    }
  }
  // Kill -9 of the process alone (its children live on), as a crash would.
  void Crash() {
    Signal(SIGKILL);
    waitpid(pid_, &status_, 0);
    exited_ = true;
  }
  // Waits up to `seconds` for the process to exit; returns whether it did.
  bool WaitExit(double seconds, int* exit_code = nullptr) {
    if (!exited_) {
      PollUntil([&] { return waitpid(pid_, &status_, WNOHANG) == pid_; }, seconds);
      exited_ = waitpid(pid_, &status_, WNOHANG) != 0 || exited_;
    }
    if (exit_code != nullptr) {
      *exit_code = WIFEXITED(status_) ? WEXITSTATUS(status_) : 128 + WTERMSIG(status_);
    }
    return exited_;
  }
  bool exited() const { return exited_; }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool exited_ = false;
};

// A gRPC client of ClientService for the checks.
class TestClient {
 public:
  explicit TestClient(const std::string& target, const std::string& token = "",
                      const std::string& ca = "")
      : token_(token) {
    coordinator::ChannelOptions options;
    options.target = target;
    options.tls_ca_file = ca;
    stub_ = v1::ClientService::NewStub(*coordinator::MakeChannel(options));
  }

  grpc::Status Get(const std::string& id, v1::GetExperimentResponse* response) {
    v1::GetExperimentRequest request;
    request.set_experiment_id(id);
    request.set_include_trials(true);
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, token_, 5);
    return stub_->GetExperiment(&context, request, response);
  }
  grpc::Status Results(const std::string& id, std::vector<v1::ResultRow>* rows) {
    v1::FetchResultsRequest request;
    request.set_experiment_id(id);
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, token_, 10);
    auto reader = stub_->FetchResults(&context, request);
    rows->clear();
    v1::ResultRow row;
    while (reader->Read(&row)) rows->push_back(row);
    return reader->Finish();
  }
  grpc::Status Workers(v1::ListWorkersResponse* response) {
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, token_, 5);
    return stub_->ListWorkers(&context, {}, response);
  }
  grpc::Status Experiments(v1::ListExperimentsResponse* response) {
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, token_, 5);
    return stub_->ListExperiments(&context, {}, response);
  }
  grpc::Status Submit(const std::string& yaml, std::string* id) {
    v1::SubmitRequest request;
    request.set_sweep_yaml(yaml);
    request.set_source("sweep.yaml");
    v1::SubmitResponse response;
    grpc::ClientContext context;
    coordinator::PrepareCall(&context, token_, 10);
    grpc::Status s = stub_->Submit(&context, request, &response);
    *id = response.experiment_id();
    return s;
  }
  // The experiment's info, or an experiment with no id while unreachable.
  v1::ExperimentInfo Info(const std::string& id) {
    v1::GetExperimentResponse response;
    if (!Get(id, &response).ok()) return {};
    return response.experiment();
  }

 private:
  std::string token_;
  std::unique_ptr<v1::ClientService::Stub> stub_;
};

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_CLUSTER_CLUSTER_TEST_UTIL_H_
