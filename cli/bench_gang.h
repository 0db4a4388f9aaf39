// File: cli/bench_gang.h
//
// `kvscope bench` as one process of a gang (`nodes` > 1, docs/bench.md "Gangs"): the
// --gang-* flags, their checks, the fingerprint that driver and followers compare, and the
// follower's whole run. The driver's run is the ordinary bench with its engine steps going
// through engine/gang_driver.h (cli/bench_command.cc).
#ifndef KVSCOPE_CLI_BENCH_GANG_H_
#define KVSCOPE_CLI_BENCH_GANG_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/bench_config.h"
#include "engine/gang_session.h"
#include "engine/weights.h"
#include "kvcache/kv_manager.h"

namespace kvscope::cli {

struct GangFlags {
  bool enabled = false;    // any of --gang-rank, --gang-size, --gang-rendezvous-file given
  bool all_given = false;  // all three given
  int64_t rank = 0;      // --gang-rank
  int64_t size = 0;      // --gang-size
  std::string rendezvous_file;
  std::string listen_host = "127.0.0.1";
  double timeout_s = 120;  // --gang-timeout: joining, on both sides
};

// Checks the flags against the configuration: nodes > 1 needs them (FailedPrecondition
// saying how such a trial runs), they come together, --gang-size equals nodes, the rank is
// in range (InvalidArgument naming the flag).
absl::Status CheckGangFlags(const GangFlags& gang, const engine::BenchConfig& config);

engine::GangLayout LayoutOf(const GangFlags& gang, const engine::BenchConfig& config);

// What a process of the gang will run, as text: the configuration without its output
// directory, with the resolved max_model_len and the calibration tokens. Driver and
// followers must agree on it.
std::string GangFingerprint(const engine::BenchConfig& config,
                            const kvcache::KvManagerContext& context);

// A follower's whole run: reads the rendezvous file, joins, builds its ranks and the
// replica KV manager, and executes the driver's steps. Returns the exit code (0 when the
// driver said done); errors say what failed.
absl::StatusOr<int> RunGangFollowerProcess(const GangFlags& gang, const engine::BenchConfig& config,
                                           std::shared_ptr<const engine::ModelWeights> weights,
                                           const kvcache::KvManagerContext& context);

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_BENCH_GANG_H_
