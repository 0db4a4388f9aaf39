// File: engine/cuda/device_communicator.h
//
// Collectives over device buffers between the tensor-parallel ranks of the GPU engine. Two
// implementations behind one interface, so that the model code is the same for both:
//   - NCCL, one GPU per rank (ranks are threads of one process or separate processes,
//     possibly on several workers: the unique id travels from rank 0 to the others through
//     the coordinator, see docs/cluster.md);
//   - host-staged, over the CPU Communicator (engine/communicator.h), for several ranks
//     on one GPU, which NCCL refuses ("invalid usage"): the one-GPU machine tests TP > 1
//     this way. Each call copies to the host, sums there in rank order and copies back.
// A communicator belongs to one rank's thread (thread-compatible); Abort() may be called
// from any thread.
#ifndef KVSCOPE_ENGINE_CUDA_DEVICE_COMMUNICATOR_H_
#define KVSCOPE_ENGINE_CUDA_DEVICE_COMMUNICATOR_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "engine/communicator.h"

namespace kvscope::engine::cuda {

class DeviceCommunicator {
 public:
  virtual ~DeviceCommunicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "nccl" or "host-staged" (reported in the result file).
  virtual std::string_view kind() const = 0;
  // In place: data[0, n) (device memory of `dtype`) becomes the element-wise sum over the
  // ranks, ordered on `stream` (the call returns once the work is enqueued for NCCL, once it
  // is done for host-staged). All ranks call it with the same n and dtype. Aborted once the
  // group is aborted.
  virtual absl::Status AllReduceSum(void* data, int64_t n, DType dtype,
                                    cudaStream_t stream) = 0;
  // Marks the group failed; ranks blocked in a collective return an error.
  virtual void Abort() = 0;
};

// Size of an NCCL unique id (NCCL_UNIQUE_ID_BYTES).
inline constexpr size_t kNcclUniqueIdBytes = 128;

// A fresh NCCL unique id (rank 0 creates it and hands it to the others). Unimplemented in
// builds without NCCL.
absl::StatusOr<std::string> NewNcclUniqueId();

// Joins the NCCL group `unique_id` as `rank` of `size` on CUDA device `device` (made current
// on the calling thread). Blocks until every rank has joined: ranks that are threads of one
// process must call it concurrently. InvalidArgument for a bad id, rank or size.
absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateNcclCommunicator(
    std::string_view unique_id, int rank, int size, int device);

// The identity of CUDA device `device`: "GPU-" and its UUID in hex (cudaDeviceProp::uuid,
// the same in every process and on every machine that sees the device), so that the
// processes of a gang can tell whether two ranks share a GPU (engine/gang_data_plane.h).
absl::StatusOr<std::string> GpuIdentity(int device);

// The CUDA devices this process sees (CUDA_VISIBLE_DEVICES applied).
absl::StatusOr<int> VisibleGpuCount();

// Wraps a CPU communicator (for example LocalCommGroup::ForRank) for device buffers. The
// sum runs in float32 on the host in rank order, so every rank gets identical bits and the
// result equals the CPU engine's reduction rounded once to `dtype`.
std::unique_ptr<DeviceCommunicator> CreateHostStagedCommunicator(
    std::unique_ptr<Communicator> host);

}  // namespace kvscope::engine::cuda

#endif  // KVSCOPE_ENGINE_CUDA_DEVICE_COMMUNICATOR_H_
