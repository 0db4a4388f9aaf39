// File: kernels/cuda/device_buffer.cc
#include "kernels/cuda/device_buffer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace kvscope::kernels::cuda {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  const cudaError_t rc = cudaMalloc(&buffer.data_, bytes);
  if (rc != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls are not affected
    return ErrorToStatus(rc, absl::StrCat("cudaMalloc(", bytes, " bytes)").c_str(), __FILE__,
                         __LINE__);
  }
  buffer.bytes_ = bytes;
  return buffer;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes) {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy of ", bytes, " bytes into a device buffer of ", bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpy(data_, src, bytes, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes) const {
  if (bytes > bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat("copy of ", bytes, " bytes out of a device buffer of ", bytes_));
  }
  if (bytes == 0) return absl::OkStatus();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, data_, bytes, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status DeviceBuffer::Fill(uint8_t byte) {
  if (bytes_ == 0) return absl::OkStatus();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemset(data_, byte, bytes_));
  return absl::OkStatus();
}

absl::StatusOr<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes, bool mapped) {
  PinnedBuffer buffer;
  if (bytes == 0) return buffer;
  const cudaError_t rc =
      cudaHostAlloc(&buffer.data_, bytes, mapped ? cudaHostAllocMapped : cudaHostAllocDefault);
  if (rc != cudaSuccess) {
    cudaGetLastError();
    return ErrorToStatus(rc, absl::StrCat("cudaHostAlloc(", bytes, " bytes)").c_str(),
                         __FILE__, __LINE__);
  }
  buffer.bytes_ = bytes;
  buffer.mapped_ = mapped;
  return buffer;
}

PinnedBuffer::~PinnedBuffer() {
  if (data_ != nullptr) cudaFreeHost(data_);
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    mapped_ = std::exchange(other.mapped_, false);
  }
  return *this;
}

absl::StatusOr<void*> PinnedBuffer::DevicePointer() const {
  if (!mapped_) {
    return absl::FailedPreconditionError("pinned buffer was not allocated as mapped");
  }
  void* device = nullptr;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaHostGetDevicePointer(&device, data_, 0));
  return device;
}

int VisibleDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

absl::Status Reserve(DeviceBuffer& buffer, size_t bytes) {
  if (buffer.bytes() >= bytes && buffer.data() != nullptr) return absl::OkStatus();
  buffer = DeviceBuffer();
  KVSCOPE_ASSIGN_OR_RETURN(buffer, DeviceBuffer::Allocate(std::max<size_t>(bytes, 16)));
  return absl::OkStatus();
}

absl::Status ReservePinned(PinnedBuffer& buffer, size_t bytes) {
  if (buffer.bytes() >= bytes && buffer.data() != nullptr) return absl::OkStatus();
  buffer = PinnedBuffer();
  KVSCOPE_ASSIGN_OR_RETURN(buffer, PinnedBuffer::Allocate(std::max<size_t>(bytes, 16)));
  return absl::OkStatus();
}

}  // namespace kvscope::kernels::cuda
