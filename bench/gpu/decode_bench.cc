// File: bench/gpu/decode_bench.cc
//
// Decode step time of kvscope's GPU engine (engine/cuda/gpu_engine.h) on a preset model with
// seeded synthetic weights (default llama-2-7b, bf16), at the shapes of torch_peers.py's HF
// `generate` peer: batch 1 with 128-token prompts and batch 32 with 512-token prompts, then
// 64 decode steps (every sequence one new token per step). Each shape runs with CUDA graphs
// and eagerly (one engine per mode; weights converted and uploaded once per engine).
//
// Timing: host clock around GpuEngine::Forward, which returns once the step's device work
// and the logits' copy to the host are done (so a step includes the final norm, the LM head
// and the logits transfer, as HF's does); 3 warm-up steps are excluded; the median of the
// timed steps. The floor is the weight bytes on the device over a measured device-to-device
// copy bandwidth (bytes read + written / time), i.e. reading every weight once per step.
// Output: TSV rows `name<TAB>shape<TAB>median_us<TAB>value<TAB>unit` (as the other GPU
// benches; check.sh prefixes them with `kvscope`), notes on lines starting with '#'.
//
//   gpu_decode_bench [--model llama-2-7b] [--dtype bf16|fp16|f32] [--steps 64]
//                    [--modes graphs,eager] [--shapes 1x128,32x512]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "engine/cuda/gpu_engine.h"
#include "engine/presets.h"
#include "engine/weights.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device_buffer.h"

namespace kvscope::engine::cuda {
namespace {

struct Shape {
  int32_t batch = 1;
  int32_t prompt = 128;
};

struct Args {
  std::string model = "llama-2-7b";
  DType dtype = DType::kBF16;
  int32_t steps = 64;
  std::vector<std::string> modes = {"graphs", "eager"};
  std::vector<Shape> shapes = {{1, 128}, {32, 512}};
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// Device-to-device copy bandwidth, TB/s counting bytes read plus bytes written (1 GiB, the
// median of 20 copies timed with events after 3 warm-ups).
absl::StatusOr<double> CopyBandwidth() {
  constexpr size_t kBytes = size_t{1} << 30;
  KVSCOPE_ASSIGN_OR_RETURN(kernels::cuda::DeviceBuffer a, kernels::cuda::DeviceBuffer::Allocate(kBytes));
  KVSCOPE_ASSIGN_OR_RETURN(kernels::cuda::DeviceBuffer b, kernels::cuda::DeviceBuffer::Allocate(kBytes));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemset(a.data(), 0x5a, kBytes));
  cudaEvent_t start, stop;
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&start));
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&stop));
  std::vector<double> ms;
  for (int i = 0; i < 23; ++i) {
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventRecord(start));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(b.data(), a.data(), kBytes, cudaMemcpyDeviceToDevice));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop));
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop));
    float t = 0;
    KVSCOPE_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&t, start, stop));
    if (i >= 3) ms.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 2.0 * static_cast<double>(kBytes) / (Median(ms) * 1e-3) / 1e12;
}

// Prefills `shape.batch` sequences (one Forward each, so the workspace stays at one
// prompt), then times `steps` decode steps of the whole batch.
absl::Status RunShape(GpuEngine& engine, const Shape& shape, int32_t steps, const char* mode,
                      const std::string& model, double floor_ms) {
  const int32_t vocab = static_cast<int32_t>(engine.config().vocab_size);
  std::vector<std::vector<int32_t>> prompts(shape.batch);
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  for (auto& p : prompts) {
    p.resize(shape.prompt);
    for (int32_t& t : p) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      t = 3 + static_cast<int32_t>(x % static_cast<uint64_t>(vocab - 3));
    }
  }
  for (int32_t i = 0; i < shape.batch; ++i) {
    KVSCOPE_RETURN_IF_ERROR(engine.Forward({SeqInput{i + 1, prompts[i], 0, false}}).status());
  }
  std::vector<int32_t> next(shape.batch);
  std::vector<double> step_ms;
  constexpr int kWarmup = 3;
  for (int32_t s = 0; s < kWarmup + steps; ++s) {
    std::vector<SeqInput> batch(shape.batch);
    for (int32_t i = 0; i < shape.batch; ++i) {
      next[i] = 3 + (s * 7919 + i * 104729) % (vocab - 3);
      batch[i] = SeqInput{i + 1, absl::MakeConstSpan(&next[i], 1), shape.prompt + s, false};
    }
    const auto t0 = std::chrono::steady_clock::now();
    KVSCOPE_RETURN_IF_ERROR(engine.Forward(batch).status());
    const auto t1 = std::chrono::steady_clock::now();
    if (s >= kWarmup) step_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  for (int32_t i = 0; i < shape.batch; ++i) engine.Release(i + 1);
  const double med = Median(step_ms);
  const std::string tag = absl::StrCat("b", shape.batch, "_p", shape.prompt, "_", mode);
  std::printf("# %s %s: %d steps, p90 %.3f ms, floor %.3f ms (median / floor %.2f)\n",
              model.c_str(), tag.c_str(), steps, Percentile(step_ms, 0.9), floor_ms,
              med / floor_ms);
  std::printf("decode_step_%s\t%s\t%.1f\t%.3f\tms/step\n", model.c_str(), tag.c_str(), med * 1e3,
              med);
  std::printf("decode_tokens_%s\t%s\t%.1f\t%.1f\ttok/s\n", model.c_str(), tag.c_str(), med * 1e3,
              shape.batch / (med * 1e-3));
  std::fflush(stdout);
  return absl::OkStatus();
}

absl::Status Run(const Args& args) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return absl::FailedPreconditionError("no CUDA device");
  }
  cudaDeviceProp prop{};
  KVSCOPE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  KVSCOPE_ASSIGN_OR_RETURN(const double copy_tbs, CopyBandwidth());
  std::printf("# device %s, %d SMs; device-to-device copy %.2f TB/s (read + write)\n", prop.name,
              prop.multiProcessorCount, copy_tbs);
  KVSCOPE_ASSIGN_OR_RETURN(ModelConfig config, PresetConfig(args.model));
  const auto t0 = std::chrono::steady_clock::now();
  KVSCOPE_ASSIGN_OR_RETURN(ModelWeights synthetic, SyntheticWeights(config, /*seed=*/1));
  auto weights = std::make_shared<const ModelWeights>(std::move(synthetic));
  std::printf("# %s: %.2f B parameters, synthetic weights in %.1f s\n", args.model.c_str(),
              static_cast<double>(config.NumParameters()) / 1e9,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  int64_t max_tokens = 0;
  for (const Shape& s : args.shapes) {
    max_tokens = std::max<int64_t>(max_tokens, int64_t{s.batch} * (s.prompt + args.steps + 3));
  }
  for (const std::string& mode : args.modes) {
    GpuEngineOptions options;
    options.shard.dtype = args.dtype;
    options.shard.cuda_graphs = mode == "graphs";
    // Enough blocks for the largest shape (every sequence's last block partly used), so
    // the pool, not the memory plan, bounds the KV memory.
    options.shard.num_kv_blocks = max_tokens / options.shard.block_size + 64 * 2;
    options.max_kv_tokens = 0;
    const auto c0 = std::chrono::steady_clock::now();
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<GpuEngine> engine, GpuEngine::Create(weights, options));
    const GpuMemoryReport memory = engine->MemoryReports()[0];
    const double floor_ms =
        static_cast<double>(memory.weight_bytes) / (copy_tbs * 1e12) * 1e3;
    std::printf("# %s engine ready in %.1f s: %s\n", mode.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - c0).count(),
                memory.Describe().c_str());
    std::printf("weight_read_floor_%s\t%s\t%.1f\t%.3f\tms/step\n", args.model.c_str(),
                std::string(DTypeName(args.dtype)).c_str(), floor_ms * 1e3, floor_ms);
    for (const Shape& shape : args.shapes) {
      KVSCOPE_RETURN_IF_ERROR(RunShape(*engine, shape, args.steps, mode.c_str(), args.model,
                                       floor_ms));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Args> ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(flag, " needs a value"));
    const std::string value = argv[++i];
    if (flag == "--model") {
      args.model = value;
    } else if (flag == "--dtype") {
      if (value == "bf16") args.dtype = DType::kBF16;
      else if (value == "fp16") args.dtype = DType::kF16;
      else if (value == "f32") args.dtype = DType::kF32;
      else return absl::InvalidArgumentError("--dtype: bf16, fp16 or f32");
    } else if (flag == "--steps") {
      if (!absl::SimpleAtoi(value, &args.steps) || args.steps < 1) {
        return absl::InvalidArgumentError("--steps: a positive integer");
      }
    } else if (flag == "--modes") {
      args.modes = absl::StrSplit(value, ',');
      for (const std::string& m : args.modes) {
        if (m != "graphs" && m != "eager") {
          return absl::InvalidArgumentError("--modes: graphs and/or eager, comma-separated");
        }
      }
    } else if (flag == "--shapes") {
      args.shapes.clear();
      for (absl::string_view s : absl::StrSplit(value, ',')) {
        std::vector<std::string> parts = absl::StrSplit(s, 'x');
        Shape shape;
        if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &shape.batch) ||
            !absl::SimpleAtoi(parts[1], &shape.prompt) || shape.batch < 1 || shape.prompt < 1) {
          return absl::InvalidArgumentError("--shapes: BATCHxPROMPT,... e.g. 1x128,32x512");
        }
        args.shapes.push_back(shape);
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", flag));
    }
  }
  return args;
}

}  // namespace
}  // namespace kvscope::engine::cuda

int main(int argc, char** argv) {
  auto args = kvscope::engine::cuda::ParseArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string(args.status().message()).c_str());
    return 2;
  }
  const absl::Status status = kvscope::engine::cuda::Run(*args);
  if (!status.ok()) {
    std::fprintf(stderr, "gpu_decode_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
