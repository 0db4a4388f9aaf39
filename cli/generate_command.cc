// `kvscope generate`: one prompt through the engine, printing the continuation and speed.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "cli/flag_set.h"
#include "common/status_macros.h"
#include "engine/engine.h"
#include "engine/generator.h"
#include "engine/model_source.h"
#include "nlohmann/json.hpp"

namespace kvscope::cli {
namespace {

struct GenerateFlags {
  std::string model;
  int64_t tp = 1;
  std::string prompt;
  std::string prompt_ids;
  int64_t max_new_tokens = 32;
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  int64_t seed = 0;
  std::string logits_out;
  int64_t weights_seed = 0;
  int64_t threads = 0;
  bool ignore_eos = false;
};

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt-ids: '", part, "' is not an integer token id"));
    }
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids: no token ids given");
  return ids;
}

absl::Status WriteLogits(const std::string& path, const std::vector<int32_t>& prompt,
                         const engine::GenerateResult& result) {
  nlohmann::json doc;
  doc["prompt_ids"] = prompt;
  doc["prefill_logits"] = result.prefill_logits;
  doc["tokens"] = result.tokens;
  doc["step_logits"] = result.step_logits;
  std::ofstream out(path);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("--logits-out: cannot write ", path));
  out << doc.dump() << "\n";
  if (!out) return absl::InternalError(absl::StrCat("--logits-out: write to ", path, " failed"));
  return absl::OkStatus();
}

absl::Status Run(const GenerateFlags& f) {
  if (f.model.empty()) return absl::InvalidArgumentError("--model is required (DIR or preset:NAME)");
  if (f.prompt.empty() == f.prompt_ids.empty()) {
    return absl::InvalidArgumentError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3");
  }
  if (f.max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  if (f.tp < 1) return absl::InvalidArgumentError("--tp must be >= 1");
  engine::SamplingParams sampling{static_cast<float>(f.temperature), static_cast<int32_t>(f.top_k),
                                  static_cast<float>(f.top_p), static_cast<uint64_t>(f.seed)};
  KVSCOPE_RETURN_IF_ERROR(engine::ValidateSamplingParams(sampling));

  KVSCOPE_ASSIGN_OR_RETURN(
      engine::LoadedModel model,
      engine::LoadModel(f.model, {static_cast<uint64_t>(f.weights_seed), 0}));
  const engine::ModelConfig& config = model.weights->config;
  std::vector<int32_t> prompt;
  if (!f.prompt.empty()) {
    if (model.tokenizer == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.model, " has no tokenizer.json (presets have none): pass --prompt-ids instead"));
    }
    KVSCOPE_ASSIGN_OR_RETURN(prompt, model.tokenizer->Encode(f.prompt));
  } else {
    KVSCOPE_ASSIGN_OR_RETURN(prompt, ParseIds(f.prompt_ids));
  }
  const int64_t context = config.max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) > context) {
    return absl::OutOfRangeError(absl::StrCat("the prompt has ", prompt.size(),
                                              " tokens but the model's context is ", context));
  }
  int64_t max_new = f.max_new_tokens;
  if (static_cast<int64_t>(prompt.size()) + max_new > context) {
    max_new = context - static_cast<int64_t>(prompt.size());
    std::fprintf(stderr, "note: --max-new-tokens lowered to %lld to fit the context of %lld\n",
                 static_cast<long long>(max_new), static_cast<long long>(context));
  }

  engine::EngineOptions options;
  options.tp_size = static_cast<int>(f.tp);
  options.num_threads = static_cast<int>(f.threads);
  KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> eng,
                           engine::Engine::Create(model.weights, options));

  engine::GenerateOptions gen;
  gen.keep_logits = !f.logits_out.empty();
  if (!f.ignore_eos) gen.eos_ids = config.eos_token_ids;
  // Stream the continuation: print what decoding the tokens so far adds.
  std::vector<int32_t> so_far = prompt;
  std::string printed;
  const engine::Tokenizer* tok = model.tokenizer.get();
  std::string prompt_text;
  if (tok != nullptr) {
    auto text = tok->Decode(prompt);
    if (text.ok()) prompt_text = *text;
  }
  gen.on_token = [&](int, int32_t token) {
    so_far.push_back(token);
    if (tok == nullptr) {
      std::printf("%s%d", printed.empty() ? "" : " ", token);
      printed = "x";
    } else {
      auto text = tok->Decode(so_far);
      if (!text.ok() || text->size() < prompt_text.size() + printed.size()) return;
      std::string full = text->substr(prompt_text.size());
      // Hold back an incomplete UTF-8 sequence (decoders emit U+FFFD until it completes).
      if (full.size() >= 3 && full.compare(full.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;
      if (full.compare(0, printed.size(), printed) == 0) {
        std::fputs(full.c_str() + printed.size(), stdout);
        printed = full;
      }
    }
    std::fflush(stdout);
  };
  engine::GenerateRequest request{prompt, static_cast<int32_t>(max_new), sampling};
  engine::GenerateStats stats;
  if (tok != nullptr) std::fputs(prompt_text.c_str(), stdout);
  KVSCOPE_ASSIGN_OR_RETURN(std::vector<engine::GenerateResult> results,
                           engine::Generate(*eng, {request}, gen, &stats));
  std::printf("\n");
  const int64_t generated = results[0].tokens.size();
  std::printf("[%s, tp=%lld: prompt %lld tokens in %.1f ms (%.1f tokens/s); generated %lld tokens, "
              "decode %.1f tokens/s]\n",
              model.name.c_str(), static_cast<long long>(f.tp),
              static_cast<long long>(stats.prefill_tokens), stats.prefill_seconds * 1e3,
              stats.prefill_tokens / std::max(stats.prefill_seconds, 1e-9),
              static_cast<long long>(generated),
              stats.decode_tokens / std::max(stats.decode_seconds, 1e-9));
  if (!f.logits_out.empty()) KVSCOPE_RETURN_IF_ERROR(WriteLogits(f.logits_out, prompt, results[0]));
  return absl::OkStatus();
}

}  // namespace

int RunGenerate(const std::vector<std::string>& args) {
  GenerateFlags f;
  FlagSet flags("kvscope generate",
                "--model DIR|preset:NAME (--prompt TEXT | --prompt-ids 1,2,3) [flags]",
                "Runs the model on one prompt with kvscope's engine (keeping every token in the\n"
                "KV cache) and prints the continuation and tokens/s. Greedy unless a\n"
                "temperature above 0 is given.");
  flags.String("model", &f.model, "model directory (config.json, safetensors) or preset:NAME");
  flags.Int("tp", &f.tp, "tensor-parallel size (ranks are threads on the CPU)");
  flags.String("prompt", &f.prompt, "prompt text (needs the model's tokenizer.json)");
  flags.String("prompt-ids", &f.prompt_ids, "prompt as comma-separated token ids");
  flags.Int("max-new-tokens", &f.max_new_tokens, "tokens to generate");
  flags.Double("temperature", &f.temperature, "sampling temperature; 0 = greedy");
  flags.Double("top-p", &f.top_p, "nucleus sampling mass in (0, 1]");
  flags.Int("top-k", &f.top_k, "sample among the k most likely tokens; 0 = all");
  flags.Int("seed", &f.seed, "sampling seed");
  flags.String("logits-out", &f.logits_out,
               "write prompt_ids, prefill_logits, tokens, step_logits as JSON to this file");
  flags.Int("weights-seed", &f.weights_seed, "seed of a preset's random weights");
  flags.Int("threads", &f.threads, "CPU threads over all ranks; 0 = every core");
  flags.Bool("ignore-eos", &f.ignore_eos, "keep generating after an end-of-sequence token");
  if (std::optional<int> code = flags.ParseOrExitCode(args, nullptr)) return *code;
  absl::Status status = Run(f);
  if (!status.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "kvscope generate: error: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace kvscope::cli
