// File: tests/gpu_kernels/strategy_reference.h
//
// Plain CPU references of the KV-strategy decisions and moves the CUDA strategy kernels
// (kernels/cuda/h2o_ops.h, streaming_ops.h, evicting_ops.h, infinigen_ops.h) reproduce,
// written as loops over arrays. Each mirrors a kvcache/ rule line by line (file:line in the
// comments); tests/kvcache/strategy_reference_test.cc checks the decision functions against
// the kvcache classes themselves on random inputs with ties, so that the GPU tests (which
// cannot link kvcache/) compare against a reference that is known to equal the strategy.
// Header-only, no CUDA: included from the GPU tests and from the CPU kvcache tests.
#ifndef KVSCOPE_TESTS_GPU_KERNELS_STRATEGY_REFERENCE_H_
#define KVSCOPE_TESTS_GPU_KERNELS_STRATEGY_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace kvscope::strategy_reference {

// ---- H2O (kvcache/h2o_kv_manager.cc) ------------------------------------------------------

// H2oPolicy::Victim (h2o_kv_manager.cc:58-74).
inline int32_t H2oVictim(const int32_t* pos, const double* score, int32_t n, int32_t length,
                         int32_t recent) {
  const int32_t window_start = length - recent;
  auto better = [&](int32_t a, int32_t b) {
    if (score[a] != score[b]) return score[a] < score[b];
    return pos[a] < pos[b];
  };
  int32_t victim = -1;
  for (int32_t j = 0; j < n; ++j) {
    if (pos[j] < window_start && (victim < 0 || better(j, victim))) victim = j;
  }
  if (victim >= 0) return victim;
  for (int32_t j = 0; j < n; ++j) {
    if (victim < 0 || better(j, victim)) victim = j;
  }
  return victim;
}

// H2oPolicy::SelectKeep (h2o_kv_manager.cc:36-56).
inline std::vector<int32_t> H2oSelectKeep(const int32_t* pos, const double* score, int32_t n,
                                          int32_t length, int32_t total, int32_t recent) {
  const int32_t window_start = length - recent;
  std::vector<int32_t> keep, old;
  for (int32_t j = 0; j < n; ++j) (pos[j] >= window_start ? keep : old).push_back(j);
  const size_t heavy =
      static_cast<size_t>(total) - std::min<size_t>(keep.size(), static_cast<size_t>(total));
  std::sort(old.begin(), old.end(), [&](int32_t a, int32_t b) {
    if (score[a] != score[b]) return score[a] > score[b];
    return pos[a] < pos[b];
  });
  for (size_t i = 0; i < std::min(heavy, old.size()); ++i) keep.push_back(old[i]);
  std::sort(keep.begin(), keep.end());
  return keep;
}

// ---- StreamingLLM (kvcache/streaming_kv_manager.cc) ---------------------------------------

// StreamingPolicy::Victim (streaming_kv_manager.cc:42-54).
inline int32_t StreamingVictim(const int32_t* pos, int32_t n, int32_t total, int32_t recent) {
  const int32_t sinks = total - recent;
  int32_t victim = -1;
  for (int32_t j = 0; j < n; ++j) {
    if (pos[j] >= sinks && (victim < 0 || pos[j] < pos[victim])) victim = j;
  }
  if (victim >= 0) return victim;
  for (int32_t j = 0; j < n; ++j) {
    if (victim < 0 || pos[j] > pos[victim]) victim = j;
  }
  return victim;
}

// StreamingPolicy::SelectKeep (streaming_kv_manager.cc:31-40).
inline std::vector<int32_t> StreamingSelectKeep(const int32_t* pos, int32_t n, int32_t length,
                                                int32_t total, int32_t recent) {
  const int32_t sinks = total - recent;
  const int32_t window_start = length - recent;
  std::vector<int32_t> keep;
  for (int32_t j = 0; j < n; ++j) {
    if (pos[j] < sinks || pos[j] >= window_start) keep.push_back(j);
  }
  return keep;
}

// ---- Entry moves (kvcache/evicting_kv_cache.cc) on byte pools ------------------------------

// A host copy of one layer's pool as bytes, in the ops.h block layout.
struct BytePool {
  std::vector<uint8_t> k, v;
  int32_t num_kv_heads = 0, block_size = 0, head_dim = 0, elem = 4;
  size_t RowByte(int64_t slot, int32_t head) const {
    return static_cast<size_t>(((slot / block_size) * num_kv_heads + head) * block_size * head_dim +
                               (slot % block_size) * head_dim) *
           elem;
  }
  // EvictingKvCache::MoveHead (evicting_kv_cache.cc:296-306).
  void MoveHead(int32_t head, int32_t src, int32_t dst) {
    if (src == dst) return;
    const size_t bytes = static_cast<size_t>(head_dim) * elem;
    std::memmove(k.data() + RowByte(dst, head), k.data() + RowByte(src, head), bytes);
    std::memmove(v.data() + RowByte(dst, head), v.data() + RowByte(src, head), bytes);
  }
};

// The compaction of EvictingKvCache::OnAttention (evicting_kv_cache.cc:345-354) for one
// (sequence, head): pos/score/slots point at that head's entry 0. score may be null.
inline void CompactHead(BytePool* pool, int32_t head, const int32_t* slots, int32_t* pos,
                        double* score, const std::vector<int32_t>& keep) {
  for (int32_t j = 0; j < static_cast<int32_t>(keep.size()); ++j) {
    const int32_t k = keep[j];
    if (k == j) continue;
    pool->MoveHead(head, slots[k], slots[j]);
    pos[j] = pos[k];
    if (score != nullptr) score[j] = score[k];
  }
}

// The eviction of EvictingKvCache::OnAttention (evicting_kv_cache.cc:355-364).
inline void ReplaceHead(BytePool* pool, int32_t head, const int32_t* slots, int32_t* pos,
                        double* score, int32_t view_n, int32_t victim) {
  const int32_t incoming = view_n - 1;
  if (victim == incoming) return;
  pool->MoveHead(head, slots[incoming], slots[victim]);
  pos[victim] = pos[incoming];
  if (score != nullptr) score[victim] = score[incoming];
}

// EvictingKvCache::ShiftKey (evicting_kv_cache.cc:308-322) on one float key row; half =
// inv_freq.size().
inline void ShiftKeyRow(float* x, const float* inv_freq, int32_t half, int32_t delta) {
  for (int32_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(delta) * static_cast<double>(inv_freq[i]);
    const double c = std::cos(angle), sn = std::sin(angle);
    const double a = x[i], b = x[i + half];
    x[i] = static_cast<float>(a * c - b * sn);
    x[i + half] = static_cast<float>(b * c + a * sn);
  }
}

// ---- InfiniGen (kvcache/infinigen_selection.cc, infinigen_kv_cache.cc) --------------------

// SpeculatedCount (infinigen_selection.cc:8-19). scores: [num_heads][n].
inline int32_t SpeculatedCount(const double* scores, int32_t num_heads, int32_t n, double alpha,
                               int32_t max_num_kv) {
  if (n <= 0 || num_heads <= 0) return 0;
  int64_t total = 0;
  for (int32_t h = 0; h < num_heads; ++h) {
    const double* row = scores + static_cast<int64_t>(h) * n;
    const double thr = *std::max_element(row, row + n) - alpha;
    for (int32_t j = 0; j < n; ++j) total += row[j] > thr ? 1 : 0;
  }
  return static_cast<int32_t>(std::min<int64_t>({total / num_heads, max_num_kv, n}));
}

// TopKAscending (infinigen_selection.cc:21-31).
inline std::vector<int32_t> TopKAscending(const double* scores, int32_t n, int32_t k) {
  std::vector<int32_t> out(n);
  std::iota(out.begin(), out.end(), 0);
  k = std::clamp(k, 0, n);
  std::partial_sort(out.begin(), out.begin() + k, out.end(), [&](int32_t a, int32_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return a < b;
  });
  out.resize(k);
  std::sort(out.begin(), out.end());
  return out;
}

// The group maximum of InfinigenKvCache::Speculate (infinigen_kv_cache.cc:193-198):
// agg[j] = max over query heads kh*group .. of scores[h][j]. scores: [heads][n].
inline std::vector<double> GroupMax(const double* scores, int32_t n, int32_t kv_head,
                                    int32_t group) {
  std::vector<double> agg(n, -INFINITY);
  for (int32_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
    for (int32_t j = 0; j < n; ++j) {
      agg[j] = std::max(agg[j], scores[static_cast<size_t>(h) * n + j]);
    }
  }
  return agg;
}

// One partial score (infinigen_kv_cache.cc:182-187): q and key of partial_dim floats.
inline double PartialDot(const float* q, const float* key, int32_t partial_dim) {
  double dot = 0;
  for (int32_t c = 0; c < partial_dim; ++c) dot += static_cast<double>(q[c]) * key[c];
  return dot;
}

}  // namespace kvscope::strategy_reference

#endif  // KVSCOPE_TESTS_GPU_KERNELS_STRATEGY_REFERENCE_H_
