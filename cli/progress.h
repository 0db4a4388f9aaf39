// File: cli/progress.h
//
// Progress of a long run on stderr: a bar with ETA redrawn in place on a terminal, plain
// lines (every 10% or 10 s) otherwise, so logs stay readable.
#ifndef KVSCOPE_CLI_PROGRESS_H_
#define KVSCOPE_CLI_PROGRESS_H_

#include <cstdint>
#include <string>

namespace kvscope::cli {

class ProgressReporter {
 public:
  // `label` names the unit ("requests"); `tty` chooses the bar.
  ProgressReporter(std::string label, bool tty);
  void Update(int64_t done, int64_t total, double elapsed_s);
  // Ends the bar's line.
  void Finish();

 private:
  std::string label_;
  bool tty_;
  int64_t last_decile_ = -1;
  double last_print_s_ = -1e9;
  bool drawn_ = false;
};

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_PROGRESS_H_
