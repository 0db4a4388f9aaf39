// File: kernels/cuda/device_buffer.h
//
// Owning handles for device memory and pinned host memory, created through StatusOr so that
// an out-of-memory is a ResourceExhausted naming the size, never an exception. Move-only;
// not thread-safe (one owner). Host-only header.
#ifndef KVSCOPE_KERNELS_CUDA_DEVICE_BUFFER_H_
#define KVSCOPE_KERNELS_CUDA_DEVICE_BUFFER_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvscope::kernels::cuda {

// `bytes` of device memory (cudaMalloc), freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept { *this = std::move(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }

  // Synchronous copies of `bytes` (<= bytes()) from/to host memory.
  absl::Status CopyFromHost(const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, size_t bytes) const;
  // Every byte set to `byte` (0xFF makes NaN of every float type and -1 of int32), so that
  // tests see which elements a kernel left unwritten.
  absl::Status Fill(uint8_t byte);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// `bytes` of page-locked host memory (cudaHostAlloc); `mapped` also maps it into the device
// address space for zero-copy reads (DevicePointer()).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static absl::StatusOr<PinnedBuffer> Allocate(size_t bytes, bool mapped = false);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer&& other) noexcept { *this = std::move(other); }
  PinnedBuffer& operator=(PinnedBuffer&& other) noexcept;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;

  void* data() const { return data_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  size_t bytes() const { return bytes_; }
  // The device address of a mapped buffer; FailedPrecondition if not mapped.
  absl::StatusOr<void*> DevicePointer() const;

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  bool mapped_ = false;
};

// Number of visible CUDA devices; 0 (not an error) when there is no device or no driver.
int VisibleDeviceCount();

// (Re)allocates `buffer` to at least `bytes` (at least 16) unless it is already that large;
// the contents are not kept. For workspaces that grow with the step.
absl::Status Reserve(DeviceBuffer& buffer, size_t bytes);
absl::Status ReservePinned(PinnedBuffer& buffer, size_t bytes);

}  // namespace kvscope::kernels::cuda

#endif  // KVSCOPE_KERNELS_CUDA_DEVICE_BUFFER_H_
