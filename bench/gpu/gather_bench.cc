// File: bench/gpu/gather_bench.cc
//
// The InfiniGen prefetch gather (kernels/cuda/infinigen_ops.h) both ways, for one decode
// step of a 32-layer model: per layer and sequence, each of 8 KV heads (head_dim 128, bf16)
// selects a fraction (10%, 20%, 50%) of 4096 cached tokens, whose K and V rows move from the
// pinned host pool into the device prefetch buffer. Batch 1 and 16.
//   copy_engine  pack on the host into pinned staging (two buffers, alternating, so that
//                packing layer l+1 overlaps layer l's copy) + one cudaMemcpyAsync + a
//                scatter kernel per layer (GatherCopyEngine);
//   zero_copy    one kernel per layer reading mapped pinned memory (GatherZeroCopy), row
//                lists already on the device;
//   memcpy_contiguous  the same bytes as one contiguous pinned->device cudaMemcpyAsync per
//                layer: the PCIe ceiling, for reference.
// Timing: CUDA events around the 32 layers of a step (the host packing is inside: the
// stream is idle at the start event, so the stop event cannot complete before the last
// layer was packed and copied); warm-up excluded; the median over reps.
// Output: TSV, one line per (method, shape): method, batch, select_frac, layers,
// rows_per_layer, bytes_per_step, median_us, GB/s (bytes = K/V data, 1e9 bytes/s).
// One layer's host pool is allocated (each layer gathers its own random selection from it)
// to keep pinned memory at 270 MB for batch 16.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/infinigen_ops.h"

namespace kvscope::kernels::cuda {
namespace {

constexpr int kLayers = 32;
constexpr int kKvHeads = 8;
constexpr int kHeadDim = 128;
constexpr int kContext = 4096;
constexpr int kBlockSize = 16;
constexpr DType kDType = DType::kBF16;

#define BENCH_RETURN_IF_ERROR(expr)      \
  do {                                   \
    const absl::Status st_ = (expr);     \
    if (!st_.ok()) return st_;           \
  } while (0)

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

absl::Status RunShape(int batch, double frac, cudaStream_t stream) {
  const int selected = static_cast<int>(frac * kContext);
  const int64_t host_slots = static_cast<int64_t>(batch) * kContext;
  const int64_t dst_slots = static_cast<int64_t>(batch) * selected;
  const int64_t rows_per_layer = static_cast<int64_t>(batch) * kKvHeads * selected;
  const size_t elem = DTypeSize(kDType);
  const size_t host_bytes = static_cast<size_t>(host_slots) * kKvHeads * kHeadDim * elem;

  auto host_k = PinnedBuffer::Allocate(host_bytes, /*mapped=*/true);
  auto host_v = PinnedBuffer::Allocate(host_bytes, /*mapped=*/true);
  if (!host_k.ok()) return host_k.status();
  if (!host_v.ok()) return host_v.status();
  std::memset(host_k->data(), 0x3C, host_bytes);
  std::memset(host_v->data(), 0x41, host_bytes);
  auto mapped_k = host_k->DevicePointer();
  auto mapped_v = host_v->DevicePointer();
  if (!mapped_k.ok()) return mapped_k.status();
  if (!mapped_v.ok()) return mapped_v.status();
  const int64_t host_blocks = host_slots / kBlockSize;
  const int64_t dst_blocks = (dst_slots + kBlockSize - 1) / kBlockSize;
  const CudaKvPool host_pool{host_k->data(), host_v->data(), host_blocks, kKvHeads,
                            kBlockSize,     kHeadDim,       kDType};
  const CudaKvPool mapped_pool{*mapped_k, *mapped_v, host_blocks, kKvHeads,
                              kBlockSize, kHeadDim, kDType};
  auto dst_k = DeviceBuffer::Allocate(dst_blocks * kBlockSize * kKvHeads * kHeadDim * elem);
  auto dst_v = DeviceBuffer::Allocate(dst_blocks * kBlockSize * kKvHeads * kHeadDim * elem);
  if (!dst_k.ok()) return dst_k.status();
  if (!dst_v.ok()) return dst_v.status();
  const CudaKvPool dst{dst_k->data(), dst_v->data(), dst_blocks, kKvHeads,
                      kBlockSize,    kHeadDim,      kDType};

  // Per layer: each (sequence, head) selects `selected` of its 4096 tokens, ascending.
  std::mt19937 rng(1234 + batch * 7 + selected);
  std::vector<std::vector<GatherRow>> rows(kLayers);
  std::vector<int32_t> tokens(kContext);
  std::iota(tokens.begin(), tokens.end(), 0);
  for (int l = 0; l < kLayers; ++l) {
    rows[l].reserve(rows_per_layer);
    for (int b = 0; b < batch; ++b) {
      for (int h = 0; h < kKvHeads; ++h) {
        std::shuffle(tokens.begin(), tokens.end(), rng);
        std::vector<int32_t> pick(tokens.begin(), tokens.begin() + selected);
        std::sort(pick.begin(), pick.end());
        for (int j = 0; j < selected; ++j) {
          rows[l].push_back(GatherRow{b * kContext + pick[j], b * selected + j, h});
        }
      }
    }
  }
  std::vector<DeviceBuffer> rows_dev(kLayers);
  for (int l = 0; l < kLayers; ++l) {
    auto buffer = DeviceBuffer::Allocate(rows[l].size() * sizeof(GatherRow));
    if (!buffer.ok()) return buffer.status();
    BENCH_RETURN_IF_ERROR(buffer->CopyFromHost(rows[l].data(), buffer->bytes()));
    rows_dev[l] = std::move(*buffer);
  }
  const size_t packed_bytes = GatherPackedBytes(rows_per_layer, kHeadDim, kDType);
  PinnedBuffer staging[2];
  DeviceBuffer packed[2];
  cudaEvent_t staged[2];
  for (int s = 0; s < 2; ++s) {
    auto p = PinnedBuffer::Allocate(packed_bytes);
    if (!p.ok()) return p.status();
    staging[s] = std::move(*p);
    auto d = DeviceBuffer::Allocate(packed_bytes);
    if (!d.ok()) return d.status();
    packed[s] = std::move(*d);
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&staged[s], cudaEventDisableTiming));
  }
  // Contiguous reference: the same bytes per layer from one pinned buffer.
  const int64_t layer_bytes = GatherBytes(rows_per_layer, kHeadDim, kDType);
  auto contiguous_dev = DeviceBuffer::Allocate(layer_bytes);
  if (!contiguous_dev.ok()) return contiguous_dev.status();

  cudaEvent_t start, stop;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  int64_t h2d = 0;
  const auto step = [&](int method) -> absl::Status {
    for (int l = 0; l < kLayers; ++l) {
      const int s = l & 1;
      if (method == 0) {
        KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(staged[s]));  // buffer s is free
        BENCH_RETURN_IF_ERROR(GatherCopyEngine(
            host_pool, rows[l].data(), rows_per_layer, staging[s].data(), staging[s].bytes(),
            packed[s].data(), packed[s].bytes(), dst, stream, &h2d));
        KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventRecord(staged[s], stream));
      } else if (method == 1) {
        BENCH_RETURN_IF_ERROR(GatherZeroCopy(mapped_pool, rows_dev[l].as<GatherRow>(),
                                             rows_per_layer, dst, stream, &h2d));
      } else {
        KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(contiguous_dev->data(), host_k->data(),
                                                     layer_bytes, cudaMemcpyHostToDevice,
                                                     stream));
      }
    }
    return absl::OkStatus();
  };
  const char* names[] = {"copy_engine", "zero_copy", "memcpy_contiguous"};
  const double step_bytes = static_cast<double>(layer_bytes) * kLayers;
  // Repetitions: about 1.5 s of transfers per method at ~25 GB/s, between 5 and 50.
  const int reps = std::clamp(static_cast<int>(1.5 * 25e9 / step_bytes), 5, 50);
  for (int method = 0; method < 3; ++method) {
    BENCH_RETURN_IF_ERROR(step(method));  // warm-up
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    std::vector<double> us;
    for (int r = 0; r < reps; ++r) {
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, stream));
      BENCH_RETURN_IF_ERROR(step(method));
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop, stream));
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
      float ms = 0;
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start, stop));
      us.push_back(1e3 * ms);
    }
    const double median = Median(us);
    std::printf("%s\t%d\t%.2f\t%d\t%lld\t%.0f\t%.1f\t%.2f\n", names[method], batch, frac,
                kLayers, static_cast<long long>(rows_per_layer), step_bytes, median,
                step_bytes / (median * 1e-6) / 1e9);
    std::fflush(stdout);
  }
  for (int s = 0; s < 2; ++s) cudaEventDestroy(staged[s]);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return absl::OkStatus();
}

int Main() {
  if (VisibleDeviceCount() == 0) {
    std::fprintf(stderr, "gpu_gather_bench: no CUDA device visible\n");
    return 1;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 1;
  int clock_khz = 0, mem_clock_khz = 0;
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0);
  cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, 0);
  std::printf("# device: %s, sm_%d%d, clock %d MHz, memory clock %d MHz, PCI %04x:%02x:%02x\n",
              prop.name, prop.major, prop.minor, clock_khz / 1000, mem_clock_khz / 1000,
              prop.pciDomainID, prop.pciBusID, prop.pciDeviceID);
  std::printf("# %d layers, %d KV heads, head_dim %d, bf16, context %d tokens\n", kLayers,
              kKvHeads, kHeadDim, kContext);
  std::printf("method\tbatch\tselect_frac\tlayers\trows_per_layer\tbytes_per_step\tmedian_us\t"
              "GB/s\n");
  cudaStream_t stream;
  if (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess) return 1;
  for (int batch : {1, 16}) {
    for (double frac : {0.1, 0.2, 0.5}) {
      const absl::Status st = RunShape(batch, frac, stream);
      if (!st.ok()) {
        std::fprintf(stderr, "gpu_gather_bench: batch %d, fraction %.2f: %s\n", batch, frac,
                     st.ToString().c_str());
        return 1;
      }
    }
  }
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace kvscope::kernels::cuda

int main() { return kvscope::kernels::cuda::Main(); }
