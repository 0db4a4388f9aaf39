#include "worker/trial_runner.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace kvscope::worker {
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InternalError(absl::StrCat("error reading ", path));
  return text.str();
}

absl::Status WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// The last `max_lines` non-empty lines of the file's last 64 KiB, each at most 500 bytes.
std::string TailLines(const std::string& path, int32_t max_lines) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > 65536 ? size - 65536 : 0;
  in.seekg(start);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipWhitespace())) {
    // A progress bar redrawn with \r: keep the last state only.
    const size_t cr = line.rfind('\r', line.size() >= 2 ? line.size() - 2 : 0);
    if (cr != absl::string_view::npos && cr + 1 < line.size()) line.remove_prefix(cr + 1);
    lines.emplace_back(line.substr(0, 500));
  }
  if (static_cast<int32_t>(lines.size()) > max_lines) {
    lines.erase(lines.begin(), lines.end() - max_lines);
  }
  return absl::StrJoin(lines, "\n");
}

// Only [A-Za-z0-9_.-] from a trial id, for a directory name.
std::string SafeName(const std::string& text) {
  std::string out;
  for (char c : text) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    out.push_back(ok ? c : '_');
  }
  return out;
}

}  // namespace

absl::StatusOr<TrialProgress> ParseProgress(const std::string& text) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("requests_done") || !j["requests_done"].is_number() ||
      !j.contains("requests_total") || !j["requests_total"].is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("not a progress record: ", text.substr(0, 200)));
  }
  TrialProgress p;
  p.requests_done = j["requests_done"].get<int64_t>();
  p.requests_total = j["requests_total"].get<int64_t>();
  if (j.contains("elapsed_s") && j["elapsed_s"].is_number()) {
    p.elapsed_s = j["elapsed_s"].get<double>();
  }
  return p;
}

std::string SignalName(int signal_number) {
  switch (signal_number) {
    case SIGABRT:
      return "SIGABRT";
    case SIGKILL:
      return "SIGKILL";
    case SIGSEGV:
      return "SIGSEGV";
    case SIGBUS:
      return "SIGBUS";
    case SIGFPE:
      return "SIGFPE";
    case SIGILL:
      return "SIGILL";
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGHUP:
      return "SIGHUP";
    case SIGPIPE:
      return "SIGPIPE";
    case SIGQUIT:
      return "SIGQUIT";
    case SIGTRAP:
      return "SIGTRAP";
    case SIGXCPU:
      return "SIGXCPU";
    case SIGXFSZ:
      return "SIGXFSZ";
    default:
      break;
  }
  return absl::StrCat("signal ", signal_number);
}

TrialRunner::TrialRunner(TrialRunnerOptions options, coordinator::TrialAssignment assignment,
                         std::string work_dir)
    : options_(std::move(options)),
      assignment_(std::move(assignment)),
      work_dir_(std::move(work_dir)) {}

void TrialRunner::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_requested_.store(true);
  }
  wake_.notify_all();
}

absl::StatusOr<pid_t> TrialRunner::Spawn() {
  std::error_code ec;
  fs::create_directories(work_dir_, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create work dir ", work_dir_, ": ", ec.message()));
  }
  fs::remove_all(fs::path(work_dir_) / "out", ec);
  fs::remove(fs::path(work_dir_) / "progress.json", ec);
  if (options_.gang.world_size > 1 && options_.gang.rank > 0) {
    // Written before the child starts: the follower connects to what it names.
    if (absl::Status s = WriteFile(RendezvousPath(), rendezvous_blob_); !s.ok()) return s;
  } else {
    fs::remove(RendezvousPath(), ec);
  }
  const std::string config = work_dir_ + "/config.yaml";
  if (absl::Status s = WriteFile(config, assignment_.config_yaml); !s.ok()) return s;
  if (access(options_.kvscope_binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot execute the kvscope binary ", options_.kvscope_binary, ": ", strerror(errno)));
  }

  // Everything the child needs is prepared before fork(): between fork and exec a
  // multi-threaded parent's child may only make async-signal-safe calls.
  std::vector<std::string> args = {options_.kvscope_binary,
                                   "bench",
                                   "--config",
                                   config,
                                   "--out",
                                   work_dir_ + "/out",
                                   "--progress-file",
                                   work_dir_ + "/progress.json"};
  if (options_.gang.world_size > 1) {
    args.insert(args.end(), {"--gang-rank", absl::StrCat(options_.gang.rank), "--gang-size",
                             absl::StrCat(options_.gang.world_size), "--gang-rendezvous-file",
                             RendezvousPath()});
    if (options_.gang.rank == 0) {
      args.insert(args.end(), {"--gang-listen-host", options_.gang_listen_host});
    }
  }
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (!assignment_.gpu_indices.empty() && absl::StartsWith(*e, "CUDA_VISIBLE_DEVICES=")) {
      continue;
    }
    env.emplace_back(*e);
  }
  if (!assignment_.gpu_indices.empty()) {
    env.push_back(
        absl::StrCat("CUDA_VISIBLE_DEVICES=", absl::StrJoin(assignment_.gpu_indices, ",")));
  }
  std::vector<char*> argv, envp;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  const int out_fd =
      open((work_dir_ + "/stdout.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd =
      open((work_dir_ + "/stderr.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto close_all = [&] {
    for (int fd : {out_fd, err_fd, null_fd}) {
      if (fd >= 0) close(fd);
    }
  };
  if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
    const std::string why = strerror(errno);
    close_all();
    return absl::InternalError(absl::StrCat("cannot open the logs in ", work_dir_, ": ", why));
  }
  const pid_t pid = fork();
  if (pid < 0) {
    const std::string why = strerror(errno);
    close_all();
    return absl::InternalError(absl::StrCat("fork failed: ", why));
  }
  if (pid == 0) {
    // Child: its own process group, so that a stop reaches everything it starts.
    setpgid(0, 0);
    // Default signal handling (the daemon may have installed handlers or blocked some).
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(null_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
#ifdef SYS_close_range
    syscall(SYS_close_range, 3U, ~0U, 0U);
#endif
    execve(argv[0], argv.data(), envp.data());
    static const char kMessage[] = "kvscope worker: execve of the kvscope binary failed\n";
    (void)!write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    _exit(127);
  }
  setpgid(pid, pid);  // also in the parent, so a stop right away reaches the group
  close_all();
  return pid;
}

coordinator::ResultReport TrialRunner::Run(
    const std::function<void(const TrialProgress&)>& on_progress) {
  coordinator::ResultReport report;
  if (stop_requested_.load()) {
    report.error = "stopped before it started";
    return report;
  }
  const bool gang = options_.gang.world_size > 1;
  if (gang && options_.gang.rank > 0) {
    if (!options_.rendezvous.await) {
      report.error = "gang rank without a rendezvous (internal error: no await hook)";
      return report;
    }
    absl::StatusOr<std::string> blob =
        options_.rendezvous.await([this] { return stop_requested_.load(); });
    if (!blob.ok()) {
      report.error = absl::StrCat("rank ", options_.gang.rank, " of ", options_.gang.world_size,
                                  " could not meet rank 0: ", blob.status().message());
      return report;
    }
    rendezvous_blob_ = *std::move(blob);
    if (stop_requested_.load()) {
      report.error = "stopped before it started";
      return report;
    }
  }
  absl::StatusOr<pid_t> spawned = Spawn();
  if (!spawned.ok()) {
    report.error = absl::StrCat("could not start the trial: ", spawned.status().message());
    return report;
  }
  const pid_t pid = *spawned;
  const std::string progress_path = work_dir_ + "/progress.json";
  std::string last_progress;
  auto check_progress = [&] {
    absl::StatusOr<std::string> text = ReadFile(progress_path);
    if (!text.ok() || *text == last_progress) return;
    last_progress = *text;
    absl::StatusOr<TrialProgress> progress = ParseProgress(*text);
    if (progress.ok() && on_progress) on_progress(*progress);
  };

  // Rank 0: the child writes its blob (atomically, by rename) once it listens.
  bool published = !gang || options_.gang.rank > 0;
  std::string publish_error;
  auto check_rendezvous = [&] {
    if (published) return;
    absl::StatusOr<std::string> blob = ReadFile(RendezvousPath());
    if (!blob.ok() || blob->empty()) return;
    published = true;
    const absl::Status s = options_.rendezvous.publish
                               ? options_.rendezvous.publish(*blob)
                               : absl::InternalError("no publish hook");
    if (!s.ok()) {
      publish_error = absl::StrCat("could not publish the gang's rendezvous: ", s.message());
      Stop();
    }
  };

  int wait_status = 0;
  bool sent_term = false, sent_kill = false;
  SteadyClock::time_point term_time;
  const auto poll = std::chrono::duration_cast<SteadyClock::duration>(
      std::chrono::duration<double>(options_.poll_interval_seconds));
  for (;;) {
    const pid_t done = waitpid(pid, &wait_status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) {
      // Cannot happen for our own child; fail the attempt rather than spin.
      kill(-pid, SIGKILL);
      report.error = absl::StrCat("waitpid failed: ", strerror(errno));
      return report;
    }
    check_progress();
    check_rendezvous();
    if (stop_requested_.load()) {
      const SteadyClock::time_point now = SteadyClock::now();
      if (!sent_term) {
        kill(-pid, SIGTERM);
        sent_term = true;
        term_time = now;
      } else if (!sent_kill &&
                 now - term_time >= std::chrono::duration<double>(options_.stop_grace_seconds)) {
        kill(-pid, SIGKILL);
        sent_kill = true;
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait_for(lock, poll, [&] { return stop_requested_.load() && !sent_term; });
  }
  // Whatever the child left in its group (it starts none today) goes with it.
  kill(-pid, SIGKILL);
  check_progress();
  if (!publish_error.empty()) {
    report.error = publish_error;
    return report;
  }
  return Collect(wait_status, sent_term);
}

coordinator::ResultReport TrialRunner::Collect(int wait_status, bool stopped) {
  coordinator::ResultReport report;
  const std::string stderr_path = work_dir_ + "/stderr.log";
  auto with_stderr = [&](std::string message) {
    const std::string tail = TailLines(stderr_path, options_.stderr_tail_lines);
    if (!tail.empty()) absl::StrAppend(&message, "; last lines of stderr:\n", tail);
    return message;
  };
  if (stopped) {
    report.error = "stopped on request (SIGTERM to the trial's process group)";
    return report;
  }
  if (WIFSIGNALED(wait_status)) {
    const int sig = WTERMSIG(wait_status);
    std::string message =
        absl::StrCat("kvscope bench was killed by ", SignalName(sig), " (", strsignal(sig), ")");
    if (sig == SIGKILL) absl::StrAppend(&message, "; possibly out of memory");
    report.error = with_stderr(std::move(message));
    return report;
  }
  const int code = WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : -1;
  if (code != 0) {
    std::string message = absl::StrCat("kvscope bench exited with code ", code);
    if (code == 2) absl::StrAppend(&message, " (invalid configuration)");
    if (code == 127)
      absl::StrAppend(&message, " (could not execute ", options_.kvscope_binary, ")");
    report.error = with_stderr(std::move(message));
    return report;
  }
  if (options_.gang.world_size > 1 && options_.gang.rank > 0) {
    report.succeeded = true;  // rank 0 reports the trial's result
    return report;
  }
  const std::string out = work_dir_ + "/out";
  absl::StatusOr<std::string> result_text = ReadFile(out + "/result.json");
  if (!result_text.ok()) {
    report.error = with_stderr(
        absl::StrCat("kvscope bench exited with code 0 but ", result_text.status().message()));
    return report;
  }
  nlohmann::json result = nlohmann::json::parse(*result_text, nullptr, false);
  if (result.is_discarded() || !result.is_object()) {
    report.error = absl::StrCat("kvscope bench exited with code 0 but ", out,
                                "/result.json is not a JSON object");
    return report;
  }
  absl::StatusOr<std::string> requests = ReadFile(out + "/requests.jsonl");
  if (!requests.ok()) {
    report.error =
        absl::StrCat("kvscope bench exited with code 0 but ", requests.status().message());
    return report;
  }
  report.succeeded = true;
  report.result = std::move(result);
  report.requests_jsonl = std::move(*requests);
  return report;
}

std::string AttemptDirName(const coordinator::TrialAssignment& assignment) {
  return absl::StrCat(SafeName(assignment.trial_id), "-a", assignment.attempt_id);
}

}  // namespace kvscope::worker
