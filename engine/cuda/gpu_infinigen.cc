#include "engine/cuda/gpu_infinigen.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/cuda/gpu_infinigen_kernels.h"
#include "engine/infinigen_forward.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/infinigen_ops.h"
#include "kernels/cuda/kv_cache_ops.h"
#include "kernels/cuda/rope.h"

namespace kvscope::engine::cuda {
namespace {

using kernels::cuda::CudaKvPool;
using kernels::cuda::DeviceBuffer;
using kernels::cuda::PinnedBuffer;

int64_t AlignUp(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// float32 values as `dtype` bytes on the device.
absl::StatusOr<DeviceBuffer> UploadF32As(const std::vector<float>& values, DType dtype) {
  if (values.empty()) return DeviceBuffer();
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
  } else {
    uint16_t* out = reinterpret_cast<uint16_t*>(bytes.data());
    for (size_t i = 0; i < values.size(); ++i) {
      out[i] = dtype == DType::kBF16 ? F32ToBf16(values[i]) : F32ToF16(values[i]);
    }
  }
  KVSCOPE_ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(bytes.size()));
  KVSCOPE_RETURN_IF_ERROR(b.CopyFromHost(bytes.data(), bytes.size()));
  return b;
}

template <typename T>
absl::StatusOr<DeviceBuffer> UploadRaw(const std::vector<T>& values) {
  KVSCOPE_ASSIGN_OR_RETURN(DeviceBuffer b,
                           DeviceBuffer::Allocate(std::max<size_t>(values.size() * sizeof(T), 16)));
  if (!values.empty()) {
    KVSCOPE_RETURN_IF_ERROR(b.CopyFromHost(values.data(), values.size() * sizeof(T)));
  }
  return b;
}

}  // namespace

GpuInfinigen::GpuInfinigen(const kvcache::InfinigenSkew& skew, int32_t dense_layers,
                           InfinigenGather gather, GpuInfinigenShardView shard,
                           cudaStream_t stream)
    : skew_(skew),
      dense_layers_(std::min<int32_t>(dense_layers, static_cast<int32_t>(shard.pools.size()))),
      num_layers_(static_cast<int32_t>(shard.pools.size())),
      gather_(gather),
      shard_(std::move(shard)),
      stream_(stream) {}

GpuInfinigen::FoldedQkv GpuInfinigen::Fold(const ModelWeights& w, const InfinigenShard& ig,
                                          const GpuInfinigenShardView& s) {
  FoldedQkv f;
  if (!ig.folded()) return f;
  const int64_t d = s.head_dim;
  const int64_t hidden = s.hidden;
  const int64_t q_w = s.heads * d, kv_w = s.kv_heads * d;
  for (int64_t l = 0; l < w.config.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    std::vector<float> m;
    m.reserve((q_w + 2 * kv_w) * hidden);
    m.insert(m.end(), ig.q_weight(l), ig.q_weight(l) + q_w * hidden);
    m.insert(m.end(), ig.k_weight(l), ig.k_weight(l) + kv_w * hidden);
    const float* v = lw.v.data + s.kv_head_begin * d * hidden;
    m.insert(m.end(), v, v + kv_w * hidden);
    f.weight.push_back(std::move(m));
    std::vector<float> b;
    if (!lw.q_bias.empty() || !lw.k_bias.empty() || !lw.v_bias.empty()) {
      auto append = [&b](const float* src, int64_t n) {
        if (src == nullptr) {
          b.insert(b.end(), n, 0.0f);
        } else {
          b.insert(b.end(), src, src + n);
        }
      };
      append(ig.q_bias(l), q_w);
      append(ig.k_bias(l), kv_w);
      append(lw.v_bias.empty() ? nullptr : lw.v_bias.data + s.kv_head_begin * d, kv_w);
    }
    f.bias.push_back(std::move(b));
  }
  return f;
}

absl::StatusOr<std::unique_ptr<GpuInfinigen>> GpuInfinigen::Create(
    const ModelWeights& w, const kvcache::InfinigenSkew& skew, const InfinigenShard& folded,
    int32_t dense_layers, InfinigenGather gather, GpuInfinigenShardView shard,
    cudaStream_t stream) {
  const int64_t layers = static_cast<int64_t>(shard.pools.size());
  if (skew.num_layers != layers || skew.head_dim != shard.head_dim || skew.partial_dim < 1 ||
      skew.partial_dim > skew.head_dim || skew.num_kv_heads != w.config.num_kv_heads ||
      dense_layers < 1 || shard.gemm == nullptr) {
    return absl::InvalidArgumentError(
        "infinigen on the GPU: the skewing matrices do not match the model (layers, head_dim, "
        "KV heads or partial_dim), or dense_layers < 1");
  }
  std::unique_ptr<GpuInfinigen> ig(
      new GpuInfinigen(skew, dense_layers, gather, std::move(shard), stream));
  KVSCOPE_RETURN_IF_ERROR(ig->Init(w, folded));
  return ig;
}

absl::Status GpuInfinigen::Init(const ModelWeights& w, const InfinigenShard& ig) {
  const GpuInfinigenShardView& s = shard_;
  const int64_t layers = num_layers_;
  const int64_t sparse = layers - dense_layers_;
  const int64_t d = s.head_dim;
  const int64_t pd = skew_.partial_dim;
  const int64_t group = w.config.num_heads / w.config.num_kv_heads;
  partial_dim_ = static_cast<int32_t>(pd);
  const DType dt = s.dtype;
  const size_t es = DTypeSize(dt);
  auto q_kv_head = [&](int64_t h) { return static_cast<int32_t>((s.head_begin + h) / group); };
  auto k_kv_head = [&](int64_t h) { return static_cast<int32_t>(s.kv_head_begin + h); };

  // Columns.
  std::vector<int32_t> cq, ck, id;
  for (int64_t l = dense_layers_; l < layers; ++l) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const int32_t* c = skew_.Columns(static_cast<int32_t>(l), q_kv_head(h));
      cq.insert(cq.end(), c, c + pd);
    }
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      const int32_t* c = skew_.Columns(static_cast<int32_t>(l), k_kv_head(h));
      ck.insert(ck.end(), c, c + pd);
    }
  }
  for (int64_t h = 0; h < s.heads; ++h) {
    for (int64_t c = 0; c < pd; ++c) id.push_back(static_cast<int32_t>(c));
  }
  KVSCOPE_ASSIGN_OR_RETURN(columns_q_, UploadRaw(cq));
  KVSCOPE_ASSIGN_OR_RETURN(columns_k_, UploadRaw(ck));
  KVSCOPE_ASSIGN_OR_RETURN(identity_columns_, UploadRaw(id));

  if (s.llama) {
    // Skewing matrices of every layer (q and k are skewed after RoPE in all layers, as the
    // CPU does, so the stored keys are the CPU's).
    std::vector<float> aq, ak;
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t h = 0; h < s.heads; ++h) {
        const float* a = skew_.A(static_cast<int32_t>(l), q_kv_head(h));
        aq.insert(aq.end(), a, a + d * d);
      }
      for (int64_t h = 0; h < s.kv_heads; ++h) {
        const float* a = skew_.A(static_cast<int32_t>(l), k_kv_head(h));
        ak.insert(ak.end(), a, a + d * d);
      }
    }
    KVSCOPE_ASSIGN_OR_RETURN(a_q_, UploadRaw(aq));
    KVSCOPE_ASSIGN_OR_RETURN(a_k_, UploadRaw(ak));
  } else {
    // OPT: the partial query weights of the speculated layers (the CPU's folded rows).
    for (int64_t l = dense_layers_; l < layers; ++l) {
      const int64_t n = s.heads * pd * s.hidden;
      KVSCOPE_ASSIGN_OR_RETURN(
          DeviceBuffer wq,
          UploadF32As(std::vector<float>(ig.qp_weight(l), ig.qp_weight(l) + n), dt));
      DeviceBuffer bq;
      if (ig.qp_bias(l) != nullptr) {
        KVSCOPE_ASSIGN_OR_RETURN(
            bq, UploadF32As(std::vector<float>(ig.qp_bias(l), ig.qp_bias(l) + s.heads * pd), dt));
      }
      qp_weight_.push_back(std::move(wq));
      qp_bias_.push_back(std::move(bq));
    }
  }

  if (sparse == 0) return absl::OkStatus();
  // Partial keys and the pinned host pool, over the host slots (the dense layers' device
  // pool has one block per host block).
  const CudaKvPool& p0 = s.pools[0];
  partial_layer_bytes_ =
      AlignUp(p0.num_slots() * p0.num_kv_heads * pd * static_cast<int64_t>(es), 256);
  KVSCOPE_ASSIGN_OR_RETURN(
      partial_keys_, DeviceBuffer::Allocate(static_cast<size_t>(sparse * partial_layer_bytes_)));
  const int64_t half = AlignUp(p0.num_blocks * p0.block_elems() * static_cast<int64_t>(es), 256);
  KVSCOPE_ASSIGN_OR_RETURN(
      host_pool_, PinnedBuffer::Allocate(static_cast<size_t>(2 * sparse * half), /*mapped=*/true));
  KVSCOPE_ASSIGN_OR_RETURN(void* mapped, host_pool_.DevicePointer());
  for (int64_t i = 0; i < sparse; ++i) {
    CudaKvPool host = s.pools[dense_layers_ + i];
    host.k = host_pool_.as<char>() + (2 * i) * half;
    host.v = host_pool_.as<char>() + (2 * i + 1) * half;
    host_pools_.push_back(host);
    CudaKvPool dev = host;
    dev.k = static_cast<char*>(mapped) + (2 * i) * half;
    dev.v = static_cast<char*>(mapped) + (2 * i + 1) * half;
    mapped_pools_.push_back(dev);
  }
  return absl::OkStatus();
}

int64_t GpuInfinigen::pinned_bytes() const {
  return static_cast<int64_t>(host_pool_.bytes() + step_host_.bytes() + readback_.bytes() +
                              gather_staging_.bytes());
}

int64_t GpuInfinigen::device_bytes() const {
  int64_t b = static_cast<int64_t>(a_q_.bytes() + a_k_.bytes() + columns_q_.bytes() +
                                   identity_columns_.bytes() + columns_k_.bytes() +
                                   partial_keys_.bytes() + step_dev_.bytes() + x_rows_.bytes() +
                                   q_rows_.bytes() + partial_q_.bytes() + scores_.bytes() +
                                   gather_packed_.bytes());
  b += static_cast<int64_t>(working_k_.bytes() + working_v_.bytes());
  for (const DeviceBuffer& x : qp_weight_) b += static_cast<int64_t>(x.bytes());
  for (const DeviceBuffer& x : qp_bias_) b += static_cast<int64_t>(x.bytes());
  return b;
}

absl::Status GpuInfinigen::PrepareStep(kvcache::InfinigenKvCache& cache,
                                       absl::Span<const kernels::SeqKvView> host_views,
                                       absl::Span<const kernels::SeqKvView> dev_views,
                                       absl::Span<const kvcache::SeqStep> steps,
                                       absl::Span<const int32_t> first_rows,
                                       absl::Span<const int32_t> new_slots) {
  num_sparse_ = 0;
  prepared_ = false;
  alpha_ = cache.manager().alpha();
  if (cache.skew() != &skew_) {
    return absl::FailedPreconditionError(
        "infinigen on the GPU: the cache's skewing matrices are not the ones the shard was "
        "enabled with (GpuModelShard::EnableInfinigen)");
  }
  const int64_t sparse = num_layers_ - dense_layers_;
  if (sparse == 0) return absl::OkStatus();
  const int32_t N = static_cast<int32_t>(host_views.size());
  if (dev_views.size() != host_views.size() || steps.size() != host_views.size() ||
      first_rows.size() != host_views.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "infinigen on the GPU: a step of ", host_views.size(), " host views has ",
        dev_views.size(), " device views, ", steps.size(), " sequences and ", first_rows.size(),
        " first rows"));
  }
  const absl::Span<const int32_t> rows = cache.SpeculationRows();
  const int32_t S = static_cast<int32_t>(rows.size());
  const int32_t K = static_cast<int32_t>(shard_.kv_heads);

  // The working-pool numbering (engine/infinigen_offload_plan.h).
  std::vector<bool> is_sparse(static_cast<size_t>(N), false);
  for (int32_t r = 0; r < S; ++r) is_sparse[cache.SparseStepIndex(r)] = true;
  std::vector<OffloadSeq> seqs(static_cast<size_t>(N));
  for (int32_t i = 0; i < N; ++i) {
    const kernels::SeqKvView& v = host_views[i];
    if (!is_sparse[i] && v.head_stride != 0) {
      return absl::InternalError(
          "infinigen on the GPU: a sequence that attends to every token has per-head lists");
    }
    seqs[i].slots = absl::MakeConstSpan(v.slots, v.num_cached);
    seqs[i].positions = absl::MakeConstSpan(v.positions, v.num_cached);
    seqs[i].start_position = steps[i].start_position;
    seqs[i].num_new_tokens = steps[i].num_new_tokens;
    seqs[i].first_row = first_rows[i];
    seqs[i].sparse = is_sparse[i];
  }
  const int64_t first_prefetch = cache.FirstPrefetchSlot();
  KVSCOPE_ASSIGN_OR_RETURN(
      const OffloadPlan plan,
      PlanOffloadStep(seqs, new_slots, 2 * cache.PrefetchBufferSlots(), shard_.pools[0].block_size));

  int32_t max_pos = 1, max_sel = 1;
  for (int32_t r = 0; r < S; ++r) {
    const int32_t p = cache.SparsePosition(r);
    max_pos = std::max(max_pos, p);
    max_sel = std::max(max_sel, std::min(cache.SparseMaxNumKv(r), p));
  }
  const int64_t C = max_pos;
  const int32_t P = max_sel;
  const int32_t V = P + 1;
  cand_stride_ = C;
  sel_stride_ = P;
  view_stride_ = V;
  num_step_seqs_ = N;
  num_history_rows_ = static_cast<int64_t>(plan.history_src.size()) * K;

  Layout& lay = lay_;
  int64_t at = 0;  // int32 elements
  auto take = [&at](int64_t n) {
    const int64_t o = at;
    at = AlignUp(at + n, 4);
    return o;
  };
  static_assert(sizeof(kernels::cuda::GatherRow) == 3 * sizeof(int32_t) &&
                    alignof(kernels::cuda::GatherRow) == alignof(int32_t),
                "GatherRow must be three packed int32 (it travels in the int32 step buffer)");
  lay.spec_rows = take(S);
  lay.spec_pos = take(S);
  lay.max_num_kv = take(S);
  lay.new_slot = take(S);
  lay.new_pos = take(S);
  lay.view_index = take(S);
  lay.fresh = take(static_cast<int64_t>(plan.fresh_slots.size()));
  lay.lists = take(static_cast<int64_t>(plan.lists.size()));
  lay.history = take(3 * num_history_rows_);
  lay.dst_base = take(sparse * S);
  lay.num_cands = take(sparse * S);
  lay.cand_rows = take(sparse * S * K * C);
  lay.cand_pos = take(sparse * S * K * C);
  lay.views = at * 4;  // bytes, 16-aligned
  const int64_t views_bytes =
      AlignUp(sparse * N * static_cast<int64_t>(sizeof(kernels::SeqKvView)), 16);
  at += views_bytes / 4;
  const int64_t upload_ints = at;
  lay.view_slots = take(sparse * S * K * V);
  lay.view_pos = take(sparse * S * K * V);
  lay.counts = take(sparse * S);
  lay.selected = take(sparse * S * K * P);
  lay.total_bytes = at * 4;
  KVSCOPE_RETURN_IF_ERROR(ReservePinned(step_host_, static_cast<size_t>(upload_ints * 4)));
  KVSCOPE_RETURN_IF_ERROR(Reserve(step_dev_, static_cast<size_t>(lay.total_bytes)));

  int32_t* h = step_host_.as<int32_t>();
  char* dev = step_dev_.as<char>();
  std::copy(plan.fresh_slots.begin(), plan.fresh_slots.end(), h + lay.fresh);
  std::copy(plan.lists.begin(), plan.lists.end(), h + lay.lists);
  kernels::cuda::GatherRow* hist = reinterpret_cast<kernels::cuda::GatherRow*>(h + lay.history);
  for (size_t g = 0; g < plan.history_src.size(); ++g) {
    for (int32_t kh = 0; kh < K; ++kh) {
      kernels::cuda::GatherRow& row = hist[g * K + kh];
      row.src_slot = plan.history_src[g];
      row.dst_slot = plan.history_dst[g];
      row.head = kh;
    }
  }
  cand_pos_host_.assign(static_cast<size_t>(sparse * S * K * C), 0);
  cand_rows_host_.assign(static_cast<size_t>(sparse * S * K * C), 0);
  std::vector<std::vector<int32_t>> cands;
  for (int32_t r = 0; r < S; ++r) {
    const int32_t p = cache.SparsePosition(r);
    h[lay.spec_rows + r] = rows[r];
    h[lay.spec_pos + r] = p;
    h[lay.max_num_kv + r] = cache.SparseMaxNumKv(r);
    h[lay.new_slot + r] = plan.fresh_slots[rows[r]];  // the new token's working slot
    h[lay.new_pos + r] = p;
    h[lay.view_index + r] = cache.SparseStepIndex(r);
  }
  const int32_t* dev_lists = reinterpret_cast<const int32_t*>(dev) + lay.lists;
  for (int64_t li = 0; li < sparse; ++li) {
    const int32_t layer = static_cast<int32_t>(dense_layers_ + li);
    for (int32_t r = 0; r < S; ++r) {
      // The layer's prefetch buffer, in the working pool's numbering.
      h[lay.dst_base + li * S + r] =
          static_cast<int32_t>(cache.PrefetchSlot(layer, r) - first_prefetch);
      cache.SpeculationCandidates(layer, r, &cands);
      const int32_t n = cands.empty() ? 0 : static_cast<int32_t>(cands[0].size());
      h[lay.num_cands + li * S + r] = n;
      for (int32_t kh = 0; kh < K; ++kh) {
        const int64_t row = ((li * S + r) * K + kh) * C;
        for (int32_t j = 0; j < n; ++j) {
          const int32_t pos = cands[kh][j];
          const int32_t slot = cache.SparseSlot(r, pos);
          h[lay.cand_rows + row + j] = slot;
          h[lay.cand_pos + row + j] = pos;
          cand_rows_host_[row + j] = slot;
          cand_pos_host_[row + j] = pos;
        }
      }
    }
    kernels::SeqKvView* hv = reinterpret_cast<kernels::SeqKvView*>(
        reinterpret_cast<char*>(h) + lay.views + li * N * sizeof(kernels::SeqKvView));
    for (int32_t i = 0; i < N; ++i) {
      if (is_sparse[i]) continue;
      // Every token: the fresh and gathered rows, at the positions the shard uploaded.
      hv[i] = kernels::SeqKvView{dev_lists + plan.list_begin[i], dev_views[i].positions,
                                 host_views[i].num_cached, 0};
    }
    for (int32_t r = 0; r < S; ++r) {
      kernels::SeqKvView& v = hv[cache.SparseStepIndex(r)];
      const int64_t list = (li * S + r) * K * static_cast<int64_t>(V);
      v.slots = reinterpret_cast<const int32_t*>(dev) + lay.view_slots + list;
      v.positions = reinterpret_cast<const int32_t*>(dev) + lay.view_pos + list;
      v.num_cached = 0;  // set on the device (BuildSelectionViews)
      v.head_stride = V;
    }
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(step_dev_.data(), step_host_.data(),
                                               static_cast<size_t>(upload_ints * 4),
                                               cudaMemcpyHostToDevice, stream_));
  h2d_bytes_ += upload_ints * 4;

  // The working pool (contents need not survive: every slot a view lists is written this step).
  const size_t es = DTypeSize(shard_.dtype);
  working_ = shard_.pools[0];
  working_.num_blocks = plan.num_slots / working_.block_size;
  const size_t half = static_cast<size_t>(working_.num_blocks * working_.block_elems()) * es;
  KVSCOPE_RETURN_IF_ERROR(Reserve(working_k_, half));
  KVSCOPE_RETURN_IF_ERROR(Reserve(working_v_, half));
  working_.k = working_k_.data();
  working_.v = working_v_.data();

  // Scratch.
  if (S > 0) {
    const int64_t q_width =
        std::max<int64_t>(shard_.heads * shard_.head_dim, shard_.heads * partial_dim_);
    KVSCOPE_RETURN_IF_ERROR(Reserve(x_rows_, S * shard_.hidden * es));
    KVSCOPE_RETURN_IF_ERROR(Reserve(q_rows_, S * q_width * es));
    KVSCOPE_RETURN_IF_ERROR(Reserve(partial_q_, S * shard_.heads * partial_dim_ * sizeof(float)));
    KVSCOPE_RETURN_IF_ERROR(Reserve(scores_, S * shard_.heads * C * sizeof(double)));
    const int64_t readback_ints = lay.selected - lay.counts + sparse * S * K * P;
    KVSCOPE_RETURN_IF_ERROR(ReservePinned(readback_, static_cast<size_t>(readback_ints * 4)));
  }
  num_sparse_ = S;
  prepared_ = true;
  return absl::OkStatus();
}

const kernels::SeqKvView* GpuInfinigen::Views(int64_t layer) const {
  if (!prepared_ || !Offloaded(layer)) return nullptr;
  return reinterpret_cast<const kernels::SeqKvView*>(
      step_dev_.as<char>() + lay_.views +
      LayerIndex(layer) * num_step_seqs_ * static_cast<int64_t>(sizeof(kernels::SeqKvView)));
}

absl::Status GpuInfinigen::SkewAfterRope(int64_t layer, void* q, void* k, int64_t tokens) {
  if (!shard_.llama || tokens == 0) return absl::OkStatus();
  const int64_t d = shard_.head_dim;
  KVSCOPE_RETURN_IF_ERROR(SkewHeads(q, tokens, shard_.qkv_w, static_cast<int32_t>(shard_.heads),
                                    static_cast<int32_t>(d),
                                    a_q_.as<float>() + layer * shard_.heads * d * d, shard_.dtype,
                                    stream_));
  return SkewHeads(k, tokens, shard_.qkv_w, static_cast<int32_t>(shard_.kv_heads),
                   static_cast<int32_t>(d), a_k_.as<float>() + layer * shard_.kv_heads * d * d,
                   shard_.dtype, stream_);
}

absl::Status GpuInfinigen::Speculate(int64_t layer, const void* normed, int64_t tokens) {
  const int64_t target = layer + 1;
  if (!Speculated(target)) return absl::OkStatus();
  const int64_t li = LayerIndex(target);
  const int32_t S = num_sparse_;
  const int32_t K = static_cast<int32_t>(shard_.kv_heads);
  const int32_t H = static_cast<int32_t>(shard_.heads);
  const int64_t d = shard_.head_dim;
  const int64_t hidden = shard_.hidden;
  const int32_t pd = partial_dim_;
  const DType dt = shard_.dtype;
  cudaStream_t st = stream_;
  const int32_t* base = step_dev_.as<int32_t>();
  int32_t* mut = step_dev_.as<int32_t>();

  // Partial queries of layer `target` at the speculation rows.
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Embedding(normed, tokens, hidden, base + lay_.spec_rows,
                                                   S, x_rows_.data(), dt, nullptr, st));
  if (!shard_.llama) {
    KVSCOPE_RETURN_IF_ERROR(shard_.gemm->Linear(x_rows_.data(), S, hidden, qp_weight_[li].data(),
                                                H * pd, hidden, qp_bias_[li].data(),
                                                q_rows_.data(), false, dt, st));
    KVSCOPE_RETURN_IF_ERROR(PickPartialColumns(q_rows_.data(), S, H * pd, H, pd,
                                               identity_columns_.as<int32_t>(), pd,
                                               partial_q_.as<float>(), dt, st));
  } else {
    const int64_t q_w = H * d;
    KVSCOPE_RETURN_IF_ERROR(shard_.gemm->Linear(x_rows_.data(), S, hidden,
                                                shard_.q_weight[target], q_w, hidden,
                                                shard_.q_bias[target], q_rows_.data(), false, dt,
                                                st));
    KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Rope(q_rows_.data(), S, H, d, q_w,
                                                base + lay_.spec_pos, shard_.inv_freq,
                                                shard_.rot_dim, shard_.rope_scaling, dt, st));
    KVSCOPE_RETURN_IF_ERROR(SkewHeads(q_rows_.data(), S, q_w, H, static_cast<int32_t>(d),
                                      a_q_.as<float>() + target * H * d * d, dt, st));
    KVSCOPE_RETURN_IF_ERROR(PickPartialColumns(q_rows_.data(), S, q_w, H, d,
                                               columns_q_.as<int32_t>() + li * H * pd, pd,
                                               partial_q_.as<float>(), dt, st));
  }

  // Scores, count, top-k (kernels/cuda/infinigen_ops.h).
  const int64_t C = cand_stride_;
  const int32_t* num_cands = base + lay_.num_cands + li * S;
  const int32_t* cand_rows = base + lay_.cand_rows + li * S * K * C;
  int32_t* counts = mut + lay_.counts + li * S;
  int32_t* selected = mut + lay_.selected + li * S * K * sel_stride_;
  const void* pk = partial_keys_.as<char>() + li * partial_layer_bytes_;
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::InfinigenPartialScores(
      partial_q_.as<float>(), pk, dt, K, pd, cand_rows, C, num_cands, S, H, scores_.as<double>(),
      st));
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::InfinigenSpeculatedCount(
      scores_.as<double>(), C, num_cands, S, H, alpha_, base + lay_.max_num_kv, counts, st));
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::InfinigenTopK(scores_.as<double>(), C, num_cands, counts,
                                                       S, H, K, selected, sel_stride_, st));

  // Views and gather.
  SelectionArgs a;
  a.num_seqs = S;
  a.kv_heads = K;
  a.max_count = sel_stride_;
  a.counts = counts;
  a.selected = selected;
  a.selected_stride = sel_stride_;
  a.cand_rows = cand_rows;
  a.cand_pos = base + lay_.cand_pos + li * S * K * C;
  a.cand_stride = C;
  a.dst_base = base + lay_.dst_base + li * S;
  a.new_slot = base + lay_.new_slot;
  a.new_pos = base + lay_.new_pos;
  a.view_slots = mut + lay_.view_slots + li * S * K * view_stride_;
  a.view_pos = mut + lay_.view_pos + li * S * K * view_stride_;
  a.view_stride = view_stride_;
  a.views = const_cast<kernels::SeqKvView*>(Views(target));
  a.view_index = base + lay_.view_index;
  KVSCOPE_RETURN_IF_ERROR(BuildSelectionViews(a, st));
  if (gather_ == InfinigenGather::kZeroCopy) {
    return GatherSelectionZeroCopy(a, mapped_pools_[li], working_, st);
  }
  return GatherCopyEngine(target);
}

absl::Status GpuInfinigen::GatherCopyEngine(int64_t layer) {
  const int64_t li = LayerIndex(layer);
  const int32_t S = num_sparse_;
  const int32_t K = static_cast<int32_t>(shard_.kv_heads);
  const int32_t P = sel_stride_;
  const int64_t C = cand_stride_;
  // The layer's counts and indices come back to the host (the previous layer's copy has
  // completed once this synchronizes, so the staging buffer is free again).
  int32_t* rb = readback_.as<int32_t>();
  const int64_t counts_at = li * S;
  const int64_t selected_at = (lay_.selected - lay_.counts) + li * S * K * P;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      rb + counts_at, step_dev_.as<int32_t>() + lay_.counts + li * S, S * sizeof(int32_t),
      cudaMemcpyDeviceToHost, stream_));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
      rb + selected_at, step_dev_.as<int32_t>() + lay_.selected + li * S * K * P,
      static_cast<size_t>(S) * K * P * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  d2h_bytes_ += static_cast<int64_t>(S) * (1 + K * P) * 4;
  const int32_t* h = step_host_.as<int32_t>();
  gather_rows_.clear();
  for (int32_t r = 0; r < S; ++r) {
    const int32_t count = rb[counts_at + r];
    const int32_t dst = h[lay_.dst_base + li * S + r];
    for (int32_t kh = 0; kh < K; ++kh) {
      const int64_t head_row = static_cast<int64_t>(r) * K + kh;
      for (int32_t j = 0; j < count; ++j) {
        const int32_t sel = rb[selected_at + head_row * P + j];
        kernels::cuda::GatherRow row;
        row.src_slot = cand_rows_host_[(li * S * K + head_row) * C + sel];
        row.dst_slot = dst + j;
        row.head = kh;
        gather_rows_.push_back(row);
      }
    }
  }
  const int64_t n = static_cast<int64_t>(gather_rows_.size());
  if (n == 0) return absl::OkStatus();
  const size_t bytes =
      kernels::cuda::GatherPackedBytes(n, static_cast<int32_t>(shard_.head_dim), shard_.dtype);
  KVSCOPE_RETURN_IF_ERROR(ReservePinned(gather_staging_, bytes));
  KVSCOPE_RETURN_IF_ERROR(Reserve(gather_packed_, bytes));
  return kernels::cuda::GatherCopyEngine(host_pools_[li], gather_rows_.data(), n,
                                         gather_staging_.data(), gather_staging_.bytes(),
                                         gather_packed_.data(), gather_packed_.bytes(),
                                         working_, stream_, &h2d_bytes_);
}

absl::Status GpuInfinigen::AfterWriteKv(int64_t layer, const void* k, const void* v,
                                        const int32_t* slots, int64_t tokens,
                                        int64_t written_rows) {
  if (!Offloaded(layer) || tokens == 0) return absl::OkStatus();
  if (!prepared_) {
    return absl::FailedPreconditionError("infinigen on the GPU: AfterWriteKv before PrepareStep");
  }
  const int64_t li = LayerIndex(layer);
  // store_cache: the host pool at the host slots.
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::WriteKv(mapped_pools_[li], k, v, shard_.qkv_w, slots,
                                                 tokens, shard_.error_flag, stream_));
  d2h_bytes_ += kernels::cuda::GatherBytes(written_rows * shard_.kv_heads,
                                           static_cast<int32_t>(shard_.head_dim), shard_.dtype);
  // The step's attention reads the new rows on the device.
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::WriteKv(working_, k, v, shard_.qkv_w,
                                                 step_dev_.as<int32_t>() + lay_.fresh, tokens,
                                                 shard_.error_flag, stream_));
  // Partial keys: read on the device (the fresh rows), stored at the host slots.
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::WritePartialKeys(
      working_, step_dev_.as<int32_t>() + lay_.fresh, static_cast<int32_t>(tokens),
      columns_k_.as<int32_t>() + li * shard_.kv_heads * partial_dim_, partial_dim_,
      partial_keys_.as<char>() + li * partial_layer_bytes_, stream_, /*dst_rows=*/slots));
  if (num_history_rows_ == 0) return absl::OkStatus();
  // The earlier tokens of the sequences that attend to all of them (load_cache).
  return kernels::cuda::GatherZeroCopy(
      mapped_pools_[li],
      reinterpret_cast<const kernels::cuda::GatherRow*>(step_dev_.as<int32_t>() + lay_.history),
      num_history_rows_, working_, stream_, &h2d_bytes_);
}

absl::Status GpuInfinigen::FinishStep(kvcache::InfinigenKvCache& cache) {
  const int32_t S = num_sparse_;
  if (S == 0) return absl::OkStatus();
  const int64_t sparse = num_layers_ - dense_layers_;
  const int32_t K = static_cast<int32_t>(shard_.kv_heads);
  const int32_t P = sel_stride_;
  const int64_t C = cand_stride_;
  const int64_t ints = (lay_.selected - lay_.counts) + sparse * S * K * P;
  int32_t* rb = readback_.as<int32_t>();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(rb, step_dev_.as<int32_t>() + lay_.counts,
                                               static_cast<size_t>(ints) * 4,
                                               cudaMemcpyDeviceToHost, stream_));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  d2h_bytes_ += ints * 4;
  std::vector<int32_t> positions(static_cast<size_t>(S) * K * P);
  for (int64_t li = 0; li < sparse; ++li) {
    const int32_t* counts = rb + li * S;
    const int32_t* selected = rb + (lay_.selected - lay_.counts) + li * S * K * P;
    int64_t rows = 0;
    for (int32_t r = 0; r < S; ++r) {
      const int32_t count = counts[r];
      if (count < 0 || count > P) {
        return absl::InternalError(absl::StrCat("infinigen on the GPU: layer ",
                                                dense_layers_ + li, " selected ", count,
                                                " tokens (at most ", P, ")"));
      }
      rows += static_cast<int64_t>(count) * K;
      for (int32_t kh = 0; kh < K; ++kh) {
        const int64_t head_row = static_cast<int64_t>(r) * K + kh;
        for (int32_t j = 0; j < count; ++j) {
          const int32_t sel = selected[head_row * P + j];
          if (sel < 0 || sel >= C) {
            return absl::InternalError("infinigen on the GPU: a selected index is out of range");
          }
          positions[head_row * P + j] = cand_pos_host_[(li * S * K + head_row) * C + sel];
        }
      }
    }
    if (gather_ == InfinigenGather::kZeroCopy) {
      h2d_bytes_ += kernels::cuda::GatherBytes(rows, static_cast<int32_t>(shard_.head_dim),
                                               shard_.dtype);
    }
    KVSCOPE_RETURN_IF_ERROR(cache.RecordSpeculation(static_cast<int32_t>(dense_layers_ + li),
                                                    absl::MakeConstSpan(counts, S), positions, P));
  }
  return absl::OkStatus();
}

}  // namespace kvscope::engine::cuda
