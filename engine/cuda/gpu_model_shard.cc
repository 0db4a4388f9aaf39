#include "engine/cuda/gpu_model_shard.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/cuda/gpu_evicting_state.h"
#include "kernels/cuda/attention_decode.h"
#include "kernels/cuda/attention_prefill.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/norm.h"
#include "kernels/cuda/rope.h"
#include "kvcache/evicting_kv_cache.h"
#include "kvcache/infinigen_kv_cache.h"

namespace kvscope::engine::cuda {
namespace {

using kernels::cuda::CudaKvPool;
using kernels::cuda::DeviceBuffer;
using kernels::cuda::Gemm;
using kernels::cuda::PinnedBuffer;

std::string GiB(int64_t bytes) {
  return absl::StrFormat("%.3f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
}

int64_t AlignUp(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// Host float32 rows gathered for one device tensor, then converted and uploaded at once.
class HostMatrix {
 public:
  explicit HostMatrix(int64_t cols) : cols_(cols) {}
  // Appends rows [0, rows) of `src` (row stride `stride` floats), columns [0, cols_).
  void AppendRows(const float* src, int64_t rows, int64_t stride) {
    const size_t at = data_.size();
    data_.resize(at + rows * cols_);
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(src + r * stride, cols_, data_.data() + at + r * cols_);
    }
  }
  // Appends `rows` rows of zeros.
  void AppendZeros(int64_t rows) { data_.resize(data_.size() + rows * cols_, 0.0f); }
  const std::vector<float>& data() const { return data_; }

 private:
  int64_t cols_;
  std::vector<float> data_;
};

// Converts float32 values to `dtype` bytes (round to nearest even).
std::vector<uint8_t> ConvertFromF32(const std::vector<float>& values, DType dtype) {
  std::vector<uint8_t> bytes(values.size() * DTypeSize(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), values.data(), bytes.size());
    return bytes;
  }
  uint16_t* out = reinterpret_cast<uint16_t*>(bytes.data());
  if (dtype == DType::kBF16) {
    for (size_t i = 0; i < values.size(); ++i) out[i] = F32ToBf16(values[i]);
  } else {
    for (size_t i = 0; i < values.size(); ++i) out[i] = F32ToF16(values[i]);
  }
  return bytes;
}

// Offsets of one step's inputs inside the staging buffer (bytes, 16-byte aligned).
struct StepLayout {
  int64_t ids = 0;          // int32 [tokens]
  int64_t pos = 0;          // int32 [tokens]
  int64_t pos_rows = 0;     // int32 [tokens] (OPT learned positions: pos + offset)
  int64_t token_seq = 0;    // int32 [tokens]
  int64_t seq_q_start = 0;  // int32 [num_seqs + 1]
  int64_t new_slots = 0;    // int32 [tokens]
  int64_t logit_rows = 0;   // int32 [rows]
  int64_t views = 0;        // SeqKvView [num_seqs], device pointers
  int64_t lists = 0;        // int32 slot and position lists
  int64_t total = 0;
};

}  // namespace

std::string GpuMemoryReport::Describe() const {
  std::string s = absl::StrCat("device ", device, ": weights ", GiB(weight_bytes), ", KV pool ",
                               GiB(kv_pool_bytes), " (", num_kv_blocks, " blocks/layer), workspace ",
                               GiB(workspace_bytes), ", pinned host ", GiB(pinned_host_bytes),
                               ", PCIe h2d ", GiB(h2d_bytes), " d2h ", GiB(d2h_bytes));
  if (graphs_captured > 0) {
    absl::StrAppend(&s, ", ", graphs_captured, " decode graphs, ", graph_launches, " replays");
  }
  if (plan.has_value()) absl::StrAppend(&s, "; plan: ", plan->Describe());
  return s;
}

absl::Status CheckGpuSupportsCache(kvcache::KvCache& kv) {
  if (auto* evicting = dynamic_cast<kvcache::EvictingKvCache*>(&kv); evicting != nullptr) {
    return CheckGpuSupportsEvictionPolicy(*evicting);  // h2o, streaming
  }
  return absl::OkStatus();
}

// Device state of a shard.
struct GpuModelShard::Impl {
  struct Layer {
    DeviceBuffer attn_norm, attn_norm_bias, mlp_norm, mlp_norm_bias;
    DeviceBuffer qkv, qkv_bias;        // [q_w + 2 kv_w, hidden], [q_w + 2 kv_w] or empty
    DeviceBuffer o, o_bias;            // [hidden, q_w] (this rank's columns); bias: rank 0
    DeviceBuffer gate_up, gate_up_bias;  // Llama [2 inter, hidden]; OPT: up [inter, hidden]
    DeviceBuffer down, down_bias;      // [hidden, inter] (this rank's columns); bias: rank 0
  };

  std::unique_ptr<Gemm> gemm;
  // Weights.
  DeviceBuffer embed, positions, project_in, project_out, final_norm, final_norm_bias, lm_head;
  const void* lm_head_ptr = nullptr;  // lm_head or embed (tied)
  std::vector<Layer> layers;
  DeviceBuffer inv_freq;  // float32 [rot_dim / 2]
  // KV pool: every layer's K then V, one allocation.
  DeviceBuffer kv_pool;
  // Activations, sized for `capacity_tokens` tokens.
  int64_t capacity_tokens = 0;
  DeviceBuffer x, normed, qkv, attn, proj, gate_up, act, logits;
  // Attention workspace (decode splits).
  DeviceBuffer attn_workspace;
  // Step inputs: pinned staging and its device copy.
  PinnedBuffer staging;
  DeviceBuffer staging_dev;
  // Error words: int32 kernel flag at 0, uint64 embedding word at 8.
  DeviceBuffer errors;
  PinnedBuffer errors_host;
  PinnedBuffer logits_host;  // [logits_chunk_rows, vocab] of dtype
  // Swap space: per layer K then V, each [host_blocks][block_elems] of dtype.
  PinnedBuffer host_pool;
  int64_t host_blocks = 0;

  // Geometry of this rank.
  int64_t heads = 0, kv_heads = 0, head_begin = 0, kv_head_begin = 0, inter = 0;
  int64_t q_w = 0, kv_w = 0, qkv_w = 0;
  int64_t embed_rows = 0;     // embedding table rows (the vocabulary)
  int64_t position_rows = 0;  // OPT learned position table rows
  int64_t vocab_rows = 0;     // lm_head rows: the logits' width
  int64_t embed_dim = 0;      // embedding table width (OPT: word_embed_proj_dim)
  int64_t feature_dim = 0;   // lm_head input width
  int64_t normed_width = 0;  // max(hidden, embed_dim)
  int64_t proj_width = 0;    // max(hidden, feature_dim)
  int64_t rot_dim = 0;
  float rope_scaling = 1.0f;

  // Captured decode graphs by (padded batch size, attention splits).
  std::map<std::pair<int64_t, int32_t>, cudaGraphExec_t> graphs;

  // Host side of one step.
  std::vector<int32_t> ids, pos, pos_rows, token_seq, seq_q_start, logit_rows;

  // h2o / streaming: the step's device entry lists and decisions (created on first use);
  // its device bytes are counted in memory_.workspace_bytes.
  std::unique_ptr<GpuEvictingState> evicting;
  int64_t evicting_device_bytes = 0;
  // infinigen (EnableInfinigen); its device bytes already in memory_.workspace_bytes.
  std::unique_ptr<GpuInfinigen> infinigen;
  int64_t infinigen_device_bytes = 0;
};

GpuModelShard::GpuModelShard(const ModelWeights& weights, int rank, int tp_size,
                             const GpuShardOptions& options)
    : c_(weights.config), rank_(rank), tp_(tp_size), options_(options),
      impl_(std::make_unique<Impl>()) {}

GpuModelShard::~GpuModelShard() {
  if (stream_ != nullptr) {
    cudaSetDevice(options_.device);
    cudaStreamSynchronize(stream_);
    DropGraphs();
    impl_.reset();  // buffers before the stream
    cudaStreamDestroy(stream_);
  }
}

kvcache::KvShape GpuModelShard::kv_shape() const {
  return kvcache::KvShape{static_cast<int32_t>(c_.num_layers),
                          static_cast<int32_t>(impl_->kv_heads),
                          static_cast<int32_t>(c_.head_dim)};
}

absl::StatusOr<std::unique_ptr<GpuModelShard>> GpuModelShard::Create(
    const ModelWeights& weights, int rank, int tp_size, const GpuShardOptions& options) {
  KVSCOPE_RETURN_IF_ERROR(ValidateTensorParallelSize(weights.config, tp_size));
  if (rank < 0 || rank >= tp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the tensor-parallel group of ", tp_size));
  }
  if (options.block_size <= 0 || options.num_kv_blocks < 0 || options.kv_bytes < 0 ||
      options.max_tokens_per_step <= 0 || options.logits_chunk_rows <= 0 ||
      options.graph_max_batch <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU shard options: block_size (", options.block_size, "), max_tokens_per_step (",
        options.max_tokens_per_step, "), logits_chunk_rows (", options.logits_chunk_rows,
        ") and graph_max_batch (", options.graph_max_batch, ") must be positive, num_kv_blocks (", options.num_kv_blocks, ") and kv_bytes (",
        options.kv_bytes, ") non-negative"));
  }
  if (options.kv_layers == 0 || options.kv_layers < -1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "GPU shard options: kv_layers (", options.kv_layers,
        ") must be -1 (every layer has a device KV pool) or positive"));
  }
  if (kernels::cuda::VisibleDeviceCount() <= options.device || options.device < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", options.device, " is not visible (",
                     kernels::cuda::VisibleDeviceCount(),
                     " devices; check nvidia-smi and CUDA_VISIBLE_DEVICES, or run the trial "
                     "with backend: cpu)"));
  }
  std::unique_ptr<GpuModelShard> shard(new GpuModelShard(weights, rank, tp_size, options));
  KVSCOPE_RETURN_IF_ERROR(shard->Init(weights));
  return shard;
}

namespace {

// Uploads host float32 values as `dtype`; adds the bytes to *counter.
absl::StatusOr<DeviceBuffer> UploadAs(const std::vector<float>& values, DType dtype,
                                      int64_t* counter) {
  if (values.empty()) return DeviceBuffer();
  const std::vector<uint8_t> bytes = ConvertFromF32(values, dtype);
  KVSCOPE_ASSIGN_OR_RETURN(DeviceBuffer buffer, DeviceBuffer::Allocate(bytes.size()));
  KVSCOPE_RETURN_IF_ERROR(buffer.CopyFromHost(bytes.data(), bytes.size()));
  *counter += static_cast<int64_t>(bytes.size());
  return buffer;
}

// The whole of `w` (empty view -> empty buffer).
absl::StatusOr<DeviceBuffer> UploadView(const WeightView& w, DType dtype, int64_t* counter) {
  if (w.empty()) return DeviceBuffer();
  HostMatrix m(w.cols);
  m.AppendRows(w.data, w.rows, w.cols);
  return UploadAs(m.data(), dtype, counter);
}

// Elements [begin, begin + n) of a vector view (bias or norm weight), or empty.
absl::StatusOr<DeviceBuffer> UploadSlice(const WeightView& w, int64_t begin, int64_t n,
                                         DType dtype, int64_t* counter) {
  if (w.empty()) return DeviceBuffer();
  return UploadAs(std::vector<float>(w.data + begin, w.data + begin + n), dtype, counter);
}

}  // namespace

absl::Status GpuModelShard::Init(const ModelWeights& w) {
  Impl& s = *impl_;
  const DType dt = options_.dtype;
  const size_t es = DTypeSize(dt);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  size_t free_bytes = 0, total_bytes = 0;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  memory_.device = options_.device;
  memory_.device_total_bytes = static_cast<int64_t>(total_bytes);
  memory_.device_free_bytes = static_cast<int64_t>(free_bytes);
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  KVSCOPE_ASSIGN_OR_RETURN(Gemm gemm, Gemm::Create());
  s.gemm = std::make_unique<Gemm>(std::move(gemm));

  // Geometry, as ModelShard.
  const int64_t d = c_.head_dim;
  const int64_t hidden = c_.hidden_size;
  s.heads = c_.num_heads / tp_;
  s.head_begin = rank_ * s.heads;
  if (c_.num_kv_heads % tp_ == 0) {
    s.kv_heads = c_.num_kv_heads / tp_;
    s.kv_head_begin = rank_ * s.kv_heads;
  } else {
    s.kv_heads = 1;
    s.kv_head_begin = s.head_begin / (c_.num_heads / c_.num_kv_heads);
  }
  s.inter = c_.intermediate_size / tp_;
  s.q_w = s.heads * d;
  s.kv_w = s.kv_heads * d;
  s.qkv_w = s.q_w + 2 * s.kv_w;
  const bool llama = c_.family == ModelFamily::kLlama;
  s.embed_dim = w.embed.cols;
  s.embed_rows = w.embed.rows;
  s.position_rows = w.positions.rows;
  s.vocab_rows = w.lm_head.rows;
  s.feature_dim = w.project_out.empty() ? hidden : w.project_out.rows;
  s.normed_width = std::max(hidden, s.embed_dim);
  s.proj_width = std::max(hidden, s.feature_dim);
  if (llama) {
    std::vector<float> inv_freq = RopeInvFreq(c_, &s.rope_scaling);
    s.rot_dim = RopeRotaryDim(c_);
    KVSCOPE_ASSIGN_OR_RETURN(s.inv_freq, UploadAs(inv_freq, DType::kF32, &memory_.h2d_bytes));
  }

  // Weights.
  int64_t& up = memory_.h2d_bytes;
  KVSCOPE_ASSIGN_OR_RETURN(s.embed, UploadView(w.embed, dt, &up));
  KVSCOPE_ASSIGN_OR_RETURN(s.positions, UploadView(w.positions, dt, &up));
  KVSCOPE_ASSIGN_OR_RETURN(s.project_in, UploadView(w.project_in, dt, &up));
  KVSCOPE_ASSIGN_OR_RETURN(s.final_norm, UploadView(w.final_norm, dt, &up));
  KVSCOPE_ASSIGN_OR_RETURN(s.final_norm_bias, UploadView(w.final_norm_bias, dt, &up));
  if (rank_ == 0) {
    KVSCOPE_ASSIGN_OR_RETURN(s.project_out, UploadView(w.project_out, dt, &up));
    if (w.lm_head.data == w.embed.data) {
      s.lm_head_ptr = s.embed.data();
    } else {
      KVSCOPE_ASSIGN_OR_RETURN(s.lm_head, UploadView(w.lm_head, dt, &up));
      s.lm_head_ptr = s.lm_head.data();
    }
  }
  const int64_t row0 = rank_ * s.inter;
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    Impl::Layer layer;
    KVSCOPE_ASSIGN_OR_RETURN(layer.attn_norm, UploadView(lw.attn_norm, dt, &up));
    KVSCOPE_ASSIGN_OR_RETURN(layer.attn_norm_bias, UploadView(lw.attn_norm_bias, dt, &up));
    KVSCOPE_ASSIGN_OR_RETURN(layer.mlp_norm, UploadView(lw.mlp_norm, dt, &up));
    KVSCOPE_ASSIGN_OR_RETURN(layer.mlp_norm_bias, UploadView(lw.mlp_norm_bias, dt, &up));
    // q|k|v rows of this rank.
    HostMatrix qkv(hidden);
    qkv.AppendRows(lw.q.data + s.head_begin * d * hidden, s.q_w, hidden);
    qkv.AppendRows(lw.k.data + s.kv_head_begin * d * hidden, s.kv_w, hidden);
    qkv.AppendRows(lw.v.data + s.kv_head_begin * d * hidden, s.kv_w, hidden);
    KVSCOPE_ASSIGN_OR_RETURN(layer.qkv, UploadAs(qkv.data(), dt, &up));
    if (!lw.q_bias.empty() || !lw.k_bias.empty() || !lw.v_bias.empty()) {
      HostMatrix b(1);
      auto append = [&b](const WeightView& v, int64_t begin, int64_t n) {
        if (v.empty()) {
          b.AppendZeros(n);
        } else {
          b.AppendRows(v.data + begin, n, 1);
        }
      };
      append(lw.q_bias, s.head_begin * d, s.q_w);
      append(lw.k_bias, s.kv_head_begin * d, s.kv_w);
      append(lw.v_bias, s.kv_head_begin * d, s.kv_w);
      KVSCOPE_ASSIGN_OR_RETURN(layer.qkv_bias, UploadAs(b.data(), dt, &up));
    }
    // o: columns [head_begin * d, + q_w) of [hidden, q_size].
    HostMatrix o(s.q_w);
    o.AppendRows(lw.o.data + s.head_begin * d, hidden, lw.o.cols);
    KVSCOPE_ASSIGN_OR_RETURN(layer.o, UploadAs(o.data(), dt, &up));
    if (rank_ == 0) {
      KVSCOPE_ASSIGN_OR_RETURN(layer.o_bias, UploadView(lw.o_bias, dt, &up));
      KVSCOPE_ASSIGN_OR_RETURN(layer.down_bias, UploadView(lw.down_bias, dt, &up));
    }
    // gate|up (Llama) or up (OPT) rows of this rank.
    HostMatrix gu(hidden);
    if (llama) gu.AppendRows(lw.gate.data + row0 * hidden, s.inter, hidden);
    gu.AppendRows(lw.up.data + row0 * hidden, s.inter, hidden);
    KVSCOPE_ASSIGN_OR_RETURN(layer.gate_up, UploadAs(gu.data(), dt, &up));
    if ((llama && !lw.gate_bias.empty()) || !lw.up_bias.empty()) {
      HostMatrix b(1);
      if (llama) {
        if (lw.gate_bias.empty()) {
          b.AppendZeros(s.inter);
        } else {
          b.AppendRows(lw.gate_bias.data + row0, s.inter, 1);
        }
      }
      if (lw.up_bias.empty()) {
        b.AppendZeros(s.inter);
      } else {
        b.AppendRows(lw.up_bias.data + row0, s.inter, 1);
      }
      KVSCOPE_ASSIGN_OR_RETURN(layer.gate_up_bias, UploadAs(b.data(), dt, &up));
    }
    // down: columns [row0, row0 + inter) of [hidden, intermediate].
    HostMatrix down(s.inter);
    down.AppendRows(lw.down.data + row0, hidden, lw.down.cols);
    KVSCOPE_ASSIGN_OR_RETURN(layer.down, UploadAs(down.data(), dt, &up));
    s.layers.push_back(std::move(layer));
  }
  memory_.weight_bytes = memory_.h2d_bytes;

  // Workspace for steps of max_tokens_per_step tokens.
  const int64_t t = options_.max_tokens_per_step;
  const int64_t act_elems =
      t * (hidden + s.normed_width + s.qkv_w + s.q_w + s.proj_width + 2 * s.inter + s.inter);
  const int64_t logits_elems =
      rank_ == 0 ? std::min(t, options_.logits_chunk_rows) * s.vocab_rows : 0;
  const int64_t staging_bytes = AlignUp(t * 6 * 4, 4096) + (1 << 20);
  const int64_t attn_ws = static_cast<int64_t>(kernels::cuda::AttentionWorkspaceBytes(
      std::min<int64_t>(t, 256), static_cast<int32_t>(s.heads), static_cast<int32_t>(s.kv_heads),
      static_cast<int32_t>(d), static_cast<int32_t>(c_.max_position_embeddings),
      /*with_attn_mass=*/false, kernels::cuda::AttentionOptions{}));
  const int64_t workspace = (act_elems + logits_elems) * static_cast<int64_t>(es) +
                            staging_bytes + attn_ws +
                            static_cast<int64_t>(Gemm::kDefaultWorkspaceBytes);

  // KV pool, for the layers that keep their K/V on the device (kv_layers).
  const int64_t pool_layers = options_.kv_layers < 0
                                  ? c_.num_layers
                                  : std::min<int64_t>(options_.kv_layers, c_.num_layers);
  const int64_t block_elems = s.kv_heads * options_.block_size * d;
  const int64_t block_bytes_all_layers = 2 * pool_layers * block_elems * static_cast<int64_t>(es);
  int64_t blocks = options_.num_kv_blocks;
  if (blocks == 0) {
    GpuMemoryInputs in;
    in.total_bytes = memory_.device_total_bytes;
    in.free_bytes = memory_.device_free_bytes;
    in.weight_bytes = memory_.weight_bytes;
    in.workspace_bytes = workspace;
    in.gpu_memory_utilization = options_.gpu_memory_utilization;
    in.requested_kv_bytes = options_.kv_bytes;
    in.min_kv_bytes = block_bytes_all_layers;
    KVSCOPE_ASSIGN_OR_RETURN(GpuMemoryPlan plan, PlanGpuMemory(in));
    blocks = plan.kv_bytes / block_bytes_all_layers;
    memory_.plan = plan;
  }
  const int64_t pool_bytes = blocks * block_bytes_all_layers;
  KVSCOPE_ASSIGN_OR_RETURN(s.kv_pool, DeviceBuffer::Allocate(static_cast<size_t>(pool_bytes)));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.kv_pool.data(), 0, pool_bytes, stream_));
  memory_.kv_pool_bytes = pool_bytes;
  memory_.num_kv_blocks = blocks;
  const int64_t layer_half = blocks * block_elems * static_cast<int64_t>(es);
  char* base = s.kv_pool.as<char>();
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    CudaKvPool pool;
    pool.k = l < pool_layers ? base + (2 * l) * layer_half : nullptr;
    pool.v = l < pool_layers ? base + (2 * l + 1) * layer_half : nullptr;
    pool.num_blocks = blocks;
    pool.num_kv_heads = static_cast<int32_t>(s.kv_heads);
    pool.block_size = options_.block_size;
    pool.head_dim = static_cast<int32_t>(d);
    pool.dtype = dt;
    pools_.push_back(pool);
  }

  KVSCOPE_ASSIGN_OR_RETURN(s.errors, DeviceBuffer::Allocate(16));
  KVSCOPE_ASSIGN_OR_RETURN(s.errors_host, PinnedBuffer::Allocate(16));
  KVSCOPE_RETURN_IF_ERROR(ReservePinned(s.staging, staging_bytes));
  KVSCOPE_RETURN_IF_ERROR(Reserve(s.staging_dev, staging_bytes));
  KVSCOPE_RETURN_IF_ERROR(Reserve(s.attn_workspace, attn_ws));
  if (rank_ == 0) {
    KVSCOPE_RETURN_IF_ERROR(ReservePinned(s.logits_host, logits_elems * es));
  }
  // Activations (and the logits chunk) for max_tokens_per_step tokens.
  s.capacity_tokens = 0;
  {
    const int64_t want = t;
    auto alloc = [&](DeviceBuffer& b, int64_t elems) { return Reserve(b, elems * es); };
    KVSCOPE_RETURN_IF_ERROR(alloc(s.x, want * hidden));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.normed, want * s.normed_width));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.qkv, want * s.qkv_w));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.attn, want * s.q_w));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.proj, want * s.proj_width));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.gate_up, want * 2 * s.inter));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.act, want * s.inter));
    if (rank_ == 0) KVSCOPE_RETURN_IF_ERROR(alloc(s.logits, logits_elems));
    s.capacity_tokens = want;
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  memory_.workspace_bytes = workspace;
  memory_.pinned_host_bytes = static_cast<int64_t>(s.staging.bytes() + s.errors_host.bytes() +
                                                   s.logits_host.bytes() + s.host_pool.bytes());
  return absl::OkStatus();
}

absl::Status GpuModelShard::ApplyBlockCopies(absl::Span<const kvcache::BlockCopy> copies) {
  if (copies.empty()) return absl::OkStatus();
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  std::vector<int32_t> pairs;
  pairs.reserve(2 * copies.size());
  const int64_t blocks = memory_.num_kv_blocks;
  for (const kvcache::BlockCopy& c : copies) {
    if (c.src < 0 || c.src >= blocks || c.dst < 0 || c.dst >= blocks) {
      return absl::InvalidArgumentError(absl::StrCat("block copy ", c.src, " -> ", c.dst,
                                                     " is outside the device pool of ", blocks,
                                                     " blocks"));
    }
    pairs.push_back(c.src);
    pairs.push_back(c.dst);
  }
  KVSCOPE_ASSIGN_OR_RETURN(DeviceBuffer dev, DeviceBuffer::Allocate(pairs.size() * 4));
  KVSCOPE_RETURN_IF_ERROR(dev.CopyFromHost(pairs.data(), pairs.size() * 4));
  memory_.h2d_bytes += static_cast<int64_t>(pairs.size() * 4);
  for (const CudaKvPool& pool : pools_) {
    if (pool.k == nullptr) continue;  // no device pool (infinigen's offloaded layers)
    KVSCOPE_RETURN_IF_ERROR(kernels::cuda::CopyBlocks(
        pool, dev.as<int32_t>(), static_cast<int64_t>(copies.size()), nullptr, stream_));
  }
  // `dev` is freed on return: wait for the copies (cudaFree would also synchronize).
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status GpuModelShard::EnableInfinigen(const ModelWeights& weights,
                                            const kvcache::InfinigenSkew& skew,
                                            int32_t dense_layers) {
  Impl& s = *impl_;
  if (s.infinigen != nullptr) {
    return absl::FailedPreconditionError("EnableInfinigen: already enabled");
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  GpuInfinigenShardView view;
  view.dtype = options_.dtype;
  view.llama = c_.family == ModelFamily::kLlama;
  view.hidden = c_.hidden_size;
  view.head_dim = c_.head_dim;
  view.heads = s.heads;
  view.kv_heads = s.kv_heads;
  view.head_begin = s.head_begin;
  view.kv_head_begin = s.kv_head_begin;
  view.qkv_w = s.qkv_w;
  view.gemm = s.gemm.get();
  view.pools = pools_;
  view.inv_freq = s.inv_freq.as<float>();
  view.rot_dim = s.rot_dim;
  view.rope_scaling = s.rope_scaling;
  view.error_flag = s.errors.as<int32_t>();
  if (skew.num_layers != c_.num_layers || skew.head_dim != c_.head_dim) {
    return absl::InvalidArgumentError("EnableInfinigen: the skew does not match the model");
  }
  for (int32_t l = 0; l < std::min<int32_t>(dense_layers, c_.num_layers); ++l) {
    if (pools_[l].k == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "EnableInfinigen: dense layer ", l, " has no device KV pool (GpuShardOptions::"
          "kv_layers is ", options_.kv_layers, "; it must be -1 or at least dense_layers, ",
          dense_layers, ")"));
    }
  }
  // OPT: the skew folded into this rank's q and k rows (the CPU's folded matrices, built
  // once on the host; Llama keeps its weights: the skew follows RoPE on the device).
  const InfinigenShard host_ig(weights, skew, s.head_begin, s.heads, s.kv_head_begin, s.kv_heads,
                               InfinigenShard::Rope{});
  GpuInfinigen::FoldedQkv folded = GpuInfinigen::Fold(weights, host_ig, view);
  int64_t unused = 0;
  for (size_t l = 0; l < folded.weight.size(); ++l) {
    KVSCOPE_ASSIGN_OR_RETURN(s.layers[l].qkv, UploadAs(folded.weight[l], options_.dtype, &unused));
    if (!folded.bias[l].empty()) {
      KVSCOPE_ASSIGN_OR_RETURN(s.layers[l].qkv_bias,
                               UploadAs(folded.bias[l], options_.dtype, &unused));
    }
  }
  memory_.h2d_bytes += unused;
  for (const Impl::Layer& layer : s.layers) {
    view.q_weight.push_back(layer.qkv.data());
    view.q_bias.push_back(layer.qkv_bias.data());
  }
  KVSCOPE_ASSIGN_OR_RETURN(s.infinigen,
                           GpuInfinigen::Create(weights, skew, host_ig, dense_layers,
                                                options_.infinigen_gather, std::move(view),
                                                stream_));
  // Graphs captured before would replay the unskewed weights. The uploads above went
  // through synchronous cudaMemcpy on the legacy stream, which the shard's non-blocking
  // stream does not wait for (a pageable copy may return before its DMA lands): wait for the
  // whole device.
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  DropGraphs();
  s.infinigen_device_bytes = s.infinigen->device_bytes();
  memory_.workspace_bytes += s.infinigen_device_bytes;
  memory_.pinned_host_bytes += s.infinigen->pinned_bytes();
  return absl::OkStatus();
}

absl::Status GpuModelShard::EnableHostPool(int64_t num_host_blocks) {
  Impl& s = *impl_;
  if (num_host_blocks <= 0 || s.host_blocks > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "EnableHostPool(", num_host_blocks, "): needs a positive block count, once"));
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  const size_t bytes = static_cast<size_t>(2 * c_.num_layers * num_host_blocks *
                                           pools_[0].block_elems()) *
                       DTypeSize(options_.dtype);
  KVSCOPE_ASSIGN_OR_RETURN(s.host_pool, PinnedBuffer::Allocate(bytes));
  s.host_blocks = num_host_blocks;
  memory_.pinned_host_bytes += static_cast<int64_t>(bytes);
  return absl::OkStatus();
}

absl::Status GpuModelShard::ApplyBlockTransfers(const kvcache::StepPlan& plan) {
  Impl& s = *impl_;
  if (plan.swap_out.empty() && plan.swap_in.empty()) return ApplyBlockCopies(plan.copies);
  if (s.host_blocks == 0) {
    return absl::FailedPreconditionError(
        "the plan swaps KV blocks but the GPU shard has no host pool (EnableHostPool)");
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  const size_t es = DTypeSize(options_.dtype);
  const int64_t half = s.host_blocks * pools_[0].block_elems() * static_cast<int64_t>(es);
  const int64_t block_bytes = pools_[0].block_elems() * static_cast<int64_t>(es);
  auto swap = [&](const std::vector<kvcache::BlockCopy>& pairs,
                  kernels::cuda::SwapDirection direction) -> absl::Status {
    if (pairs.empty()) return absl::OkStatus();
    std::vector<int32_t> flat;
    for (const kvcache::BlockCopy& c : pairs) {
      flat.push_back(c.src);
      flat.push_back(c.dst);
    }
    for (int64_t l = 0; l < c_.num_layers; ++l) {
      if (pools_[l].k == nullptr) continue;  // no device pool (infinigen's offloaded layers)
      char* host_k = s.host_pool.as<char>() + (2 * l) * half;
      char* host_v = s.host_pool.as<char>() + (2 * l + 1) * half;
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::SwapBlocks(
          pools_[l], host_k, host_v, s.host_blocks, flat.data(),
          static_cast<int64_t>(pairs.size()), direction, stream_));
    }
    const int64_t bytes = 2 * c_.num_layers * static_cast<int64_t>(pairs.size()) * block_bytes;
    (direction == kernels::cuda::SwapDirection::kDeviceToHost ? memory_.d2h_bytes
                                                                : memory_.h2d_bytes) += bytes;
    return absl::OkStatus();
  };
  KVSCOPE_RETURN_IF_ERROR(swap(plan.swap_out, kernels::cuda::SwapDirection::kDeviceToHost));
  KVSCOPE_RETURN_IF_ERROR(swap(plan.swap_in, kernels::cuda::SwapDirection::kHostToDevice));
  KVSCOPE_RETURN_IF_ERROR(ApplyBlockCopies(plan.copies));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status GpuModelShard::Forward(absl::Span<const SeqInput> batch, kvcache::KvCache& kv,
                                    DeviceCommunicator& comm, ForwardOutput* out) {
  step_prepared_ = false;
  KVSCOPE_RETURN_IF_ERROR(CheckGpuSupportsCache(kv));
  Impl& s = *impl_;
  const DType dt = options_.dtype;
  const size_t es = DTypeSize(dt);
  const int64_t hidden = c_.hidden_size;
  const int64_t d = c_.head_dim;
  const bool llama = c_.family == ModelFamily::kLlama;
  const float eps = static_cast<float>(c_.norm_eps);
  cudaStream_t st = stream_;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));

  // Pack the ragged batch (as ModelShard::Forward).
  const int32_t num_seqs = static_cast<int32_t>(batch.size());
  int64_t tokens = 0;
  int32_t max_q = 0;
  for (const SeqInput& q : batch) {
    tokens += static_cast<int64_t>(q.tokens.size());
    max_q = std::max(max_q, static_cast<int32_t>(q.tokens.size()));
  }
  s.ids.resize(tokens);
  s.pos.resize(tokens);
  s.pos_rows.resize(tokens);
  s.token_seq.resize(tokens);
  s.seq_q_start.assign(1, 0);
  s.logit_rows.clear();
  std::vector<kvcache::SeqStep> steps;
  steps.reserve(batch.size());
  std::vector<int64_t> row_begin(1, 0);
  int64_t t = 0;
  for (int32_t i = 0; i < num_seqs; ++i) {
    const SeqInput& q = batch[i];
    const int64_t n = static_cast<int64_t>(q.tokens.size());
    for (int64_t j = 0; j < n; ++j, ++t) {
      s.ids[t] = q.tokens[j];
      s.pos[t] = q.start_position + static_cast<int32_t>(j);
      s.pos_rows[t] = s.pos[t] + static_cast<int32_t>(c_.position_offset);
      s.token_seq[t] = i;
      if (q.all_logits || j == n - 1) s.logit_rows.push_back(static_cast<int32_t>(t));
    }
    s.seq_q_start.push_back(static_cast<int32_t>(t));
    row_begin.push_back(static_cast<int64_t>(s.logit_rows.size()));
    steps.push_back({q.seq_id, static_cast<int32_t>(n), q.start_position});
  }
  // The cache's pools must map onto the device pool (checked before PrepareStep changes it).
  for (int32_t l = 0; l < c_.num_layers; ++l) {
    const kernels::KvPoolView p = kv.Pool(l);
    if (p.block_size != options_.block_size || p.num_kv_heads != pools_[l].num_kv_heads ||
        p.head_dim != pools_[l].head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the KV cache's layer ", l, " pool (block size ", p.block_size, ", ", p.num_kv_heads,
          " KV heads, head_dim ", p.head_dim, ") differs from the GPU pool (block size ",
          options_.block_size, ", ", pools_[l].num_kv_heads, " KV heads, head_dim ",
          pools_[l].head_dim, ")"));
    }
  }
  // infinigen (gpu_infinigen.h): the shard must have been enabled with the cache's skew.
  auto* ig_cache = dynamic_cast<kvcache::InfinigenKvCache*>(&kv);
  GpuInfinigen* ig = nullptr;
  if (ig_cache != nullptr) {
    if (s.infinigen == nullptr) {
      return absl::FailedPreconditionError(
          "the KV cache is infinigen but the GPU shard was not enabled for it "
          "(GpuModelShard::EnableInfinigen; GpuEngine::Create does it)");
    }
    ig = s.infinigen.get();
  }
  // A layer without a device pool can only be one infinigen offloads.
  for (int32_t l = 0; l < c_.num_layers; ++l) {
    if (pools_[l].k == nullptr && (ig == nullptr || !ig->Offloaded(l))) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the GPU shard has no device KV pool for layer ", l, " (GpuShardOptions::kv_layers ",
          options_.kv_layers, ", meant for infinigen's offloaded layers), but this KV cache "
          "keeps that layer on the device; create the shard with kv_layers = -1"));
    }
  }
  KVSCOPE_RETURN_IF_ERROR(kv.PrepareStep(steps));
  step_prepared_ = true;

  const absl::Span<const int32_t> new_slots = kv.NewTokenSlots();
  if (static_cast<int64_t>(new_slots.size()) != tokens) {
    return absl::InternalError(absl::StrCat("the KV cache planned ", new_slots.size(),
                                            " new-token slots for ", tokens, " tokens"));
  }
  // h2o / streaming: per-layer, per-head device lists and on-device decisions
  // (gpu_evicting_state.h); their entry arrays go up with one copy of their own.
  GpuEvictingState* ev = nullptr;
  if (auto* evicting_kv = dynamic_cast<kvcache::EvictingKvCache*>(&kv); evicting_kv != nullptr) {
    if (s.evicting == nullptr) s.evicting = std::make_unique<GpuEvictingState>();
    ev = s.evicting.get();
    KVSCOPE_RETURN_IF_ERROR(ev->Prepare(*evicting_kv, static_cast<int32_t>(c_.num_layers),
                                        static_cast<int32_t>(s.kv_heads),
                                        static_cast<int32_t>(s.heads),
                                        memory_.num_kv_blocks * options_.block_size, st,
                                        &memory_.h2d_bytes));
  }
  // Otherwise the views must be the same for every layer (true of every other supported
  // cache), so the lists are uploaded once per step.
  const absl::Span<const kernels::SeqKvView> views =
      ev != nullptr ? absl::Span<const kernels::SeqKvView>() : kv.SeqViews(0);
  if (ev == nullptr && static_cast<int32_t>(views.size()) != num_seqs) {
    return absl::InternalError(absl::StrCat("the KV cache gave ", views.size(),
                                            " sequence views for ", num_seqs, " sequences"));
  }
  for (int32_t l = 1; ev == nullptr && l < c_.num_layers; ++l) {
    const absl::Span<const kernels::SeqKvView> other = kv.SeqViews(l);
    bool same = other.size() == views.size();
    for (size_t i = 0; same && i < views.size(); ++i) {
      same = other[i].slots == views[i].slots && other[i].positions == views[i].positions &&
             other[i].num_cached == views[i].num_cached &&
             other[i].head_stride == views[i].head_stride;
    }
    if (!same) {
      return absl::UnimplementedError(absl::StrCat(
          "the GPU engine needs one attention view per sequence shared by all layers; the KV "
          "cache's layer ", l, " views differ from layer 0"));
    }
  }
  // Every slot the step writes or reads must lie in the device pool. (The cache's own pool
  // may have more blocks than it uses: FullKvCache grows by doubling.)
  const int64_t num_slots = memory_.num_kv_blocks * options_.block_size;
  int64_t max_slot = -1;
  for (int32_t slot : new_slots) max_slot = std::max<int64_t>(max_slot, slot);
  for (const kernels::SeqKvView& v : views) {
    const int64_t lists = v.head_stride > 0 ? s.kv_heads : 1;
    for (int64_t h = 0; h < lists; ++h) {
      const int32_t* list = v.slots + h * v.head_stride;
      for (int32_t j = 0; j < v.num_cached; ++j) max_slot = std::max<int64_t>(max_slot, list[j]);
    }
  }
  if (max_slot >= num_slots) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV cache uses slot ", max_slot, " but the GPU pool has ", num_slots, " slots (",
        memory_.num_kv_blocks, " blocks of ", options_.block_size,
        "): bound the cache (max_kv_tokens / kv budget) or give the GPU pool more blocks"));
  }
  int32_t max_cached = 0;
  int64_t list_ints = 0;
  for (const kernels::SeqKvView& v : views) {
    max_cached = std::max(max_cached, v.num_cached);
    const int64_t n = v.head_stride > 0 ? v.head_stride * s.kv_heads : v.num_cached;
    list_ints += 2 * AlignUp(n, 4);
  }
  if (ev != nullptr) max_cached = ev->max_cached();

  // A decode step (one token per sequence) may replay a CUDA graph captured for a padded
  // batch size; the padding tokens write nothing (slot -1) and attend as sequence 0's token.
  // h2o needs the attention mass, which only PagedAttention gives: every step decodes.
  float* attn_mass = ev != nullptr ? ev->mass() : nullptr;
  const bool decode = max_q <= 1 || attn_mass != nullptr;
  const int64_t bucket = decode && tokens == num_seqs && tokens > 0 && comm.size() == 1 &&
                                 ev == nullptr && ig == nullptr
                             ? GraphBucket(tokens)
                             : 0;
  const int64_t padded = bucket > 0 ? bucket : tokens;  // tokens the body runs over
  const int32_t body_seqs = bucket > 0 ? static_cast<int32_t>(bucket) : num_seqs;

  // Staging layout (16-byte aligned pieces).
  StepLayout lay;
  int64_t at = 0;
  auto take = [&at](int64_t bytes) {
    const int64_t o = at;
    at = AlignUp(at + bytes, 16);
    return o;
  };
  lay.ids = take(padded * 4);
  lay.pos = take(padded * 4);
  lay.pos_rows = take(padded * 4);
  lay.token_seq = take(padded * 4);
  lay.seq_q_start = take((body_seqs + 1) * 4);
  lay.new_slots = take(padded * 4);
  // (At least `padded` entries, so that the views' offset is the same for every step of a
  // graph's bucket.)
  lay.logit_rows = take(std::max<int64_t>(static_cast<int64_t>(s.logit_rows.size()), padded) * 4);
  lay.views = take(static_cast<int64_t>(body_seqs) * sizeof(kernels::SeqKvView));
  lay.lists = take(list_ints * 4);
  lay.total = at;

  // Grow buffers for this step (the previous step has drained: Forward ends synchronized).
  // A graph bakes in the staging and activation addresses: growing them drops the graphs.
  if (lay.total > static_cast<int64_t>(s.staging_dev.bytes()) || padded > s.capacity_tokens) {
    DropGraphs();
  }
  KVSCOPE_RETURN_IF_ERROR(ReservePinned(s.staging, lay.total));
  KVSCOPE_RETURN_IF_ERROR(Reserve(s.staging_dev, lay.total));
  if (padded > s.capacity_tokens) {
    auto alloc = [&](DeviceBuffer& b, int64_t elems) { return Reserve(b, elems * es); };
    KVSCOPE_RETURN_IF_ERROR(alloc(s.x, padded * hidden));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.normed, padded * s.normed_width));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.qkv, padded * s.qkv_w));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.attn, padded * s.q_w));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.proj, padded * s.proj_width));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.gate_up, padded * 2 * s.inter));
    KVSCOPE_RETURN_IF_ERROR(alloc(s.act, padded * s.inter));
    s.capacity_tokens = padded;
  }
  kernels::cuda::AttentionOptions attn_options;
  if (bucket > 0) {
    // A graph fixes the number of splits; empty splits are harmless, so one graph per
    // (bucket, splits) serves every context length.
    attn_options.num_splits = kernels::cuda::ChooseAttentionSplits(
        bucket, static_cast<int32_t>(s.heads), static_cast<int32_t>(s.kv_heads), max_cached,
        kernels::cuda::AttentionOptions{});
  }
  size_t attn_ws_bytes = 0;
  if (decode && tokens > 0) {
    attn_ws_bytes = kernels::cuda::AttentionWorkspaceBytes(
        padded, static_cast<int32_t>(s.heads), static_cast<int32_t>(s.kv_heads),
        static_cast<int32_t>(d), max_cached, /*with_attn_mass=*/attn_mass != nullptr,
        attn_options);
    if (attn_ws_bytes > s.attn_workspace.bytes()) DropGraphs();
    KVSCOPE_RETURN_IF_ERROR(Reserve(s.attn_workspace, attn_ws_bytes));
  }

  // Fill the staging buffer (padding included) and upload it with one copy.
  char* host = s.staging.as<char>();
  char* dev = s.staging_dev.as<char>();
  auto put = [host](int64_t offset, const void* src, int64_t bytes) {
    if (bytes > 0) std::memcpy(host + offset, src, bytes);
  };
  put(lay.ids, s.ids.data(), tokens * 4);
  put(lay.pos, s.pos.data(), tokens * 4);
  put(lay.pos_rows, s.pos_rows.data(), tokens * 4);
  put(lay.token_seq, s.token_seq.data(), tokens * 4);
  put(lay.seq_q_start, s.seq_q_start.data(), (num_seqs + 1) * 4);
  put(lay.new_slots, new_slots.data(), tokens * 4);
  put(lay.logit_rows, s.logit_rows.data(), static_cast<int64_t>(s.logit_rows.size()) * 4);
  {
    int64_t list_at = lay.lists;
    kernels::SeqKvView* dviews = reinterpret_cast<kernels::SeqKvView*>(host + lay.views);
    for (int32_t i = 0; i < static_cast<int32_t>(views.size()); ++i) {
      const kernels::SeqKvView& v = views[i];
      const int64_t n = v.head_stride > 0 ? v.head_stride * s.kv_heads : v.num_cached;
      kernels::SeqKvView dv = v;
      dv.slots = n > 0 ? reinterpret_cast<const int32_t*>(dev + list_at) : nullptr;
      put(list_at, v.slots, n * 4);
      list_at += AlignUp(n, 4) * 4;
      dv.positions = n > 0 ? reinterpret_cast<const int32_t*>(dev + list_at) : nullptr;
      put(list_at, v.positions, n * 4);
      list_at += AlignUp(n, 4) * 4;
      std::memcpy(&dviews[i], &dv, sizeof(dv));
    }
    for (int64_t i = tokens; i < padded; ++i) {  // padding: sequence 0's query, no write
      const int32_t no_slot = -1;
      put(lay.ids + 4 * i, &s.ids[0], 4);
      put(lay.pos + 4 * i, &s.pos[0], 4);
      put(lay.pos_rows + 4 * i, &s.pos_rows[0], 4);
      put(lay.token_seq + 4 * i, &s.token_seq[0], 4);
      put(lay.new_slots + 4 * i, &no_slot, 4);
      put(lay.seq_q_start + 4 * (i + 1), &s.seq_q_start[num_seqs], 4);
      std::memcpy(&dviews[i], &dviews[0], sizeof(kernels::SeqKvView));
    }
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(dev, host, lay.total, cudaMemcpyHostToDevice, st));
  memory_.h2d_bytes += lay.total;
  if (ig != nullptr) {  // working pool, candidates and per-layer views (from those just uploaded)
    KVSCOPE_RETURN_IF_ERROR(ig->PrepareStep(
        *ig_cache, views,
        absl::MakeConstSpan(reinterpret_cast<const kernels::SeqKvView*>(host + lay.views),
                            num_seqs),
        steps, absl::MakeConstSpan(s.seq_q_start.data(), num_seqs), new_slots));
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.errors.data(), 0, 16, st));

  BodyArgs args;
  args.tokens = padded;
  args.num_seqs = body_seqs;
  args.max_q = max_q;
  args.decode = decode;
  args.ids = reinterpret_cast<const int32_t*>(dev + lay.ids);
  args.pos = reinterpret_cast<const int32_t*>(dev + lay.pos);
  args.pos_rows = reinterpret_cast<const int32_t*>(dev + lay.pos_rows);
  args.token_seq = reinterpret_cast<const int32_t*>(dev + lay.token_seq);
  args.seq_q_start = reinterpret_cast<const int32_t*>(dev + lay.seq_q_start);
  args.slots = reinterpret_cast<const int32_t*>(dev + lay.new_slots);
  args.views = reinterpret_cast<const kernels::SeqKvView*>(dev + lay.views);
  if (ev != nullptr) {
    args.views = ev->views();
    args.views_per_layer = ev->views_per_layer();
    args.attn_mass = attn_mass;
    args.evicting = ev;
  }
  args.infinigen = ig;
  args.max_cached = max_cached;
  args.attn_workspace = attn_ws_bytes > 0 ? s.attn_workspace.data() : nullptr;
  args.attn_workspace_bytes = attn_ws_bytes;
  args.attn_options = attn_options;
  if (bucket > 0 && options_.cuda_graphs) {
    KVSCOPE_RETURN_IF_ERROR(RunGraph(args, comm));
  } else {
    KVSCOPE_RETURN_IF_ERROR(EnqueueBody(args, comm));
  }
  if (ev != nullptr) KVSCOPE_RETURN_IF_ERROR(ev->EnqueueDownload(st, &memory_.d2h_bytes));
  // After the body, proj holds the last layer's reduced MLP output, not yet added to x.
  const bool pending = tokens > 0 && c_.num_layers > 0;
  const int32_t* logit_rows_d = reinterpret_cast<const int32_t*>(dev + lay.logit_rows);

  // Logits (rank 0): gather the wanted rows of x + proj, final norm, project_out, lm_head.
  const int64_t rows = static_cast<int64_t>(s.logit_rows.size());
  const bool logits = rank_ == 0 && out != nullptr;
  if (logits) {
    out->vocab_size = s.vocab_rows;
    out->row_begin = row_begin;
    out->logits.resize(rows * s.vocab_rows);
  }
  if (logits && rows > 0) {
    if (pending) {
      KVSCOPE_RETURN_IF_ERROR(
          kernels::cuda::AddInPlace(s.x.data(), s.proj.data(), tokens * hidden, dt, st));
    }
    const int64_t chunk = options_.logits_chunk_rows;
    const int64_t vocab = s.vocab_rows;
    const size_t logits_need = static_cast<size_t>(std::min(rows, chunk) * vocab) * es;
    KVSCOPE_RETURN_IF_ERROR(Reserve(s.logits, logits_need));
    KVSCOPE_RETURN_IF_ERROR(ReservePinned(s.logits_host, logits_need));
    // The row gather is an exact row copy: Embedding over the table x[tokens, hidden].
    KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Embedding(s.x.data(), tokens, hidden, logit_rows_d,
                                                     rows, s.normed.data(), dt, nullptr, st));
    if (llama) {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::RmsNorm(s.normed.data(), s.final_norm.data(), eps,
                                                     rows, hidden, s.normed.data(), dt, st));
    } else if (s.final_norm.data() != nullptr) {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::LayerNorm(s.normed.data(), s.final_norm.data(),
                                                       s.final_norm_bias.data(), eps, rows,
                                                       hidden, s.normed.data(), dt, st));
    }
    const void* features = s.normed.data();
    if (s.project_out.data() != nullptr) {
      KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.normed.data(), rows, hidden, s.project_out.data(),
                                             s.feature_dim, hidden, nullptr, s.proj.data(), false,
                                             dt, st));
      features = s.proj.data();
    }
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(
          static_cast<const char*>(features) + r0 * s.feature_dim * static_cast<int64_t>(es), n,
          s.feature_dim, s.lm_head_ptr, vocab, s.feature_dim, nullptr, s.logits.data(), false, dt,
          st));
      const size_t bytes = static_cast<size_t>(n * vocab) * es;
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(s.logits_host.data(), s.logits.data(), bytes,
                                                   cudaMemcpyDeviceToHost, st));
      KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
      memory_.d2h_bytes += static_cast<int64_t>(bytes);
      ConvertToF32(dt, s.logits_host.data(), static_cast<size_t>(n * vocab),
                   out->logits.data() + r0 * vocab);
    }
  }

  // Device-side errors of the step.
  KVSCOPE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(s.errors_host.data(), s.errors.data(), 16, cudaMemcpyDeviceToHost, st));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  memory_.d2h_bytes += 16;
  int32_t flag = 0;
  uint64_t embed_err = 0;
  std::memcpy(&flag, s.errors_host.as<char>(), 4);
  std::memcpy(&embed_err, s.errors_host.as<char>() + 8, 8);
  KVSCOPE_RETURN_IF_ERROR(kernels::cuda::EmbeddingErrorToStatus(embed_err, s.embed_rows));
  if (flag != 0) {
    return absl::InternalError(absl::StrCat(
        "device-side KV index error in the forward step (flags ", flag,
        ": 1 slot out of range, 2 query without a visible key, 4 bad sequence index); the KV "
        "cache's slots and views disagree with the GPU pool"));
  }
  // h2o / streaming: the device's decisions (positions, scores) into the host cache.
  if (ev != nullptr) {
    ev->CommitToHost();
    memory_.workspace_bytes += ev->device_bytes() - s.evicting_device_bytes;
    s.evicting_device_bytes = ev->device_bytes();
  }
  // infinigen: the selections into the host cache; traffic and buffers into the report.
  if (ig != nullptr) {
    KVSCOPE_RETURN_IF_ERROR(ig->FinishStep(*ig_cache));
    ig->TakeTraffic(&memory_.h2d_bytes, &memory_.d2h_bytes);
    memory_.workspace_bytes += ig->device_bytes() - s.infinigen_device_bytes;
    s.infinigen_device_bytes = ig->device_bytes();
  }
  memory_.pinned_host_bytes = static_cast<int64_t>(s.staging.bytes() + s.errors_host.bytes() +
                                                   s.logits_host.bytes() + s.host_pool.bytes()) +
                              (s.evicting != nullptr ? s.evicting->pinned_bytes() : 0) +
                              (s.infinigen != nullptr ? s.infinigen->pinned_bytes() : 0);
  return absl::OkStatus();
}

int64_t GpuModelShard::GraphBucket(int64_t tokens) const {
  if (!options_.cuda_graphs) return 0;
  int64_t bucket = 1;
  while (bucket < tokens) bucket *= 2;
  return bucket <= options_.graph_max_batch ? bucket : 0;
}

void GpuModelShard::DropGraphs() {
  for (auto& [key, exec] : impl_->graphs) cudaGraphExecDestroy(exec);
  impl_->graphs.clear();
}

absl::Status GpuModelShard::RunGraph(const BodyArgs& args, DeviceCommunicator& comm) {
  Impl& s = *impl_;
  const std::pair<int64_t, int32_t> key(args.tokens, args.attn_options.num_splits);
  auto it = s.graphs.find(key);
  if (it == s.graphs.end()) {
    // Capture the body once for this (bucket, splits); the kernels run at the launch below.
    KVSCOPE_CUDA_RETURN_IF_ERROR(
        cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    const absl::Status body = EnqueueBody(args, comm);
    cudaGraph_t graph = nullptr;
    const cudaError_t end = cudaStreamEndCapture(stream_, &graph);
    if (!body.ok()) {
      if (graph != nullptr) cudaGraphDestroy(graph);
      return body;
    }
    KVSCOPE_CUDA_RETURN_IF_ERROR(end);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    KVSCOPE_CUDA_RETURN_IF_ERROR(inst);
    it = s.graphs.emplace(key, exec).first;
    ++memory_.graphs_captured;
  }
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, stream_));
  ++memory_.graph_launches;
  return absl::OkStatus();
}

absl::Status GpuModelShard::EnqueueBody(const BodyArgs& a, DeviceCommunicator& comm) {
  Impl& s = *impl_;
  const DType dt = options_.dtype;
  const size_t es = DTypeSize(dt);
  const int64_t hidden = c_.hidden_size;
  const int64_t d = c_.head_dim;
  const int64_t tokens = a.tokens;
  const bool llama = c_.family == ModelFamily::kLlama;
  const float eps = static_cast<float>(c_.norm_eps);
  cudaStream_t st = stream_;
  if (tokens == 0) return absl::OkStatus();
  int32_t* flag_d = s.errors.as<int32_t>();
  uint64_t* embed_err_d = reinterpret_cast<uint64_t*>(s.errors.as<char>() + 8);
  auto elem = [es](void* p, int64_t offset) {
    return static_cast<void*>(static_cast<char*>(p) + offset * static_cast<int64_t>(es));
  };

  // Embeddings.
  if (llama) {
    KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Embedding(s.embed.data(), s.embed_rows, hidden, a.ids,
                                                     tokens, s.x.data(), dt, embed_err_d, st));
  } else {
    if (s.project_in.data() == nullptr) {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Embedding(s.embed.data(), s.embed_rows, s.embed_dim,
                                                       a.ids, tokens, s.x.data(), dt,
                                                       embed_err_d, st));
    } else {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Embedding(s.embed.data(), s.embed_rows, s.embed_dim,
                                                       a.ids, tokens, s.normed.data(), dt,
                                                       embed_err_d, st));
      KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.normed.data(), tokens, s.embed_dim,
                                             s.project_in.data(), hidden, s.embed_dim, nullptr,
                                             s.x.data(), false, dt, st));
    }
    KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Embedding(s.positions.data(), s.position_rows, hidden,
                                                     a.pos_rows, tokens, s.proj.data(), dt,
                                                     nullptr, st));
    KVSCOPE_RETURN_IF_ERROR(
        kernels::cuda::AddInPlace(s.x.data(), s.proj.data(), tokens * hidden, dt, st));
  }

  // Layers. `pending` means proj holds a reduced partial sum not yet added to x.
  bool pending = false;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  auto norm = [&](const DeviceBuffer& weight, const DeviceBuffer& bias) -> absl::Status {
    if (llama) {
      if (pending) {
        return kernels::cuda::AddRmsNorm(s.x.data(), s.proj.data(), weight.data(), eps, tokens,
                                         hidden, s.normed.data(), dt, st);
      }
      return kernels::cuda::RmsNorm(s.x.data(), weight.data(), eps, tokens, hidden,
                                    s.normed.data(), dt, st);
    }
    if (pending) {
      return kernels::cuda::AddLayerNorm(s.x.data(), s.proj.data(), weight.data(), bias.data(),
                                         eps, tokens, hidden, s.normed.data(), dt, st);
    }
    return kernels::cuda::LayerNorm(s.x.data(), weight.data(), bias.data(), eps, tokens, hidden,
                                    s.normed.data(), dt, st);
  };
  auto all_reduce = [&]() -> absl::Status {
    if (comm.size() == 1) return absl::OkStatus();
    return comm.AllReduceSum(s.proj.data(), tokens * hidden, dt, st);
  };
  for (int64_t l = 0; l < c_.num_layers; ++l) {
    const Impl::Layer& lw = s.layers[l];
    // infinigen's offloaded layers attend in its working pool (gpu_infinigen.h).
    const bool offloaded = a.infinigen != nullptr && a.infinigen->Offloaded(l);
    const CudaKvPool& pool = offloaded ? a.infinigen->working_pool() : pools_[l];
    // Attention block.
    KVSCOPE_RETURN_IF_ERROR(norm(lw.attn_norm, lw.attn_norm_bias));
    pending = false;
    // infinigen: from this layer's attention input, speculate and gather layer l + 1's tokens.
    if (a.infinigen != nullptr) {
      KVSCOPE_RETURN_IF_ERROR(a.infinigen->Speculate(l, s.normed.data(), tokens));
    }
    KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.normed.data(), tokens, hidden, lw.qkv.data(),
                                           s.qkv_w, hidden, lw.qkv_bias.data(), s.qkv.data(),
                                           false, dt, st));
    void* q = s.qkv.data();
    void* k = elem(s.qkv.data(), s.q_w);
    void* v = elem(s.qkv.data(), s.q_w + s.kv_w);
    if (llama) {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Rope(q, tokens, s.heads, d, s.qkv_w, a.pos,
                                                  s.inv_freq.as<float>(), s.rot_dim,
                                                  s.rope_scaling, dt, st));
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Rope(k, tokens, s.kv_heads, d, s.qkv_w, a.pos,
                                                  s.inv_freq.as<float>(), s.rot_dim,
                                                  s.rope_scaling, dt, st));
      if (a.infinigen != nullptr) {  // the skew follows RoPE (Llama family)
        KVSCOPE_RETURN_IF_ERROR(a.infinigen->SkewAfterRope(l, q, k, tokens));
      }
    }
    const kernels::SeqKvView* views = a.views + l * a.views_per_layer;
    if (offloaded) {
      // The new rows to the host pool and the working pool, their partial keys, and the
      // earlier rows the step's non-sparse sequences read.
      KVSCOPE_RETURN_IF_ERROR(a.infinigen->AfterWriteKv(l, k, v, a.slots, tokens, tokens));
      views = a.infinigen->Views(l);
    } else {
      KVSCOPE_RETURN_IF_ERROR(
          kernels::cuda::WriteKv(pool, k, v, s.qkv_w, a.slots, tokens, flag_d, st));
    }
    if (a.decode) {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::PagedAttention(
          q, s.qkv_w, tokens, static_cast<int32_t>(s.heads), a.token_seq, a.pos, pool, views,
          a.num_seqs, a.max_cached, scale, s.attn.data(), s.q_w, a.attn_mass, a.attn_workspace,
          a.attn_workspace_bytes, flag_d, a.attn_options, st));
    } else {
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::PrefillAttention(
          q, s.qkv_w, tokens, static_cast<int32_t>(s.heads), a.seq_q_start, a.pos, pool, views,
          a.num_seqs, a.max_q, scale, s.attn.data(), s.q_w, flag_d,
          kernels::cuda::PrefillOptions{}, st));
    }
    // h2o / streaming: EvictingKvCache::OnAttention(l) on the device.
    if (a.evicting != nullptr) {
      KVSCOPE_RETURN_IF_ERROR(a.evicting->OnAttention(static_cast<int32_t>(l), pool, st));
    }
    KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.attn.data(), tokens, s.q_w, lw.o.data(), hidden,
                                           s.q_w, lw.o_bias.data(), s.proj.data(), false, dt,
                                           st));
    KVSCOPE_RETURN_IF_ERROR(all_reduce());
    pending = true;

    // MLP block.
    KVSCOPE_RETURN_IF_ERROR(norm(lw.mlp_norm, lw.mlp_norm_bias));
    pending = false;
    if (llama) {
      KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.normed.data(), tokens, hidden, lw.gate_up.data(),
                                             2 * s.inter, hidden, lw.gate_up_bias.data(),
                                             s.gate_up.data(), false, dt, st));
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::SiluMul(
          s.gate_up.data(), 2 * s.inter, elem(s.gate_up.data(), s.inter), 2 * s.inter, tokens,
          s.inter, s.act.data(), s.inter, dt, st));
    } else {
      KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.normed.data(), tokens, hidden, lw.gate_up.data(),
                                             s.inter, hidden, lw.gate_up_bias.data(),
                                             s.act.data(), false, dt, st));
      KVSCOPE_RETURN_IF_ERROR(kernels::cuda::Relu(s.act.data(), tokens * s.inter, dt, st));
    }
    KVSCOPE_RETURN_IF_ERROR(s.gemm->Linear(s.act.data(), tokens, s.inter, lw.down.data(), hidden,
                                           s.inter, lw.down_bias.data(), s.proj.data(), false,
                                           dt, st));
    KVSCOPE_RETURN_IF_ERROR(all_reduce());
    pending = true;
  }
  return absl::OkStatus();
}

}  // namespace kvscope::engine::cuda
