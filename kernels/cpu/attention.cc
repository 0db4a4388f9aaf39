// File: kernels/cpu/attention.cc
//
// CPU reference implementations of WriteKv and Attention (kernels/ops.h) over the paged pool
// layout pool[num_blocks][num_kv_heads][block_size][head_dim].
//
// Both ops validate every index before writing anything: on InvalidArgument the pool, `out`
// and `attn_mass` are untouched.
//
// Attention precision: q·k, the softmax (max subtracted) and Σ p·v are computed in double
// and rounded to float once per output element; attn_mass receives float(p) per entry.
// Parallelism: over (token, head) pairs; when attn_mass is requested, over (sequence, head)
// pairs with that sequence's tokens in ascending order, so the float additions into
// attn_mass happen in a fixed order (deterministic, race-free).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace kvscope::kernels {
namespace {

constexpr int64_t kParallelMinWork = int64_t{1} << 15;

// Offset (in floats) of (slot, kv_head, 0) in a pool.
inline int64_t PoolOffset(const KvPoolView& pool, int64_t slot, int64_t kv_head) {
  const int64_t bs = pool.block_size;
  return ((slot / bs) * pool.num_kv_heads + kv_head) * bs * pool.head_dim +
         (slot % bs) * pool.head_dim;
}

absl::Status CheckPool(const KvPoolView& pool, const char* op) {
  if (pool.num_blocks < 0 || pool.num_kv_heads <= 0 || pool.block_size <= 0 ||
      pool.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": bad pool shape (num_blocks ", pool.num_blocks, ", num_kv_heads ",
        pool.num_kv_heads, ", block_size ", pool.block_size, ", head_dim ", pool.head_dim, ")"));
  }
  if (pool.num_blocks > 0 && (pool.k == nullptr || pool.v == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": pool k/v is null"));
  }
  return absl::OkStatus();
}

// Σ a[i]·b[i] in double with four independent partial sums (fixed order: deterministic).
inline double DotF64(const float* a, const float* b, int64_t n) {
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += static_cast<double>(a[i]) * b[i];
    s1 += static_cast<double>(a[i + 1]) * b[i + 1];
    s2 += static_cast<double>(a[i + 2]) * b[i + 2];
    s3 += static_cast<double>(a[i + 3]) * b[i + 3];
  }
  for (; i < n; ++i) s0 += static_cast<double>(a[i]) * b[i];
  return (s0 + s1) + (s2 + s3);
}

// Everything the per-(token, head) computation needs, resolved once per call.
struct AttentionArgs {
  const float* q;
  int64_t q_stride;
  int32_t num_heads;
  int32_t head_dim;
  int32_t group;  // query heads per KV head
  const int32_t* token_seq;
  const int32_t* token_pos;
  const KvPoolView* pool;
  const SeqKvView* seqs;
  double scale;
  float* out;
  int64_t out_stride;
  float* attn_mass;
  int64_t max_cached;
};

// One query token `t`, query head `h`. scores: scratch of >= num_cached doubles;
// acc: scratch of head_dim doubles. Requires validated inputs with >= 1 visible entry.
void AttendOne(const AttentionArgs& a, int64_t t, int32_t h, double* scores, double* acc) {
  const int32_t s = a.token_seq[t];
  const int32_t pos = a.token_pos[t];
  const SeqKvView& seq = a.seqs[s];
  const int32_t kvh = h / a.group;
  const int64_t list_off = seq.head_stride > 0 ? kvh * seq.head_stride : 0;
  const int32_t* slots = seq.slots + list_off;
  const int32_t* positions = seq.positions + list_off;
  const float* qh = a.q + t * a.q_stride + static_cast<int64_t>(h) * a.head_dim;
  const int32_t n = seq.num_cached;
  const int32_t d = a.head_dim;

  double max_score = -std::numeric_limits<double>::infinity();
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] > pos) continue;
    const float* kj = a.pool->k + PoolOffset(*a.pool, slots[j], kvh);
    scores[j] = DotF64(qh, kj, d) * a.scale;
    max_score = std::max(max_score, scores[j]);
  }
  double sum = 0.0;
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] > pos) continue;
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  std::fill(acc, acc + d, 0.0);
  for (int32_t j = 0; j < n; ++j) {
    if (positions[j] > pos) continue;
    const double p = scores[j];
    const float* vj = a.pool->v + PoolOffset(*a.pool, slots[j], kvh);
    for (int32_t i = 0; i < d; ++i) acc[i] += p * vj[i];
  }
  const double inv_sum = 1.0 / sum;
  float* oh = a.out + t * a.out_stride + static_cast<int64_t>(h) * d;
  for (int32_t i = 0; i < d; ++i) oh[i] = static_cast<float>(acc[i] * inv_sum);
  if (a.attn_mass != nullptr) {
    float* mass = a.attn_mass + (static_cast<int64_t>(s) * a.num_heads + h) * a.max_cached;
    for (int32_t j = 0; j < n; ++j) {
      if (positions[j] > pos) continue;
      mass[j] += static_cast<float>(scores[j] * inv_sum);
    }
  }
}

}  // namespace

absl::Status WriteKv(const KvPoolView& pool, const float* k, const float* v,
                     int64_t token_stride, const int32_t* slots, int64_t tokens) {
  if (tokens < 0) return absl::InvalidArgumentError("WriteKv: negative token count");
  if (tokens == 0) return absl::OkStatus();
  if (absl::Status st = CheckPool(pool, "WriteKv"); !st.ok()) return st;
  const int64_t row = static_cast<int64_t>(pool.num_kv_heads) * pool.head_dim;
  if (token_stride < row) {
    return absl::InvalidArgumentError(absl::StrCat("WriteKv: token_stride ", token_stride,
                                                   " < num_kv_heads * head_dim = ", row));
  }
  const int64_t num_slots = pool.num_blocks * pool.block_size;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < -1 || slots[t] >= num_slots) {
      return absl::InvalidArgumentError(absl::StrCat("WriteKv: slot ", slots[t], " of token ",
                                                     t, " is outside the pool [0, ",
                                                     num_slots, ")"));
    }
  }
  const size_t head_bytes = static_cast<size_t>(pool.head_dim) * sizeof(float);
#pragma omp parallel for schedule(static) if (tokens * row >= kParallelMinWork)
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    for (int32_t h = 0; h < pool.num_kv_heads; ++h) {
      const int64_t dst = PoolOffset(pool, slot, h);
      const int64_t src = t * token_stride + static_cast<int64_t>(h) * pool.head_dim;
      std::memcpy(pool.k + dst, k + src, head_bytes);
      std::memcpy(pool.v + dst, v + src, head_bytes);
    }
  }
  return absl::OkStatus();
}

absl::Status Attention(const float* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                       int32_t head_dim, const int32_t* token_seq, const int32_t* token_pos,
                       const KvPoolView& pool, const SeqKvView* seqs, int32_t num_seqs,
                       float scale, float* out, int64_t out_stride, float* attn_mass,
                       int64_t max_cached) {
  // ---- Validation (nothing is written before it completes).
  if (tokens < 0 || num_seqs < 0) {
    return absl::InvalidArgumentError("Attention: negative tokens or num_seqs");
  }
  if (tokens == 0) return absl::OkStatus();
  if (absl::Status st = CheckPool(pool, "Attention"); !st.ok()) return st;
  if (num_heads <= 0 || num_heads % pool.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: num_heads ", num_heads,
                                                   " is not a positive multiple of num_kv_heads ",
                                                   pool.num_kv_heads));
  }
  if (head_dim != pool.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: head_dim ", head_dim,
                                                   " != pool head_dim ", pool.head_dim));
  }
  const int64_t row = static_cast<int64_t>(num_heads) * head_dim;
  if (q_stride < row || out_stride < row) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: q_stride ", q_stride,
                                                   " / out_stride ", out_stride,
                                                   " < num_heads * head_dim = ", row));
  }
  const int32_t num_kv_heads = pool.num_kv_heads;
  const int64_t num_slots = pool.num_blocks * pool.block_size;
  // min_pos[s * num_kv_heads + h]: smallest listed position of sequence s, KV head h.
  std::vector<int64_t> min_pos(static_cast<size_t>(num_seqs) * num_kv_heads,
                               std::numeric_limits<int64_t>::max());
  int32_t max_num_cached = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    const SeqKvView& seq = seqs[s];
    if (seq.num_cached < 0 || seq.head_stride < 0 ||
        (seq.head_stride > 0 && seq.head_stride < seq.num_cached)) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", s, " has num_cached ",
                                                     seq.num_cached, ", head_stride ",
                                                     seq.head_stride));
    }
    if (seq.num_cached > 0 && (seq.slots == nullptr || seq.positions == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", s,
                                                     " has null slots/positions"));
    }
    if (attn_mass != nullptr && seq.num_cached > max_cached) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", s, " lists ",
                                                     seq.num_cached,
                                                     " cached tokens > max_cached ", max_cached));
    }
    max_num_cached = std::max(max_num_cached, seq.num_cached);
    const int32_t lists = seq.head_stride > 0 ? num_kv_heads : 1;
    for (int32_t h = 0; h < lists; ++h) {
      const int32_t* sl = seq.slots + h * seq.head_stride;
      const int32_t* ps = seq.positions + h * seq.head_stride;
      int64_t lo = std::numeric_limits<int64_t>::max();
      for (int32_t j = 0; j < seq.num_cached; ++j) {
        if (sl[j] < 0 || sl[j] >= num_slots) {
          return absl::InvalidArgumentError(absl::StrCat(
              "Attention: sequence ", s, " kv head ", h, " entry ", j, " has slot ", sl[j],
              " outside the pool [0, ", num_slots, ")"));
        }
        lo = std::min<int64_t>(lo, ps[j]);
      }
      if (seq.head_stride > 0) {
        min_pos[static_cast<size_t>(s) * num_kv_heads + h] = lo;
      } else {
        std::fill_n(min_pos.begin() + static_cast<int64_t>(s) * num_kv_heads, num_kv_heads, lo);
      }
    }
  }
  int64_t work = 0;  // multiply-adds, to decide whether a team pays off
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t s = token_seq[t];
    if (s < 0 || s >= num_seqs) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: token ", t, " has sequence ", s,
                                                     " outside [0, ", num_seqs, ")"));
    }
    for (int32_t h = 0; h < num_kv_heads; ++h) {
      if (min_pos[static_cast<size_t>(s) * num_kv_heads + h] > token_pos[t]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Attention: token ", t, " (sequence ", s, ", position ", token_pos[t],
            ") sees no cached token for kv head ", h));
      }
    }
    work += static_cast<int64_t>(seqs[s].num_cached) * row * 2;
  }

  // ---- Compute.
  const AttentionArgs args{q,          q_stride, num_heads,   head_dim,
                           num_heads / num_kv_heads, token_seq, token_pos, &pool,
                           seqs,       scale,    out,         out_stride,
                           attn_mass,  max_cached};
  const bool parallel = work >= kParallelMinWork;
  if (attn_mass == nullptr) {
#pragma omp parallel if (parallel)
    {
      std::vector<double> scores(max_num_cached);
      std::vector<double> acc(head_dim);
#pragma omp for collapse(2) schedule(dynamic, 4)
      for (int64_t t = 0; t < tokens; ++t) {
        for (int32_t h = 0; h < num_heads; ++h) AttendOne(args, t, h, scores.data(), acc.data());
      }
    }
  } else {
    // Tokens of each sequence in ascending order (counting sort by sequence).
    std::vector<int64_t> start(static_cast<size_t>(num_seqs) + 1, 0);
    for (int64_t t = 0; t < tokens; ++t) ++start[token_seq[t] + 1];
    for (int32_t s = 0; s < num_seqs; ++s) start[s + 1] += start[s];
    std::vector<int64_t> order(tokens);
    {
      std::vector<int64_t> next(start.begin(), start.end() - 1);
      for (int64_t t = 0; t < tokens; ++t) order[next[token_seq[t]]++] = t;
    }
#pragma omp parallel if (parallel)
    {
      std::vector<double> scores(max_num_cached);
      std::vector<double> acc(head_dim);
#pragma omp for collapse(2) schedule(dynamic, 1)
      for (int32_t s = 0; s < num_seqs; ++s) {
        for (int32_t h = 0; h < num_heads; ++h) {
          for (int64_t i = start[s]; i < start[s + 1]; ++i) {
            AttendOne(args, order[i], h, scores.data(), acc.data());
          }
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvscope::kernels
