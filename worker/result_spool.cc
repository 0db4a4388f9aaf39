#include "worker/result_spool.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace kvscope::worker {
namespace {

namespace fs = std::filesystem;

constexpr char kPrefix[] = "result-";
constexpr char kSuffix[] = ".json";
constexpr char kTmpSuffix[] = ".tmp";

absl::Status ErrnoError(const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", strerror(errno)));
}

absl::Status FsyncDir(const std::string& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(absl::StrCat("cannot open ", dir));
  const int rc = fsync(fd);
  close(fd);
  if (rc != 0) return ErrnoError(absl::StrCat("fsync ", dir));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

nlohmann::json SpooledResultToJson(const SpooledResult& r) {
  return {{"worker_id", r.worker_id},        {"experiment_id", r.experiment_id},
          {"trial_id", r.trial_id},          {"attempt_id", r.attempt_id},
          {"succeeded", r.report.succeeded}, {"error", r.report.error},
          {"result", r.report.result},       {"requests_jsonl", r.report.requests_jsonl}};
}

absl::StatusOr<SpooledResult> SpooledResultFromJson(const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("attempt_id") || !j["attempt_id"].is_number_integer() ||
      !j.contains("succeeded") || !j["succeeded"].is_boolean()) {
    return absl::InvalidArgumentError("not a spooled result (attempt_id, succeeded missing)");
  }
  SpooledResult r;
  r.attempt_id = j["attempt_id"].get<int64_t>();
  r.worker_id = j.value("worker_id", "");
  r.experiment_id = j.value("experiment_id", "");
  r.trial_id = j.value("trial_id", "");
  r.report.succeeded = j["succeeded"].get<bool>();
  r.report.error = j.value("error", "");
  if (j.contains("result")) r.report.result = j["result"];
  r.report.requests_jsonl = j.value("requests_jsonl", "");
  return r;
}

absl::StatusOr<std::unique_ptr<ResultSpool>> ResultSpool::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("result spool: no directory given");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) {
    return absl::InternalError(
        absl::StrCat("result spool: cannot create directory ", dir, ": ", ec.message()));
  }
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    if (absl::EndsWith(entry.path().filename().string(), kTmpSuffix)) {
      fs::remove(entry.path(), ec);  // a write that a crash interrupted
    }
  }
  return std::unique_ptr<ResultSpool>(new ResultSpool(dir));
}

std::string ResultSpool::PathFor(int64_t attempt_id) const {
  return absl::StrCat(dir_, "/", kPrefix, attempt_id, kSuffix);
}

absl::Status ResultSpool::WriteDurably(const std::string& path, const std::string& text) {
  const std::string tmp = path + kTmpSuffix;
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(absl::StrCat("result spool: cannot create ", tmp));
  size_t written = 0;
  while (written < text.size()) {
    const ssize_t n = write(fd, text.data() + written, text.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const absl::Status s = ErrnoError(absl::StrCat("result spool: write ", tmp));
      close(fd);
      unlink(tmp.c_str());
      return s;
    }
    written += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0) {
    const absl::Status s = ErrnoError(absl::StrCat("result spool: fsync ", tmp));
    close(fd);
    unlink(tmp.c_str());
    return s;
  }
  close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const absl::Status s = ErrnoError(absl::StrCat("result spool: rename to ", path));
    unlink(tmp.c_str());
    return s;
  }
  return FsyncDir(dir_);
}

absl::Status ResultSpool::Put(const SpooledResult& result) {
  const std::string text = SpooledResultToJson(result).dump();
  std::lock_guard<std::mutex> lock(mu_);
  return WriteDurably(PathFor(result.attempt_id), text);
}

absl::StatusOr<std::vector<SpooledResult>> ResultSpool::List() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<SpooledResult> results;
  std::error_code ec;
  fs::directory_iterator it(dir_, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("result spool: cannot list ", dir_, ": ", ec.message()));
  }
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    absl::string_view id_text = name;
    int64_t attempt_id;
    if (!absl::ConsumePrefix(&id_text, kPrefix) || !absl::ConsumeSuffix(&id_text, kSuffix) ||
        !absl::SimpleAtoi(id_text, &attempt_id)) {
      continue;
    }
    absl::StatusOr<std::string> text = ReadFile(entry.path().string());
    absl::StatusOr<SpooledResult> parsed = absl::InternalError("unreadable");
    if (text.ok()) {
      const nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
      parsed = j.is_discarded() ? absl::InvalidArgumentError("not JSON") : SpooledResultFromJson(j);
    }
    if (!parsed.ok() || parsed->attempt_id != attempt_id) {
      std::fprintf(
          stderr,
          "kvscope worker: result spool: %s is damaged (%s); set aside as "
          "%s.corrupt\n",
          entry.path().c_str(),
          parsed.ok() ? "attempt id mismatch" : std::string(parsed.status().message()).c_str(),
          name.c_str());
      fs::rename(entry.path(), entry.path().string() + ".corrupt", ec);
      continue;
    }
    results.push_back(std::move(*parsed));
  }
  std::sort(results.begin(), results.end(), [](const SpooledResult& a, const SpooledResult& b) {
    return a.attempt_id < b.attempt_id;
  });
  return results;
}

absl::Status ResultSpool::Remove(int64_t attempt_id) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string path = PathFor(attempt_id);
  if (unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return ErrnoError(absl::StrCat("result spool: cannot remove ", path));
  }
  return FsyncDir(dir_);
}

std::string ResultSpool::LoadWorkerId() {
  absl::StatusOr<std::string> text = ReadFile(dir_ + "/worker_id");
  if (!text.ok()) return "";
  return std::string(absl::StripAsciiWhitespace(*text));
}

absl::Status ResultSpool::SaveWorkerId(const std::string& worker_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return WriteDurably(dir_ + "/worker_id", worker_id + "\n");
}

}  // namespace kvscope::worker
