// File: engine/cuda/device_communicator.cc
#include "engine/cuda/device_communicator.h"

#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

#if KVSCOPE_WITH_NCCL
#include <nccl.h>
#endif

namespace kvscope::engine::cuda {
namespace {

class HostStagedCommunicator final : public DeviceCommunicator {
 public:
  explicit HostStagedCommunicator(std::unique_ptr<Communicator> host) : host_(std::move(host)) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string_view kind() const override { return "host-staged"; }

  absl::Status AllReduceSum(void* data, int64_t n, DType dtype, cudaStream_t stream) override {
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("all-reduce of ", n, " elements"));
    if (n == 0 || host_->size() == 1) return absl::OkStatus();
    const size_t bytes = static_cast<size_t>(n) * DTypeSize(dtype);
    staging_.resize(bytes);
    sum_.resize(static_cast<size_t>(n));
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(staging_.data(), data, bytes, cudaMemcpyDeviceToHost, stream));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    ConvertToF32(dtype, staging_.data(), static_cast<size_t>(n), sum_.data());
    KVSCOPE_RETURN_IF_ERROR(host_->AllReduceSum(sum_.data(), n));
    for (int64_t i = 0; i < n; ++i) {
      switch (dtype) {
        case DType::kF32:
          std::memcpy(staging_.data() + 4 * i, &sum_[i], 4);
          break;
        case DType::kBF16: {
          const uint16_t h = F32ToBf16(sum_[i]);
          std::memcpy(staging_.data() + 2 * i, &h, 2);
          break;
        }
        case DType::kF16: {
          const uint16_t h = F32ToF16(sum_[i]);
          std::memcpy(staging_.data() + 2 * i, &h, 2);
          break;
        }
      }
    }
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(data, staging_.data(), bytes, cudaMemcpyHostToDevice, stream));
    // The staging buffer is reused by the next call: wait for the copy to finish.
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }

  void Abort() override { host_->Abort(); }

 private:
  std::unique_ptr<Communicator> host_;
  std::vector<uint8_t> staging_;
  std::vector<float> sum_;
};

#if KVSCOPE_WITH_NCCL
ncclDataType_t NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kF16: return ncclFloat16;
    case DType::kBF16: return ncclBfloat16;
  }
  return ncclFloat32;
}

class NcclCommunicator final : public DeviceCommunicator {
 public:
  NcclCommunicator(ncclComm_t comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  ~NcclCommunicator() override {
    if (!aborted_.exchange(true)) ncclCommDestroy(comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view kind() const override { return "nccl"; }

  absl::Status AllReduceSum(void* data, int64_t n, DType dtype, cudaStream_t stream) override {
    if (aborted_) return absl::AbortedError("tensor-parallel group aborted: another rank failed");
    if (n < 0) return absl::InvalidArgumentError(absl::StrCat("all-reduce of ", n, " elements"));
    if (n == 0) return absl::OkStatus();
    KVSCOPE_CUDA_RETURN_IF_ERROR(ncclAllReduce(data, data, static_cast<size_t>(n),
                                               NcclType(dtype), ncclSum, comm_, stream));
    return absl::OkStatus();
  }

  // ncclCommAbort also releases a rank blocked in a collective (NCCL allows it from
  // another thread); the communicator is unusable afterwards.
  void Abort() override {
    if (!aborted_.exchange(true)) ncclCommAbort(comm_);
  }

 private:
  ncclComm_t comm_;
  const int rank_;
  const int size_;
  std::atomic<bool> aborted_{false};
};
#endif

}  // namespace

absl::StatusOr<std::string> NewNcclUniqueId() {
#if KVSCOPE_WITH_NCCL
  static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes);
  ncclUniqueId id;
  KVSCOPE_CUDA_RETURN_IF_ERROR(ncclGetUniqueId(&id));
  return std::string(id.internal, sizeof(id.internal));
#else
  return absl::UnimplementedError("this kvscope was built without NCCL");
#endif
}

absl::StatusOr<std::unique_ptr<DeviceCommunicator>> CreateNcclCommunicator(
    std::string_view unique_id, int rank, int size, int device) {
  if (unique_id.size() != kNcclUniqueIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL unique id has ", unique_id.size(),
                                                   " bytes, expected ", kNcclUniqueIdBytes));
  }
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL rank ", rank, " of ", size, " is out of range"));
  }
#if KVSCOPE_WITH_NCCL
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  ncclUniqueId id;
  std::memcpy(id.internal, unique_id.data(), kNcclUniqueIdBytes);
  ncclComm_t comm = nullptr;
  KVSCOPE_CUDA_RETURN_IF_ERROR(ncclCommInitRank(&comm, size, id, rank));
  return std::unique_ptr<DeviceCommunicator>(new NcclCommunicator(comm, rank, size));
#else
  return absl::UnimplementedError("this kvscope was built without NCCL");
#endif
}

absl::StatusOr<std::string> GpuIdentity(int device) {
  cudaDeviceProp prop;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = "GPU-";
  for (size_t i = 0; i < sizeof(prop.uuid.bytes); ++i) {
    const auto b = static_cast<uint8_t>(prop.uuid.bytes[i]);
    id.push_back(kHex[b >> 4]);
    id.push_back(kHex[b & 0xf]);
  }
  return id;
}

absl::StatusOr<int> VisibleGpuCount() {
  int count = 0;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetDeviceCount(&count));
  return count;
}

std::unique_ptr<DeviceCommunicator> CreateHostStagedCommunicator(
    std::unique_ptr<Communicator> host) {
  return std::make_unique<HostStagedCommunicator>(std::move(host));
}

}  // namespace kvscope::engine::cuda
