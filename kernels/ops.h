// File: kernels/ops.h
//
// The op API: functions over raw buffers with explicit shapes. The engine calls only these.
// This header declares the CPU reference implementations (kernels/cpu/, always built);
// the CUDA implementations (kernels/cuda/) follow the same signatures with a stream.
//
// Conventions for every op:
//   - Buffers are row-major float32 unless stated; shapes are given in brackets.
//   - Output buffers must not alias inputs unless the op says "in place".
//   - Ops that can meet bad data (token ids, shapes from a caller) return absl::Status;
//     pure arithmetic ops return void and require valid shapes (checked in debug builds).
//   - CPU ops parallelize over rows with OpenMP; they are thread-compatible: concurrent
//     calls on disjoint buffers are safe (tensor-parallel ranks run them at the same time).
#ifndef KVSCOPE_KERNELS_OPS_H_
#define KVSCOPE_KERNELS_OPS_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace kvscope::kernels {

// ---------------------------------------------------------------------------------------
// Elementwise and normalization

// out[i, :] = table[ids[i], :]. table: [vocab, hidden]; ids: [n]; out: [n, hidden].
// InvalidArgument (naming the position and id) if an id is outside [0, vocab).
absl::Status Embedding(const float* table, int64_t vocab, int64_t hidden, const int32_t* ids,
                       int64_t n, float* out);

// out = x / sqrt(mean(x^2) + eps) * weight, per row. x, out: [rows, cols]; weight: [cols].
// In place allowed (out == x).
void RmsNorm(const float* x, const float* weight, float eps, int64_t rows, int64_t cols,
             float* out);

// out = (x - mean) / sqrt(var + eps) * weight + bias, per row (biased variance, as
// torch.nn.LayerNorm). bias may be null. In place allowed.
void LayerNorm(const float* x, const float* weight, const float* bias, float eps, int64_t rows,
               int64_t cols, float* out);

// Rotary position embedding in place, "rotate half" (GPT-NeoX / HF Llama) layout: for each
// token t, head h and i < rot_dim/2, the pair (x[i], x[i + rot_dim/2]) is rotated by angle
// positions[t] * inv_freq[i], then scaled by `attention_scaling` (1.0 except for rope types
// that scale cos/sin). x: [tokens, heads, head_dim] with row stride `token_stride` floats
// between tokens; positions: [tokens]; inv_freq: [rot_dim/2]. Dimensions >= rot_dim are
// left untouched.
void Rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t token_stride,
          const int32_t* positions, const float* inv_freq, int64_t rot_dim,
          float attention_scaling);

// out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)). gate, up, out: [rows, cols]
// with row strides gate_stride, up_stride, out_stride (so a fused [rows, 2*cols] gate|up
// buffer can be passed as two views). In place on gate allowed.
void SiluMul(const float* gate, int64_t gate_stride, const float* up, int64_t up_stride,
             int64_t rows, int64_t cols, float* out, int64_t out_stride);

// x = max(x, 0), in place. x: [n].
void Relu(float* x, int64_t n);

// y += x. x, y: [n].
void AddInPlace(float* y, const float* x, int64_t n);

// x[r, :] += bias for every row. x: [rows, cols]; bias: [cols].
void AddBias(float* x, const float* bias, int64_t rows, int64_t cols);

// ---------------------------------------------------------------------------------------
// Matrix multiply

// y = x · wᵀ (+ bias) (+ y if accumulate), the shape of a linear layer with weights stored
// [out_features, in_features] as in PyTorch. x: [m, k] (row stride k); w: [n, k] with row
// stride ldw >= k (so a column slice of a larger matrix is passed without a copy);
// bias: [n] or null; y: [m, n] (row stride n). Through BLAS (sgemm), using every core.
void Linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, int64_t ldw,
            const float* bias, float* y, bool accumulate = false);

// ---------------------------------------------------------------------------------------
// Attention over a KV cache
//
// KV storage layout (the same the CUDA kernels read): per layer, K and V each live in a pool
// of blocks, pool[num_blocks][num_kv_heads][block_size][head_dim] (float32 on the CPU).
// Slot s (a token's place in the pool) is block s / block_size, offset s % block_size.
// Element (slot s, kv head h, dim d) is at
//   pool + ((s / block_size) * num_kv_heads + h) * block_size * head_dim
//        + (s % block_size) * head_dim + d.
struct KvPoolView {
  float* k = nullptr;         // [num_blocks, num_kv_heads, block_size, head_dim]
  float* v = nullptr;         // same shape as k
  int64_t num_blocks = 0;
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;
};

// Copies new keys/values into their slots. k, v: [tokens, num_kv_heads, head_dim] with row
// stride `token_stride` floats; slots: [tokens], -1 = skip (padding). InvalidArgument if a
// slot is outside the pool.
absl::Status WriteKv(const KvPoolView& pool, const float* k, const float* v,
                     int64_t token_stride, const int32_t* slots, int64_t tokens);

// What one sequence attends to: for each KV head, `num_cached` cached tokens, listed by
// their slots in the pool together with the token's position in the sequence (its
// original position, which the causal rule compares with the query's position).
// slots/positions: [num_kv_heads][head_stride] when head_stride > 0 (each KV head keeps its
// own token set, e.g. score-based eviction), or one list [num_cached] shared by all heads
// when head_stride == 0.
struct SeqKvView {
  const int32_t* slots = nullptr;
  const int32_t* positions = nullptr;
  int32_t num_cached = 0;
  int64_t head_stride = 0;
};

// Causal scaled-dot-product attention with grouped-query heads.
//   q:        [tokens, num_heads, head_dim], row stride q_stride
//   out:      [tokens, num_heads, head_dim], row stride out_stride
//   token_seq:[tokens] index into `seqs` of each query token's sequence
//   token_pos:[tokens] the query token's position; it attends cached tokens of its sequence
//             whose position is <= its own
//   seqs:     [num_seqs]
// KV head of query head h is h / (num_heads / num_kv_heads). scale is usually 1/sqrt(d).
// Softmax with the max subtracted (float32 accumulation at least; the CPU reference computes
// scores, softmax and Σ p·v in double and rounds once).
// attn_mass (optional, may be null): [num_seqs][num_heads][max_cached] floats, row stride
// max_cached (>= every num_cached); for each query token, its post-softmax probability on the
// j-th listed cached token of its head is ADDED at [seq][head][j] (the H2O accumulated score).
// InvalidArgument if a query has no visible cached token or indices are out of range; then
// nothing has been written.
absl::Status Attention(const float* q, int64_t q_stride, int64_t tokens, int32_t num_heads,
                       int32_t head_dim, const int32_t* token_seq, const int32_t* token_pos,
                       const KvPoolView& pool, const SeqKvView* seqs, int32_t num_seqs,
                       float scale, float* out, int64_t out_stride, float* attn_mass,
                       int64_t max_cached);

// ---------------------------------------------------------------------------------------
// Token selection

// ids[r] = argmax over logits[r, :] (lowest index on ties). logits: [rows, vocab].
void Argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* ids);

// Samples one token from one row of logits [vocab]:
//   1. logits / temperature (temperature > 0), softmax in float64;
//   2. keep the top_k most probable (top_k <= 0: all), ties broken by lower index;
//   3. keep the smallest prefix (in descending probability) whose mass, relative to the
//      tokens kept by step 2, is >= top_p (top_p >= 1: all), always at least one token;
//   4. renormalize and return the token whose cumulative mass interval contains `u`,
//      u in [0, 1) (given by the caller's seeded generator, so results are reproducible),
//      the intervals laid out over the kept tokens in ascending token id.
// temperature <= 0 means greedy (argmax). Deterministic for fixed inputs.
int32_t SampleToken(const float* logits, int64_t vocab, float temperature, int32_t top_k,
                    float top_p, double u);

}  // namespace kvscope::kernels

#endif  // KVSCOPE_KERNELS_OPS_H_
