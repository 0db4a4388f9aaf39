// File: engine/weights.cc
//
// LoadModelWeights (safetensors checkpoints -> float32 views) and SyntheticWeights (seeded
// random weights for presets). Both walk the same table of tensors (TensorSpecs), so a
// synthetic model has exactly the tensors and shapes a checkpoint of that config would.
#include "engine/weights.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <new>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "engine/checkpoint.h"
#include "engine/safetensors.h"

namespace kvscope::engine {
namespace {

// How SyntheticWeights fills a tensor.
enum class Init { kMatrix, kEmbedding, kNormWeight, kNormBias, kBias };

// One tensor the model needs: its Hugging Face name, expected shape and destination view.
struct TensorSpec {
  std::string name;
  int64_t rows = 1;
  int64_t cols = 0;
  bool is_vector = false;  // stored as [cols] rather than [rows, cols]
  Init init = Init::kMatrix;
  WeightView* target = nullptr;
};

std::vector<int64_t> ExpectedShape(const TensorSpec& spec) {
  if (spec.is_vector) return {spec.cols};
  return {spec.rows, spec.cols};
}

// The tensors of `w->config` in a fixed order (the order also seeds SyntheticWeights, so it
// must not change). `w->layers` must already have num_layers entries. The tied LM head is
// not listed (it aliases `embed`).
std::vector<TensorSpec> TensorSpecs(ModelWeights* w) {
  const ModelConfig& c = w->config;
  std::vector<TensorSpec> specs;
  auto matrix = [&](std::string name, int64_t rows, int64_t cols, WeightView* target,
                    Init init = Init::kMatrix) {
    specs.push_back(TensorSpec{std::move(name), rows, cols, false, init, target});
  };
  auto vec = [&](std::string name, int64_t cols, Init init, WeightView* target) {
    specs.push_back(TensorSpec{std::move(name), 1, cols, true, init, target});
  };
  const int64_t h = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  if (c.family == ModelFamily::kLlama) {
    matrix("model.embed_tokens.weight", c.vocab_size, h, &w->embed, Init::kEmbedding);
    for (int64_t i = 0; i < c.num_layers; ++i) {
      LayerWeights& l = w->layers[static_cast<size_t>(i)];
      const std::string p = absl::StrCat("model.layers.", i, ".");
      vec(p + "input_layernorm.weight", h, Init::kNormWeight, &l.attn_norm);
      matrix(p + "self_attn.q_proj.weight", c.q_size(), h, &l.q);
      matrix(p + "self_attn.k_proj.weight", c.kv_size(), h, &l.k);
      matrix(p + "self_attn.v_proj.weight", c.kv_size(), h, &l.v);
      matrix(p + "self_attn.o_proj.weight", h, c.q_size(), &l.o);
      if (c.qkv_bias) {
        vec(p + "self_attn.q_proj.bias", c.q_size(), Init::kBias, &l.q_bias);
        vec(p + "self_attn.k_proj.bias", c.kv_size(), Init::kBias, &l.k_bias);
        vec(p + "self_attn.v_proj.bias", c.kv_size(), Init::kBias, &l.v_bias);
      }
      if (c.o_bias) vec(p + "self_attn.o_proj.bias", h, Init::kBias, &l.o_bias);
      vec(p + "post_attention_layernorm.weight", h, Init::kNormWeight, &l.mlp_norm);
      matrix(p + "mlp.gate_proj.weight", inter, h, &l.gate);
      matrix(p + "mlp.up_proj.weight", inter, h, &l.up);
      matrix(p + "mlp.down_proj.weight", h, inter, &l.down);
      if (c.mlp_bias) {
        vec(p + "mlp.gate_proj.bias", inter, Init::kBias, &l.gate_bias);
        vec(p + "mlp.up_proj.bias", inter, Init::kBias, &l.up_bias);
        vec(p + "mlp.down_proj.bias", h, Init::kBias, &l.down_bias);
      }
    }
    vec("model.norm.weight", h, Init::kNormWeight, &w->final_norm);
    if (!c.tie_word_embeddings) matrix("lm_head.weight", c.vocab_size, h, &w->lm_head);
    return specs;
  }
  const int64_t e = c.word_embed_proj_dim > 0 ? c.word_embed_proj_dim : h;
  matrix("model.decoder.embed_tokens.weight", c.vocab_size, e, &w->embed, Init::kEmbedding);
  matrix("model.decoder.embed_positions.weight", c.max_position_embeddings + c.position_offset, h,
         &w->positions, Init::kEmbedding);
  if (e != h) {
    matrix("model.decoder.project_in.weight", h, e, &w->project_in);
    matrix("model.decoder.project_out.weight", e, h, &w->project_out);
  }
  for (int64_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w->layers[static_cast<size_t>(i)];
    const std::string p = absl::StrCat("model.decoder.layers.", i, ".");
    vec(p + "self_attn_layer_norm.weight", h, Init::kNormWeight, &l.attn_norm);
    vec(p + "self_attn_layer_norm.bias", h, Init::kNormBias, &l.attn_norm_bias);
    matrix(p + "self_attn.q_proj.weight", c.q_size(), h, &l.q);
    matrix(p + "self_attn.k_proj.weight", c.kv_size(), h, &l.k);
    matrix(p + "self_attn.v_proj.weight", c.kv_size(), h, &l.v);
    matrix(p + "self_attn.out_proj.weight", h, c.q_size(), &l.o);
    if (c.qkv_bias) {
      vec(p + "self_attn.q_proj.bias", c.q_size(), Init::kBias, &l.q_bias);
      vec(p + "self_attn.k_proj.bias", c.kv_size(), Init::kBias, &l.k_bias);
      vec(p + "self_attn.v_proj.bias", c.kv_size(), Init::kBias, &l.v_bias);
    }
    if (c.o_bias) vec(p + "self_attn.out_proj.bias", h, Init::kBias, &l.o_bias);
    vec(p + "final_layer_norm.weight", h, Init::kNormWeight, &l.mlp_norm);
    vec(p + "final_layer_norm.bias", h, Init::kNormBias, &l.mlp_norm_bias);
    matrix(p + "fc1.weight", inter, h, &l.up);
    if (c.mlp_bias) vec(p + "fc1.bias", inter, Init::kBias, &l.up_bias);
    matrix(p + "fc2.weight", h, inter, &l.down);
    if (c.mlp_bias) vec(p + "fc2.bias", h, Init::kBias, &l.down_bias);
  }
  vec("model.decoder.final_layer_norm.weight", h, Init::kNormWeight, &w->final_norm);
  vec("model.decoder.final_layer_norm.bias", h, Init::kNormBias, &w->final_norm_bias);
  if (!c.tie_word_embeddings) matrix("lm_head.weight", c.vocab_size, e, &w->lm_head);
  return specs;
}

// Allocates `count` floats; nullptr (not an exception) when memory is exhausted.
std::unique_ptr<float[]> Allocate(int64_t count) {
  return std::unique_ptr<float[]>(new (std::nothrow) float[static_cast<size_t>(count)]);
}

absl::Status OutOfMemory(int64_t bytes, const std::string& what) {
  return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes for ", what));
}

// Sum of the bytes behind distinct views (a tied LM head counts once).
int64_t TotalBytes(const ModelWeights& w) {
  std::set<const float*> seen;
  int64_t total = 0;
  auto add = [&](const WeightView& v) {
    if (!v.empty() && seen.insert(v.data).second) total += v.rows * v.cols * 4;
  };
  add(w.embed);
  add(w.positions);
  add(w.project_in);
  add(w.project_out);
  for (const LayerWeights& l : w.layers) {
    for (const WeightView* v : {&l.attn_norm, &l.attn_norm_bias, &l.q, &l.k, &l.v, &l.o, &l.q_bias,
                                &l.k_bias, &l.v_bias, &l.o_bias, &l.mlp_norm, &l.mlp_norm_bias,
                                &l.gate, &l.up, &l.down, &l.gate_bias, &l.up_bias, &l.down_bias}) {
      add(*v);
    }
  }
  add(w.final_norm);
  add(w.final_norm_bias);
  add(w.lm_head);
  return total;
}

// Work items for parallel loops: [begin, end) of one tensor.
struct Chunk {
  size_t job = 0;
  int64_t begin = 0;
  int64_t end = 0;
};
constexpr int64_t kChunkElements = int64_t{1} << 18;

template <typename Count>
std::vector<Chunk> MakeChunks(size_t jobs, Count count_of) {
  std::vector<Chunk> chunks;
  for (size_t j = 0; j < jobs; ++j) {
    const int64_t n = count_of(j);
    for (int64_t b = 0; b < n; b += kChunkElements) {
      chunks.push_back(Chunk{j, b, std::min(n, b + kChunkElements)});
    }
  }
  return chunks;
}

// ---- Loading ---------------------------------------------------------------------------

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Finds `spec` in the checkpoint, also under the name without the leading "model." (older
// exports) and, for a tied embedding, as "lm_head.weight" (safetensors keeps one name of a
// shared tensor, and some exports keep the LM head's).
const CheckpointTensor* FindTensor(const Checkpoint& ckpt, const TensorSpec& spec,
                                   const ModelConfig& config, const ModelWeights& w) {
  if (const CheckpointTensor* t = ckpt.Find(spec.name)) return t;
  constexpr std::string_view kPrefix = "model.";
  if (std::string_view(spec.name).substr(0, kPrefix.size()) == kPrefix) {
    if (const CheckpointTensor* t = ckpt.Find(std::string_view(spec.name).substr(kPrefix.size()))) {
      return t;
    }
  }
  if (spec.target == &w.embed && config.tie_word_embeddings) return ckpt.Find("lm_head.weight");
  return nullptr;
}

struct ConvertJob {
  const uint8_t* src = nullptr;
  DType dtype = DType::kBF16;
  int64_t count = 0;
  float* dst = nullptr;
};

absl::StatusOr<ModelWeights> LoadImpl(const std::string& model_dir) {
  if (!IsDirectory(model_dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", model_dir, " does not exist"));
  }
  KVSCOPE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  KVSCOPE_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(model_dir));

  // A config with more layers than the checkpoint holds fails on the first missing layer,
  // before anything proportional to num_layers is allocated.
  for (int64_t i = 0; i < config.num_layers; ++i) {
    const std::string name =
        config.family == ModelFamily::kLlama
            ? absl::StrCat("model.layers.", i, ".input_layernorm.weight")
            : absl::StrCat("model.decoder.layers.", i, ".self_attn_layer_norm.weight");
    if (ckpt.Find(name) == nullptr && ckpt.Find(std::string_view(name).substr(6)) == nullptr) {
      return absl::NotFoundError(absl::StrCat(ckpt.source(), ": tensor ", name,
                                              " not found (config.json has num_hidden_layers ",
                                              config.num_layers, ")"));
    }
  }

  ModelWeights w;
  w.config = config;
  w.layers.resize(static_cast<size_t>(config.num_layers));
  const std::vector<TensorSpec> specs = TensorSpecs(&w);

  // Resolve and validate every tensor before touching data.
  struct Resolved {
    const TensorSpec* spec;
    const CheckpointTensor* where;
    DType dtype;
  };
  std::vector<Resolved> resolved;
  resolved.reserve(specs.size());
  for (const TensorSpec& spec : specs) {
    const CheckpointTensor* where = FindTensor(ckpt, spec, config, w);
    if (where == nullptr) {
      std::string why;
      if (spec.name == "lm_head.weight") why = " (config.json has tie_word_embeddings false)";
      return absl::NotFoundError(
          absl::StrCat(ckpt.source(), ": tensor ", spec.name, " not found", why));
    }
    const std::string& file = where->file->path();
    KVSCOPE_ASSIGN_OR_RETURN(DType dtype, SupportedDType(*where->tensor, file));
    const std::vector<int64_t> expected = ExpectedShape(spec);
    if (where->tensor->shape != expected) {
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": tensor ", where->tensor->name, " has shape ", ShapeString(where->tensor->shape),
          ", expected ", ShapeString(expected), " from config.json"));
    }
    resolved.push_back(Resolved{&spec, where, dtype});
  }

  // Zero-copy views for aligned F32 data; conversion jobs for the rest.
  std::map<const SafetensorsTensor*, const float*> done;  // a tensor is materialized once
  std::set<const SafetensorsFile*> viewed;                // files with zero-copy views
  std::vector<ConvertJob> jobs;
  for (const Resolved& r : resolved) {
    const SafetensorsTensor& t = *r.where->tensor;
    const uint8_t* src = r.where->file->TensorData(t);
    auto it = done.find(&t);
    const float* data = nullptr;
    if (it != done.end()) {
      data = it->second;
    } else if (r.dtype == DType::kF32 && reinterpret_cast<uintptr_t>(src) % alignof(float) == 0) {
      data = reinterpret_cast<const float*>(src);
      viewed.insert(r.where->file);
    } else {
      std::unique_ptr<float[]> buffer = Allocate(t.num_elements);
      if (buffer == nullptr) return OutOfMemory(t.num_elements * 4, t.name);
      jobs.push_back(ConvertJob{src, r.dtype, t.num_elements, buffer.get()});
      data = buffer.get();
      w.owned.push_back(std::move(buffer));
    }
    done.emplace(&t, data);
    *r.spec->target = WeightView{data, r.spec->rows, r.spec->cols};
  }

  const std::vector<Chunk> chunks =
      MakeChunks(jobs.size(), [&](size_t j) { return jobs[j].count; });
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < num_chunks; ++i) {
    const Chunk& c = chunks[static_cast<size_t>(i)];
    const ConvertJob& job = jobs[c.job];
    const size_t elem = DTypeSize(job.dtype);
    ConvertToF32(job.dtype, job.src + static_cast<size_t>(c.begin) * elem,
                 static_cast<size_t>(c.end - c.begin), job.dst + c.begin);
  }

  // Keep only the mappings that views point into; in those, release the pages of tensors
  // that were converted (read-only MAP_PRIVATE pages are simply re-read if touched again).
  // Files whose tensors were all converted are unmapped when `ckpt` goes out of scope.
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  for (const auto& file : ckpt.files()) {
    if (viewed.count(file.get()) == 0) continue;
    w.mapped.push_back(file->mapped_file());
  }
  for (const ConvertJob& job : jobs) {
    bool in_viewed_file = false;
    for (const auto& m : w.mapped) {
      if (job.src >= m->data() && job.src < m->data() + m->size()) in_viewed_file = true;
    }
    if (!in_viewed_file) continue;
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(job.src) + page - 1) / page * page;
    const uintptr_t end = (reinterpret_cast<uintptr_t>(job.src) +
                           static_cast<uintptr_t>(job.count) * DTypeSize(job.dtype)) /
                          page * page;
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }

  if (config.tie_word_embeddings) w.lm_head = w.embed;
  w.total_bytes = TotalBytes(w);
  return w;
}

// ---- Synthetic -------------------------------------------------------------------------

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [-scale, scale): a 24-bit signed integer times 2^-23 (exact) times `scale`
// (one rounding), so the bits do not depend on the compiler's floating-point contraction.
inline float UniformAt(uint64_t key, int64_t index, float scale) {
  const uint64_t bits = SplitMix64(key ^ (static_cast<uint64_t>(index) * 0xd1b54a32d192ed03ull));
  const int32_t r = static_cast<int32_t>(bits >> 40) - (int32_t{1} << 23);
  return static_cast<float>(r) * (1.0f / 8388608.0f) * scale;
}

float InitScale(const TensorSpec& spec, const ModelConfig& config) {
  switch (spec.init) {
    case Init::kMatrix:
      return static_cast<float>(1.0 / std::sqrt(static_cast<double>(spec.cols)));
    case Init::kEmbedding:
      // Untied: O(1) inputs. Tied: the same matrix produces the logits, so shrink it to keep
      // them O(1) (a normalized hidden state times rows of this scale).
      if (!config.tie_word_embeddings) return 1.0f;
      return static_cast<float>(std::min(1.0, 4.0 / std::sqrt(static_cast<double>(spec.cols))));
    case Init::kNormWeight:
      return 1.0f;
    case Init::kNormBias:
      return 0.0f;
    case Init::kBias:
      return 0.02f;
  }
  return 0.0f;
}

absl::StatusOr<ModelWeights> SyntheticImpl(const ModelConfig& config, uint64_t seed,
                                           int64_t max_bytes) {
  if (config.vocab_size <= 0 || config.hidden_size <= 0 || config.num_layers < 0 ||
      config.num_heads <= 0 || config.num_kv_heads <= 0 || config.head_dim <= 0 ||
      config.intermediate_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("synthetic weights for ", config.architecture,
                                                   ": the config has non-positive sizes"));
  }
  const long double params = static_cast<long double>(config.NumParameters());
  const long double bytes_needed = params * 4;
  if (max_bytes > 0 && bytes_needed > static_cast<long double>(max_bytes)) {
    constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
    return absl::ResourceExhaustedError(absl::StrCat(
        "synthetic weights for ", config.architecture.empty() ? "the model" : config.architecture,
        " need ", static_cast<int64_t>(bytes_needed), " bytes (",
        static_cast<double>(bytes_needed) / kGiB, " GiB) of float32, above the limit of ",
        max_bytes, " bytes (", static_cast<double>(max_bytes) / kGiB, " GiB)"));
  }
  ModelWeights w;
  w.config = config;
  w.layers.resize(static_cast<size_t>(config.num_layers));
  const std::vector<TensorSpec> specs = TensorSpecs(&w);

  struct GenJob {
    float* dst;
    int64_t count;
    uint64_t key;
    float scale;
    bool random;
  };
  std::vector<GenJob> jobs;
  jobs.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const int64_t count = spec.rows * spec.cols;
    std::unique_ptr<float[]> buffer = Allocate(count);
    if (buffer == nullptr) return OutOfMemory(count * 4, spec.name);
    const bool random = spec.init != Init::kNormWeight && spec.init != Init::kNormBias;
    jobs.push_back(GenJob{buffer.get(), count, SplitMix64(SplitMix64(seed) ^ (i + 1)),
                          InitScale(spec, config), random});
    *spec.target = WeightView{buffer.get(), spec.rows, spec.cols};
    w.owned.push_back(std::move(buffer));
  }
  const std::vector<Chunk> chunks =
      MakeChunks(jobs.size(), [&](size_t j) { return jobs[j].count; });
  const int64_t num_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < num_chunks; ++c) {
    const Chunk& chunk = chunks[static_cast<size_t>(c)];
    const GenJob& job = jobs[chunk.job];
    if (!job.random) {
      std::fill(job.dst + chunk.begin, job.dst + chunk.end, job.scale);
      continue;
    }
    for (int64_t e = chunk.begin; e < chunk.end; ++e) {
      job.dst[e] = UniformAt(job.key, e, job.scale);
    }
  }
  if (config.tie_word_embeddings) w.lm_head = w.embed;
  w.total_bytes = TotalBytes(w);
  return w;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir) {
  try {
    return LoadImpl(model_dir);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat(model_dir, ": out of memory while loading the weights"));
  }
}

absl::StatusOr<ModelWeights> SyntheticWeights(const ModelConfig& config, uint64_t seed,
                                              int64_t max_bytes) {
  try {
    return SyntheticImpl(config, seed, max_bytes);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory building synthetic weights (",
                                                     config.NumParameters(), " parameters)"));
  }
}

}  // namespace kvscope::engine
