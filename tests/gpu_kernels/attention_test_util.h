// File: tests/gpu_kernels/attention_test_util.h
//
// Random paged-KV scenarios shared by the attention kernel tests: a pool filled with values
// rounded to the storage type (so the CPU reference sees exactly what the device sees), the
// per-sequence slot/position lists in both forms (one shared list, or per-KV-head lists),
// and their device copies (SeqKvView array with device pointers). Header-only; test-only.
#ifndef KVSCOPE_TESTS_GPU_KERNELS_ATTENTION_TEST_UTIL_H_
#define KVSCOPE_TESTS_GPU_KERNELS_ATTENTION_TEST_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "common/dtype.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kernels/ops.h"
#include "tests/gpu_kernels/gpu_test_util.h"

namespace kvscope::kernels::cuda::testing {

inline std::vector<float> RandomValues(std::mt19937& rng, size_t n, float lo = -1.f,
                                       float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// A pool on the host (values rounded to `dtype`) and its device copy.
struct TestPool {
  DType dtype = DType::kF32;
  int64_t num_blocks = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;
  std::vector<float> k, v;  // [num_blocks, num_kv_heads, block_size, head_dim]
  DeviceBuffer dk, dv;
  // Elements of padding before the pool in dk/dv: 1 makes the pool base misaligned for
  // 16-byte loads (the kernels must take their unaligned paths).
  int64_t offset = 0;

  int64_t num_slots() const { return num_blocks * block_size; }
  int64_t elems() const {
    return num_blocks * num_kv_heads * static_cast<int64_t>(block_size) * head_dim;
  }
  KvPoolView HostView() {
    return KvPoolView{k.data(), v.data(), num_blocks, num_kv_heads, block_size, head_dim};
  }
  CudaKvPool DeviceView() const {
    const size_t skip = static_cast<size_t>(offset) * DTypeSize(dtype);
    return CudaKvPool{dk.as<char>() + skip,
                      dv.as<char>() + skip,
                      num_blocks,
                      num_kv_heads,
                      block_size,
                      head_dim,
                      dtype};
  }
  void Upload() {
    std::vector<float> pk(offset, 0.f), pv(offset, 0.f);
    pk.insert(pk.end(), k.begin(), k.end());
    pv.insert(pv.end(), v.begin(), v.end());
    dk = testing::Upload(pk, dtype);
    dv = testing::Upload(pv, dtype);
  }
  // Reads the device pool back into k and v (after a device-side write).
  void Download() {
    k = testing::Download(dk, static_cast<size_t>(elems() + offset), dtype);
    v = testing::Download(dv, static_cast<size_t>(elems() + offset), dtype);
    k.erase(k.begin(), k.begin() + offset);
    v.erase(v.begin(), v.begin() + offset);
  }
};

inline TestPool RandomPool(std::mt19937& rng, DType dtype, int64_t num_blocks, int32_t num_kv_heads,
                           int32_t block_size, int32_t head_dim, int64_t offset = 0) {
  TestPool pool;
  pool.offset = offset;
  pool.dtype = dtype;
  pool.num_blocks = num_blocks;
  pool.num_kv_heads = num_kv_heads;
  pool.block_size = block_size;
  pool.head_dim = head_dim;
  pool.k = RoundTo(RandomValues(rng, static_cast<size_t>(pool.elems())), dtype);
  pool.v = RoundTo(RandomValues(rng, static_cast<size_t>(pool.elems())), dtype);
  pool.Upload();
  return pool;
}

// One sequence's lists: [lists][stride] with lists = num_kv_heads (per_head) or 1.
struct TestSeq {
  std::vector<int32_t> slots, positions;
  int32_t num_cached = 0;
  int64_t head_stride = 0;  // 0: one shared list
  SeqKvView HostView() const {
    return SeqKvView{slots.data(), positions.data(), num_cached, head_stride};
  }
};

// Device copies of a set of sequences: the list buffers and the SeqKvView array.
struct DeviceSeqs {
  std::vector<DeviceBuffer> buffers;
  DeviceBuffer views;
  const SeqKvView* data() const { return views.as<const SeqKvView>(); }
};

inline DeviceSeqs UploadSeqs(const std::vector<TestSeq>& seqs) {
  DeviceSeqs d;
  std::vector<SeqKvView> views;
  for (const TestSeq& s : seqs) {
    // Never empty, so every view has valid device pointers.
    std::vector<int32_t> slots = s.slots, positions = s.positions;
    if (slots.empty()) slots.push_back(0), positions.push_back(0);
    d.buffers.push_back(UploadRaw(slots));
    const int32_t* ds = d.buffers.back().as<const int32_t>();
    d.buffers.push_back(UploadRaw(positions));
    const int32_t* dp = d.buffers.back().as<const int32_t>();
    views.push_back(SeqKvView{ds, dp, s.num_cached, s.head_stride});
  }
  d.views = UploadRaw(views);
  return d;
}

// A sequence of `n` cached tokens at positions 0..n-1 in slots drawn without replacement
// from `free_slots` (consumed). per_head: every KV head keeps its own random subset of
// `n` of the first `n + extra` positions, listed in a shuffled order, with head_stride
// n + 3 (padding entries are garbage that must not be read).
inline TestSeq RandomSeq(std::mt19937& rng, std::vector<int32_t>& free_slots, int32_t n,
                         int32_t num_kv_heads, bool per_head, int32_t extra = 0) {
  TestSeq seq;
  seq.num_cached = n;
  const int32_t span = n + (per_head ? extra : 0);
  // Slot of position p (shared by all heads: the pool row holds every head of a token).
  std::vector<int32_t> slot_of(span);
  for (int32_t p = 0; p < span; ++p) {
    slot_of[p] = free_slots.back();
    free_slots.pop_back();
  }
  if (!per_head) {
    seq.head_stride = 0;
    for (int32_t p = 0; p < n; ++p) {
      seq.slots.push_back(slot_of[p]);
      seq.positions.push_back(p);
    }
    return seq;
  }
  seq.head_stride = n + 3;
  seq.slots.assign(static_cast<size_t>(num_kv_heads) * seq.head_stride, 0x7fffffff);
  seq.positions.assign(seq.slots.size(), -12345);
  for (int32_t h = 0; h < num_kv_heads; ++h) {
    std::vector<int32_t> keep(span);
    std::iota(keep.begin(), keep.end(), 0);
    std::shuffle(keep.begin(), keep.end(), rng);
    keep.resize(n);
    // Always keep the newest position, so that the newest query sees something.
    if (n > 0 && std::find(keep.begin(), keep.end(), span - 1) == keep.end()) keep[0] = span - 1;
    for (int32_t j = 0; j < n; ++j) {
      seq.slots[h * seq.head_stride + j] = slot_of[keep[j]];
      seq.positions[h * seq.head_stride + j] = keep[j];
    }
  }
  return seq;
}

// All slots of a pool in random order (pop_back draws one).
inline std::vector<int32_t> ShuffledSlots(std::mt19937& rng, int64_t num_slots) {
  std::vector<int32_t> slots(num_slots);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  return slots;
}

// Elements [rows][cols] of a buffer with row stride `stride` (drops the padding).
inline std::vector<float> Rows(const std::vector<float>& v, int64_t rows, int64_t cols,
                               int64_t stride) {
  std::vector<float> r;
  r.reserve(rows * cols);
  for (int64_t i = 0; i < rows; ++i) {
    r.insert(r.end(), v.begin() + i * stride, v.begin() + i * stride + cols);
  }
  return r;
}

}  // namespace kvscope::kernels::cuda::testing

#endif  // KVSCOPE_TESTS_GPU_KERNELS_ATTENTION_TEST_UTIL_H_
