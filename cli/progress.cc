#include "cli/progress.h"

#include <cstdio>

namespace kvscope::cli {

ProgressReporter::ProgressReporter(std::string label, bool tty)
    : label_(std::move(label)), tty_(tty) {}

void ProgressReporter::Update(int64_t done, int64_t total, double elapsed_s) {
  const double fraction = total > 0 ? static_cast<double>(done) / total : 1.0;
  const double eta = done > 0 ? elapsed_s * (total - done) / done : 0.0;
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '=');
    if (filled < kWidth) bar += '>';
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "\r[%s] %lld/%lld %s  %.1fs elapsed  ETA %.1fs ", bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total), label_.c_str(),
                 elapsed_s, eta);
    std::fflush(stderr);
    drawn_ = true;
    return;
  }
  const int64_t decile = static_cast<int64_t>(fraction * 10);
  if (decile != last_decile_ || elapsed_s - last_print_s_ >= 10.0) {
    std::fprintf(stderr, "progress: %lld/%lld %s, %.1fs elapsed, ETA %.1fs\n",
                 static_cast<long long>(done), static_cast<long long>(total), label_.c_str(),
                 elapsed_s, eta);
    last_decile_ = decile;
    last_print_s_ = elapsed_s;
  }
}

void ProgressReporter::Finish() {
  if (tty_ && drawn_) std::fputc('\n', stderr);
  drawn_ = false;
}

}  // namespace kvscope::cli
