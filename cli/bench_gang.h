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

#if KVSCOPE_WITH_CUDA
#include "engine/cuda/gpu_engine.h"
#endif

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

#if KVSCOPE_WITH_CUDA
// The GPU engine options of `c` for one process: dtype, CUDA graphs, rank caches from
// `manager`. The caller sets the ranks, devices and communicator.
absl::StatusOr<engine::cuda::GpuEngineOptions> GpuEngineOptionsFor(
    const engine::BenchConfig& c, kvcache::KvManager* manager);

// This process's GPU engine in a gang (backend: cuda, nodes > 1), on every process after
// joining and before the first step: local rank i runs on visible device i mod (visible
// devices) (the worker sets CUDA_VISIBLE_DEVICES to the process's GPUs); the processes
// agree on the data plane (engine/gang_data_plane.h: the driver with
// membership->followers, a follower with membership->driver, each waiting at most
// `timeout_s`): NCCL when every rank of the gang has a GPU of its own, else host-staged
// over membership->comms (taken). Prints the choice.
absl::StatusOr<std::unique_ptr<engine::cuda::GpuEngine>> CreateGpuGangEngine(
    const engine::BenchConfig& c, const engine::GangLayout& layout,
    engine::GangMembership* membership, std::shared_ptr<const engine::ModelWeights> weights,
    kvcache::KvManager* manager, double timeout_s);
#endif

// A follower's whole run: reads the rendezvous file, joins, builds its ranks and the
// replica KV manager, and executes the driver's steps. Returns the exit code (0 when the
// driver said done); errors say what failed.
absl::StatusOr<int> RunGangFollowerProcess(const GangFlags& gang, const engine::BenchConfig& config,
                                           std::shared_ptr<const engine::ModelWeights> weights,
                                           const kvcache::KvManagerContext& context);

}  // namespace kvscope::cli

#endif  // KVSCOPE_CLI_BENCH_GANG_H_
