// File: bench/gpu/attention_bench.cc
//
// GPU attention benchmarks (issue 6), one TSV row per shape on stdout:
//   name <TAB> shape <TAB> median_us <TAB> value <TAB> unit
// Lines starting with '#' are notes (device, clocks of the measurement, split counts).
//
//   decode:  paged decode attention, 32 query / 8 KV heads, head_dim 128, bf16, block size
//            16, batch x context 1x32768, 16x4096, 64x2048, 128x1024; value = KV bytes read
//            (batch * context * kv_heads * head_dim * 2 bytes * (K + V)) / time, GB/s.
//            Once with automatic split-K and once with splits off.
//   prefill: causal prefill of one sequence, 2048 and 8192 tokens, 32 heads (MHA), head_dim
//            128, bf16, on the tensor-core kernel; value = causal FLOPs (half of
//            4 * heads * L^2 * d) / time, TFLOP/s.
// Timing: CUDA events around each launch after 5 warm-up launches, median of 50 (decode)
// or 10 (prefill). Decode rotates between several pools when one pool would fit in a few
// times the L2, so the numbers are device-memory numbers. Inputs are random, never zeros.
// Exit status 1 on any CUDA/Status error.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/attention_prefill.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kernels/ops.h"

namespace kvscope::kernels::cuda {
namespace {

#define BENCH_CHECK(expr)                                                                    \
  do {                                                                                       \
    const absl::Status bench_st_ = (expr);                                                   \
    if (!bench_st_.ok()) {                                                                   \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, bench_st_.ToString().c_str()); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

#define BENCH_CUDA(expr)                                                 \
  do {                                                                   \
    const cudaError_t bench_e_ = (expr);                                 \
    if (bench_e_ != cudaSuccess) {                                       \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(bench_e_));                        \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

DeviceBuffer Alloc(size_t bytes) {
  auto b = DeviceBuffer::Allocate(bytes);
  BENCH_CHECK(b.status());
  return std::move(*b);
}

// `bytes` of random bf16 values in [-1, 1): a 4 MiB random pattern replicated on the device.
DeviceBuffer RandomBf16(std::mt19937& rng, size_t bytes) {
  DeviceBuffer buffer = Alloc(bytes);
  const size_t chunk = std::min<size_t>(bytes, 4u << 20);
  std::vector<uint16_t> host(chunk / 2);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (uint16_t& h : host) h = F32ToBf16(dist(rng));
  BENCH_CHECK(buffer.CopyFromHost(host.data(), host.size() * 2));
  for (size_t at = chunk; at < bytes; at += chunk) {
    BENCH_CUDA(cudaMemcpy(static_cast<char*>(buffer.data()) + at, buffer.data(),
                          std::min(chunk, bytes - at), cudaMemcpyDeviceToDevice));
  }
  return buffer;
}

template <typename T>
DeviceBuffer UploadVec(const std::vector<T>& v) {
  DeviceBuffer b = Alloc(std::max<size_t>(1, v.size() * sizeof(T)));
  BENCH_CHECK(b.CopyFromHost(v.data(), v.size() * sizeof(T)));
  return b;
}

// One pool holding `num_seqs` sequences of `context` tokens in randomly placed blocks, with
// shared slot lists (positions 0..context-1) and their device SeqKvView array.
struct PagedSet {
  DeviceBuffer k, v, slots, positions, views;
  CudaKvPool pool;
};

PagedSet MakeSet(std::mt19937& rng, int32_t num_seqs, int32_t context, int32_t kv_heads,
                 int32_t head_dim, int32_t block_size) {
  PagedSet set;
  const int64_t blocks_per_seq = (context + block_size - 1) / block_size;
  const int64_t num_blocks = blocks_per_seq * num_seqs;
  const size_t bytes = static_cast<size_t>(num_blocks) * kv_heads * block_size * head_dim * 2;
  set.k = RandomBf16(rng, bytes);
  set.v = RandomBf16(rng, bytes);
  set.pool = CudaKvPool{set.k.data(), set.v.data(), num_blocks,  kv_heads,
                        block_size,   head_dim,     DType::kBF16};
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> slots(static_cast<size_t>(num_seqs) * context), positions(slots.size());
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t j = 0; j < context; ++j) {
      slots[static_cast<size_t>(s) * context + j] =
          perm[s * blocks_per_seq + j / block_size] * block_size + j % block_size;
      positions[static_cast<size_t>(s) * context + j] = j;
    }
  }
  set.slots = UploadVec(slots);
  set.positions = UploadVec(positions);
  std::vector<SeqKvView> views(num_seqs);
  for (int32_t s = 0; s < num_seqs; ++s) {
    views[s] =
        SeqKvView{set.slots.as<int32_t>() + static_cast<size_t>(s) * context,
                  set.positions.as<int32_t>() + static_cast<size_t>(s) * context, context, 0};
  }
  set.views = UploadVec(views);
  return set;
}

// Median time in microseconds of `reps` timed calls of f(rep) after `warmup` calls.
template <typename F>
double MedianUs(int warmup, int reps, F&& f) {
  cudaEvent_t start, stop;
  BENCH_CUDA(cudaEventCreate(&start));
  BENCH_CUDA(cudaEventCreate(&stop));
  for (int i = 0; i < warmup; ++i) f(i);
  BENCH_CUDA(cudaDeviceSynchronize());
  std::vector<double> us;
  for (int i = 0; i < reps; ++i) {
    BENCH_CUDA(cudaEventRecord(start));
    f(i);
    BENCH_CUDA(cudaEventRecord(stop));
    BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0.f;
    BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    us.push_back(ms * 1000.0);
  }
  BENCH_CUDA(cudaEventDestroy(start));
  BENCH_CUDA(cudaEventDestroy(stop));
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

void BenchDecode(std::mt19937& rng, int32_t batch, int32_t context, size_t l2_bytes) {
  constexpr int32_t kHeads = 32, kKvHeads = 8, kDim = 128, kBlock = 16;
  const double kv_bytes = 2.0 * batch * context * kKvHeads * kDim * 2;
  const int sets =
      static_cast<int>(std::clamp<double>(std::ceil(4.0 * l2_bytes / kv_bytes), 1.0, 4.0));
  std::vector<PagedSet> pools;
  for (int i = 0; i < sets; ++i)
    pools.push_back(MakeSet(rng, batch, context, kKvHeads, kDim, kBlock));
  const int64_t row = static_cast<int64_t>(kHeads) * kDim;
  DeviceBuffer q = RandomBf16(rng, batch * row * 2);
  DeviceBuffer out = Alloc(batch * row * 2);
  std::vector<int32_t> seq(batch), pos(batch, context - 1);
  std::iota(seq.begin(), seq.end(), 0);
  DeviceBuffer dseq = UploadVec(seq), dpos = UploadVec(pos);
  for (int32_t splits : {0, 1}) {
    AttentionOptions options;
    options.num_splits = splits;
    const size_t ws_bytes =
        AttentionWorkspaceBytes(batch, kHeads, kKvHeads, kDim, context, false, options);
    DeviceBuffer ws = Alloc(std::max<size_t>(ws_bytes, 1));
    const int32_t used = ChooseAttentionSplits(batch, kHeads, kKvHeads, context, options);
    const double us = MedianUs(5, 50, [&](int i) {
      const PagedSet& set = pools[i % sets];
      BENCH_CHECK(PagedAttention(q.data(), row, batch, kHeads, dseq.as<int32_t>(),
                                 dpos.as<int32_t>(), set.pool, set.views.as<SeqKvView>(), batch,
                                 context, 1.0f / std::sqrt(128.0f), out.data(), row, nullptr,
                                 ws.data(), ws_bytes, nullptr, options, nullptr));
    });
    std::printf("# decode %dx%d: %d split(s), %d rotating pool(s)\n", batch, context, used, sets);
    std::printf("decode_bf16_h32kv8_d128%s\t%dx%d\t%.2f\t%.1f\tGB/s\n",
                splits == 1 ? "_nosplit" : "", batch, context, us, kv_bytes / (us * 1e3));
  }
}

void BenchPrefill(std::mt19937& rng, int32_t tokens) {
  constexpr int32_t kHeads = 32, kDim = 128, kBlock = 16;
  PagedSet set = MakeSet(rng, 1, tokens, kHeads, kDim, kBlock);
  const int64_t row = static_cast<int64_t>(kHeads) * kDim;
  DeviceBuffer q = RandomBf16(rng, tokens * row * 2);
  DeviceBuffer out = Alloc(tokens * row * 2);
  std::vector<int32_t> pos(tokens);
  std::iota(pos.begin(), pos.end(), 0);
  DeviceBuffer dpos = UploadVec(pos);
  DeviceBuffer dstart = UploadVec(std::vector<int32_t>{0, tokens});
  const double flops = 0.5 * 4.0 * kHeads * static_cast<double>(tokens) * tokens * kDim;
  const PrefillOptions options;
  const double us = MedianUs(3, 10, [&](int) {
    BENCH_CHECK(PrefillAttention(q.data(), row, tokens, kHeads, dstart.as<int32_t>(),
                                 dpos.as<int32_t>(), set.pool, set.views.as<SeqKvView>(), 1, tokens,
                                 1.0f / std::sqrt(128.0f), out.data(), row, nullptr, options,
                                 nullptr));
  });
  std::printf("prefill_bf16_h32_d128_causal\t%d\t%.2f\t%.1f\tTFLOP/s\n", tokens, us,
              flops / (us * 1e6));
}

int Main() {
  int device = 0;
  cudaDeviceProp prop{};
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  std::printf("# device %s, %d SMs, L2 %d MiB, sm_%d%d\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20, prop.major, prop.minor);
  std::printf("# name\tshape\tmedian_us\tvalue\tunit\n");
  std::mt19937 rng(2026);
  for (auto [batch, context] :
       std::vector<std::pair<int32_t, int32_t>>{{1, 32768}, {16, 4096}, {64, 2048}, {128, 1024}}) {
    BenchDecode(rng, batch, context, static_cast<size_t>(prop.l2CacheSize));
  }
  for (int32_t tokens : {2048, 8192}) BenchPrefill(rng, tokens);
  return 0;
}

}  // namespace
}  // namespace kvscope::kernels::cuda

int main() { return kvscope::kernels::cuda::Main(); }
