// File: tests/gpu_kernels/evicting_test_setup.h
//
// Random per-(sequence, KV head) entry lists and K/V pools for the tests of the fixed-budget
// strategy kernels (h2o_ops_test.cc, streaming_ops_test.cc), in host form (for the
// references of strategy_reference.h) and uploaded (for the kernels). Header-only.
#ifndef KVSCOPE_TESTS_GPU_KERNELS_EVICTING_TEST_SETUP_H_
#define KVSCOPE_TESTS_GPU_KERNELS_EVICTING_TEST_SETUP_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/evicting_ops.h"
#include "kernels/cuda/kv_pool.h"
#include "tests/gpu_kernels/gpu_test_util.h"
#include "tests/gpu_kernels/strategy_reference.h"

namespace kvscope::kernels::cuda::testing {

// One sequence of a step: entries listed (n), tokens after the step, budget.
struct SeqShape {
  int32_t n = 0;
  int32_t length = 0;
  int32_t total = 0;
  int32_t recent = 0;
};

struct HostEntries {
  int32_t num_seqs = 0;
  int32_t kv_heads = 0;
  std::vector<int64_t> head_offset;
  std::vector<int32_t> head_stride;
  std::vector<int32_t> pos, slots;
  std::vector<double> score;
  std::vector<int32_t> view_n, length, total, recent;
  size_t At(int32_t i, int32_t h, int32_t j) const {
    return static_cast<size_t>(head_offset[i] + static_cast<int64_t>(h) * head_stride[i] + j);
  }
};

// Entry lists for `shapes`. Decode (`decode` true): n = total + 1 entries, the last one the
// incoming token at position length - 1, the others distinct random earlier positions.
// Compression: n = length entries holding positions 0..length-1 (in order for even i,
// shuffled for odd i). Each sequence owns `n + 3` distinct random slots of a pool of
// `pool_slots` (entry j -> slot S[j] for every head, as EvictingKvManager); there is a gap of
// 5 unused elements before each sequence's lists (as another layer's lists would be).
// Scores come from {0, 1/8, ..., 5/8}: many exact ties.
inline HostEntries RandomEntries(std::mt19937& rng, const std::vector<SeqShape>& shapes,
                                 int32_t kv_heads, bool decode, int64_t pool_slots) {
  HostEntries e;
  e.num_seqs = static_cast<int32_t>(shapes.size());
  e.kv_heads = kv_heads;
  std::vector<int32_t> free_slots(pool_slots);
  std::iota(free_slots.begin(), free_slots.end(), 0);
  std::shuffle(free_slots.begin(), free_slots.end(), rng);
  size_t next_slot = 0;
  int64_t at = 0;
  std::uniform_int_distribution<int> level(0, 5);
  for (const SeqShape& s : shapes) {
    const int32_t stride = s.n + 3;
    at += 5;
    e.head_offset.push_back(at);
    e.head_stride.push_back(stride);
    e.view_n.push_back(s.n);
    e.length.push_back(s.length);
    e.total.push_back(s.total);
    e.recent.push_back(s.recent);
    const int64_t end = at + static_cast<int64_t>(kv_heads) * stride;
    e.pos.resize(end, -7);
    e.slots.resize(end, -7);
    e.score.resize(end, -1.0);
    std::vector<int32_t> seq_slots(free_slots.begin() + next_slot,
                                   free_slots.begin() + next_slot + stride);
    next_slot += stride;
    for (int32_t h = 0; h < kv_heads; ++h) {
      std::vector<int32_t> p;
      if (decode) {
        std::vector<int32_t> earlier(s.length - 1);
        std::iota(earlier.begin(), earlier.end(), 0);
        std::shuffle(earlier.begin(), earlier.end(), rng);
        p.assign(earlier.begin(), earlier.begin() + (s.n - 1));
        p.push_back(s.length - 1);
      } else {
        p.resize(s.length);
        std::iota(p.begin(), p.end(), 0);
        if (e.head_offset.size() % 2 == 0) std::shuffle(p.begin(), p.end(), rng);
      }
      for (int32_t j = 0; j < stride; ++j) {
        const size_t x = static_cast<size_t>(at + static_cast<int64_t>(h) * stride + j);
        e.slots[x] = seq_slots[j];
        if (j < s.n) {
          e.pos[x] = p[j];
          e.score[x] = 0.125 * level(rng);
        }
      }
    }
    at = end;
  }
  return e;
}

struct DeviceEntries {
  DeviceBuffer pos, slots, score, head_offset, head_stride, view_n, length, total, recent;
  int32_t num_seqs = 0, kv_heads = 0;

  EntryLists Lists(bool with_scores = true) const {
    EntryLists l;
    l.positions = pos.as<int32_t>();
    l.slots = slots.as<int32_t>();
    l.scores = with_scores ? score.as<double>() : nullptr;
    l.head_offset = head_offset.as<int64_t>();
    l.head_stride = head_stride.as<int32_t>();
    l.num_seqs = num_seqs;
    l.num_kv_heads = kv_heads;
    return l;
  }
  EvictStep Step() const {
    return EvictStep{view_n.as<int32_t>(), length.as<int32_t>(), total.as<int32_t>(),
                     recent.as<int32_t>()};
  }
};

inline DeviceEntries UploadEntries(const HostEntries& e) {
  DeviceEntries d;
  d.pos = UploadRaw(e.pos);
  d.slots = UploadRaw(e.slots);
  d.score = UploadRaw(e.score);
  d.head_offset = UploadRaw(e.head_offset);
  d.head_stride = UploadRaw(e.head_stride);
  d.view_n = UploadRaw(e.view_n);
  d.length = UploadRaw(e.length);
  d.total = UploadRaw(e.total);
  d.recent = UploadRaw(e.recent);
  d.num_seqs = e.num_seqs;
  d.kv_heads = e.kv_heads;
  return d;
}

// A pool of random values (uniform in [-2, 2), stored as `dtype`) on the host (as bytes) and
// on the device.
// (Named apart from attention_test_util.h's TestPool: two classes of one name in one
// namespace break the one-definition rule; the linker kept one destructor for both, which
// freed the wrong members on the H100.)
struct StrategyPool {
  strategy_reference::BytePool host;
  DeviceBuffer k, v;
  CudaKvPool ref;
};

inline StrategyPool RandomStrategyPool(std::mt19937& rng, int64_t num_blocks, int32_t kv_heads,
                           int32_t block_size, int32_t head_dim, DType dtype) {
  StrategyPool p;
  const size_t count = static_cast<size_t>(num_blocks) * kv_heads * block_size * head_dim;
  std::uniform_real_distribution<float> u(-2.0f, 2.0f);
  std::vector<float> kf(count), vf(count);
  for (float& x : kf) x = u(rng);
  for (float& x : vf) x = u(rng);
  p.host.k = ToDType(kf, dtype);
  p.host.v = ToDType(vf, dtype);
  p.host.num_kv_heads = kv_heads;
  p.host.block_size = block_size;
  p.host.head_dim = head_dim;
  p.host.elem = static_cast<int32_t>(DTypeSize(dtype));
  p.k = UploadRaw(p.host.k);
  p.v = UploadRaw(p.host.v);
  p.ref = CudaKvPool{p.k.data(), p.v.data(), num_blocks, kv_heads, block_size, head_dim, dtype};
  return p;
}

// Downloads a device buffer as bytes.
inline std::vector<uint8_t> DownloadBytes(const DeviceBuffer& buffer) {
  return DownloadRaw<uint8_t>(buffer, buffer.bytes());
}

// Compares byte buffers (or any vectors) without printing megabytes on failure: the number
// of differing elements and the first few.
template <typename T>
::testing::AssertionResult SameElements(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  int64_t bad = 0;
  ::testing::AssertionResult result = ::testing::AssertionFailure();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) == 0) continue;
    if (++bad <= 5) result << "[" << i << "] got " << +got[i] << ", want " << +want[i] << "; ";
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return result << bad << " of " << got.size() << " elements differ";
}

// The (i, h) pairs' values of a [num_seqs][kv_heads] int32 device result.
inline std::vector<int32_t> DownloadPairs(const DeviceBuffer& buffer, int32_t pairs) {
  return DownloadRaw<int32_t>(buffer, static_cast<size_t>(pairs));
}

}  // namespace kvscope::kernels::cuda::testing

#endif  // KVSCOPE_TESTS_GPU_KERNELS_EVICTING_TEST_SETUP_H_
