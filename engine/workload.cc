// File: engine/workload.cc
//
// Seeded request loads (see workload.h for the contract). All randomness goes through Rng
// below: std::mt19937_64 plus hand-written transforms, so the output does not depend on the
// standard library's distribution implementations.
#include "engine/workload.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {
namespace {

constexpr int64_t kMaxLength = std::numeric_limits<int32_t>::max();
constexpr double kMaxLengthParameter = 1e15;

// Independent random streams; the values are part of the output format (changing one changes
// every generated workload), so never renumber them.
enum class Stream : uint64_t {
  kArrivals = 1,
  kInputLengths = 2,
  kOutputLengths = 3,
  kTokens = 4,       // indexed by request id
  kPrefix = 5,       // indexed by prefix group
  kTraceBlocks = 6,  // indexed by hash id
  kThinkTimes = 7,
  kPrefixGroups = 8,
};

// splitmix64's output function applied to `x` (Steele, Lea, Flood 2014).
uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

uint64_t StreamSeed(uint64_t seed, Stream stream, uint64_t index = 0) {
  return SplitMix64(SplitMix64(SplitMix64(seed) ^ static_cast<uint64_t>(stream)) ^ index);
}

// A deterministic random source: mt19937_64 with kvscope's own transforms.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  // Uniform in [0, 1) from the top 53 bits.
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  // Uniform in (0, 1] (safe for log).
  double UniformPositive() { return 1.0 - Uniform(); }

  // Uniform integer in [0, n), n >= 1, without bias (Lemire's multiply-shift with rejection).
  uint64_t Below(uint64_t n) {
    unsigned __int128 m = static_cast<unsigned __int128>(engine_()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(engine_()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  // Exponential with mean 1, by inverse CDF.
  double Exponential() { return -std::log(UniformPositive()); }

  // Standard normal, Marsaglia's polar method (pairs; the second value is kept for the next
  // call).
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = 2.0 * Uniform() - 1.0;
      v = 2.0 * Uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double f = std::sqrt(-2.0 * std::log(s) / s);
    spare_ = v * f;
    has_spare_ = true;
    return u * f;
  }

  // Gamma(shape, scale 1), shape > 0: Marsaglia & Tsang (2000); shape < 1 uses
  // Gamma(shape + 1) * U^(1/shape).
  double Gamma(double shape) {
    if (shape < 1.0) {
      const double g = Gamma(shape + 1.0);
      return g * std::exp(std::log(UniformPositive()) / shape);
    }
    const double d = shape - 1.0 / 3.0;
    const double c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x, v;
      do {
        x = Normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      const double u = UniformPositive();
      const double x2 = x * x;
      if (u < 1.0 - 0.0331 * x2 * x2) return d * v;
      if (std::log(u) < 0.5 * x2 + d * (1.0 - v + std::log(v))) return d * v;
    }
  }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0;
};

const char* ArrivalName(ArrivalKind kind) {
  switch (kind) {
    case ArrivalKind::kAllAtOnce:
      return "all-at-once";
    case ArrivalKind::kPoisson:
      return "poisson";
    case ArrivalKind::kGamma:
      return "gamma";
    case ArrivalKind::kConstant:
      return "constant";
    case ArrivalKind::kClosedLoop:
      return "closed-loop";
    case ArrivalKind::kTrace:
      return "trace";
  }
  return "?";
}

absl::Status Invalid(absl::string_view field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("workload: ", field, " ", what));
}

absl::Status ValidateLength(const LengthSpec& s, const std::string& name) {
  if (!std::isfinite(s.mean)) {
    return Invalid(name + ".mean", absl::StrCat("must be finite, got ", s.mean));
  }
  if (!std::isfinite(s.spread) || s.spread < 0) {
    return Invalid(name + ".spread", absl::StrCat("must be finite and >= 0, got ", s.spread));
  }
  if (std::fabs(s.mean) + s.spread > kMaxLengthParameter) {
    return Invalid(name + ".mean", absl::StrCat("|mean| + spread must be <= 1e15, got mean ",
                                                s.mean, " spread ", s.spread));
  }
  if (s.dist == LengthDist::kLognormal && !(s.mean > 0)) {
    return Invalid(name + ".mean", absl::StrCat("must be > 0 for a lognormal, got ", s.mean));
  }
  if (s.min < 1) return Invalid(name + ".min", absl::StrCat("must be >= 1, got ", s.min));
  if (s.min > s.max) {
    return Invalid(name + ".min",
                   absl::StrCat("must be <= ", name, ".max, got ", s.min, " > ", s.max));
  }
  if (s.max > kMaxLength) {
    return Invalid(name + ".max", absl::StrCat("must be <= 2^31 - 1, got ", s.max));
  }
  return absl::OkStatus();
}

// Rounds `x` to the nearest integer and clips it to [min, max] (NaN -> min).
int64_t ClipLength(double x, const LengthSpec& s) {
  if (!(x >= static_cast<double>(s.min))) return s.min;
  if (x >= static_cast<double>(s.max)) return s.max;
  return std::clamp<int64_t>(std::llround(x), s.min, s.max);
}

int64_t DrawLength(const LengthSpec& s, Rng& rng) {
  switch (s.dist) {
    case LengthDist::kFixed:
      return ClipLength(s.mean, s);
    case LengthDist::kUniform: {
      const int64_t lo = std::llround(s.mean - s.spread);
      const int64_t hi = std::llround(s.mean + s.spread);
      const int64_t v = lo + static_cast<int64_t>(rng.Below(static_cast<uint64_t>(hi - lo) + 1));
      return std::clamp(v, s.min, s.max);
    }
    case LengthDist::kNormal:
      return ClipLength(s.mean + s.spread * rng.Normal(), s);
    case LengthDist::kLognormal: {
      const double mu = std::log(s.mean) - 0.5 * s.spread * s.spread;
      return ClipLength(std::exp(mu + s.spread * rng.Normal()), s);
    }
  }
  return s.min;
}

// Arrival times for the synthetic processes, one Next() per request (or conversation).
class ArrivalProcess {
 public:
  explicit ArrivalProcess(const WorkloadSpec& spec)
      : spec_(spec), rng_(StreamSeed(spec.seed, Stream::kArrivals)) {}

  double Next() {
    const int64_t i = index_++;
    switch (spec_.arrival) {
      case ArrivalKind::kAllAtOnce:
      case ArrivalKind::kClosedLoop:
      case ArrivalKind::kTrace:  // replaced by the trace's timestamps
        return 0.0;
      case ArrivalKind::kConstant:
        return static_cast<double>(i) / spec_.request_rate;
      case ArrivalKind::kPoisson:
        if (i > 0) last_ += rng_.Exponential() / spec_.request_rate;
        return last_;
      case ArrivalKind::kGamma:
        if (i > 0) {
          last_ += rng_.Gamma(spec_.burstiness) / (spec_.request_rate * spec_.burstiness);
        }
        return last_;
    }
    return 0.0;
  }

 private:
  const WorkloadSpec& spec_;
  Rng rng_;
  int64_t index_ = 0;
  double last_ = 0;
};

void AppendRandomTokens(Rng& rng, int64_t n, const WorkloadSpec& spec, std::vector<int32_t>* out) {
  const uint64_t range = static_cast<uint64_t>(spec.vocab_size - spec.first_token_id);
  out->reserve(out->size() + static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    out->push_back(
        static_cast<int32_t>(spec.first_token_id + static_cast<int64_t>(rng.Below(range))));
  }
}

Rng RequestTokenRng(const WorkloadSpec& spec, int64_t request_id) {
  return Rng(StreamSeed(spec.seed, Stream::kTokens, static_cast<uint64_t>(request_id)));
}

// Clips a prompt/output pair to max_model_len (no-op when it is 0).
void FitToModel(int64_t max_model_len, int64_t* input, int64_t* output) {
  if (max_model_len <= 0) return;
  *input = std::min(*input, max_model_len - 1);
  *output = std::min(*output, max_model_len - *input);
}

absl::StatusOr<std::string> ReadWholeFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("workload: cannot open ", what, " ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::NotFoundError(absl::StrCat("workload: cannot read ", what, " ", path));
  return ss.str();
}

// Draws the single-turn lengths (input from its stream, output from its own) and arrivals.
struct Draws {
  std::vector<double> arrivals;
  std::vector<int64_t> inputs;
  std::vector<int64_t> outputs;
};
Draws DrawSingleTurn(const WorkloadSpec& spec, int64_t n) {
  Draws d;
  ArrivalProcess arrivals(spec);
  Rng in_rng(StreamSeed(spec.seed, Stream::kInputLengths));
  Rng out_rng(StreamSeed(spec.seed, Stream::kOutputLengths));
  for (int64_t i = 0; i < n; ++i) {
    d.arrivals.push_back(arrivals.Next());
    d.inputs.push_back(DrawLength(spec.input_len, in_rng));
    d.outputs.push_back(DrawLength(spec.output_len, out_rng));
  }
  return d;
}

std::vector<RequestSpec> BuildRandom(const WorkloadSpec& spec) {
  const Draws d = DrawSingleTurn(spec, spec.num_requests);
  std::vector<RequestSpec> out(static_cast<size_t>(spec.num_requests));
  for (int64_t i = 0; i < spec.num_requests; ++i) {
    RequestSpec& r = out[i];
    int64_t input = d.inputs[i], output = d.outputs[i];
    FitToModel(spec.max_model_len, &input, &output);
    r.id = i;
    r.arrival_s = d.arrivals[i];
    Rng rng = RequestTokenRng(spec, i);
    AppendRandomTokens(rng, input, spec, &r.prompt);
    r.output_len = static_cast<int32_t>(output);
  }
  return out;
}

absl::StatusOr<std::vector<RequestSpec>> BuildText(const WorkloadSpec& spec,
                                                   const Tokenizer* tokenizer) {
  if (tokenizer == nullptr) {
    return absl::FailedPreconditionError("workload: the text source needs a tokenizer");
  }
  KVSCOPE_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(spec.text_path, "text file"));
  absl::StatusOr<std::vector<int32_t>> encoded = tokenizer->Encode(text, false);
  if (!encoded.ok()) {
    return absl::Status(encoded.status().code(),
                        absl::StrCat(spec.text_path, ": ", encoded.status().message()));
  }
  const std::vector<int32_t>& tokens = *encoded;
  if (tokens.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("workload: text file ", spec.text_path, " has no tokens"));
  }
  const std::optional<int32_t> bos = tokenizer->bos_id();
  const Draws d = DrawSingleTurn(spec, spec.num_requests);
  std::vector<RequestSpec> out(static_cast<size_t>(spec.num_requests));
  size_t cursor = 0;
  for (int64_t i = 0; i < spec.num_requests; ++i) {
    RequestSpec& r = out[i];
    int64_t input = d.inputs[i], output = d.outputs[i];
    FitToModel(spec.max_model_len, &input, &output);
    r.id = i;
    r.arrival_s = d.arrivals[i];
    r.prompt.reserve(static_cast<size_t>(input));
    int64_t window = input;
    if (bos.has_value()) {
      r.prompt.push_back(*bos);
      --window;
    }
    for (int64_t k = 0; k < window; ++k) {
      r.prompt.push_back(tokens[cursor]);
      if (++cursor == tokens.size()) cursor = 0;
    }
    r.output_len = static_cast<int32_t>(output);
  }
  return out;
}

std::vector<RequestSpec> BuildSharedPrefix(const WorkloadSpec& spec) {
  std::vector<std::vector<int32_t>> prefixes(static_cast<size_t>(spec.num_prefix_groups));
  for (int32_t g = 0; g < spec.num_prefix_groups; ++g) {
    Rng rng(StreamSeed(spec.seed, Stream::kPrefix, static_cast<uint64_t>(g)));
    AppendRandomTokens(rng, spec.shared_prefix_len, spec, &prefixes[g]);
  }
  Rng group_rng(StreamSeed(spec.seed, Stream::kPrefixGroups));
  const Draws d = DrawSingleTurn(spec, spec.num_requests);
  std::vector<RequestSpec> out(static_cast<size_t>(spec.num_requests));
  for (int64_t i = 0; i < spec.num_requests; ++i) {
    RequestSpec& r = out[i];
    const int32_t group =
        spec.random_prefix_group
            ? static_cast<int32_t>(group_rng.Below(static_cast<uint64_t>(spec.num_prefix_groups)))
            : static_cast<int32_t>(i % spec.num_prefix_groups);
    // The prefix always fits (ValidateWorkloadSpec): only the suffix and output shrink.
    int64_t suffix = d.inputs[i], output = d.outputs[i];
    if (spec.max_model_len > 0) {
      suffix = std::min(suffix, spec.max_model_len - 1 - spec.shared_prefix_len);
      output = std::min(output, spec.max_model_len - spec.shared_prefix_len - suffix);
    }
    r.id = i;
    r.arrival_s = d.arrivals[i];
    r.prefix_group = group;
    r.prompt = prefixes[group];
    Rng rng = RequestTokenRng(spec, i);
    AppendRandomTokens(rng, suffix, spec, &r.prompt);
    r.output_len = static_cast<int32_t>(output);
  }
  return out;
}

std::vector<RequestSpec> BuildMultiTurn(const WorkloadSpec& spec) {
  ArrivalProcess arrivals(spec);
  Rng in_rng(StreamSeed(spec.seed, Stream::kInputLengths));
  Rng out_rng(StreamSeed(spec.seed, Stream::kOutputLengths));
  Rng think_rng(StreamSeed(spec.seed, Stream::kThinkTimes));
  std::vector<RequestSpec> out(static_cast<size_t>(spec.num_requests));
  int64_t conversation = -1;
  int32_t turn = 0;
  int64_t context = 0;  // prompt + output tokens of the conversation so far
  for (int64_t i = 0; i < spec.num_requests; ++i) {
    RequestSpec& r = out[i];
    // Every draw happens for every request so that each stream stays aligned with request ids.
    int64_t input = DrawLength(spec.input_len, in_rng);
    int64_t output = DrawLength(spec.output_len, out_rng);
    const double think =
        spec.think_time_fixed ? spec.think_time_s : spec.think_time_s * think_rng.Exponential();
    const bool full = spec.max_model_len > 0 && context + 2 > spec.max_model_len;
    if (conversation < 0 || turn + 1 >= spec.turns || full) {
      ++conversation;
      turn = 0;
      context = 0;
      r.arrival_s = arrivals.Next();
      r.think_time_s = 0;
    } else {
      ++turn;
      r.arrival_s = 0;
      r.think_time_s = think;
    }
    if (spec.max_model_len > 0) {
      input = std::min(input, spec.max_model_len - 1 - context);
      output = std::min(output, spec.max_model_len - context - input);
    }
    context += input + output;
    r.id = i;
    r.conversation_id = conversation;
    r.turn = turn;
    Rng rng = RequestTokenRng(spec, i);
    AppendRandomTokens(rng, input, spec, &r.prompt);
    r.output_len = static_cast<int32_t>(output);
  }
  return out;
}

// --- Traces ------------------------------------------------------------------------------

std::string Where(const std::string& source, int64_t line_number) {
  return absl::StrCat(source, ":", line_number, ": ");
}

// Reads an integer field that must be >= `min` and <= `max`.
absl::StatusOr<int64_t> GetInteger(const nlohmann::json& value, absl::string_view name, int64_t min,
                                   int64_t max, const std::string& where) {
  if (!value.is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"", name, "\" must be an integer, got ", value.type_name()));
  }
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(max)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"", name, "\" must be <= ", max, ", got ", u));
    }
    if (static_cast<int64_t>(u) < min) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"", name, "\" must be >= ", min, ", got ", u));
    }
    return static_cast<int64_t>(u);
  }
  // nlohmann stores non-negative integers as unsigned, so this is a negative one.
  const int64_t v = value.get<int64_t>();
  if (v < min) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"", name, "\" must be >= ", min, ", got ", v));
  }
  if (v > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"", name, "\" must be <= ", max, ", got ", v));
  }
  return v;
}

absl::StatusOr<TraceEntry> ParseTraceObject(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "expected a JSON object, got ", j.type_name()));
  }
  TraceEntry e;
  constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

  const auto ts = j.find("timestamp");
  if (ts == j.end()) return absl::InvalidArgumentError(where + "missing \"timestamp\"");
  if (!ts->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"timestamp\" must be a number, got ", ts->type_name()));
  }
  e.timestamp_ms = ts->get<double>();
  if (!std::isfinite(e.timestamp_ms) || e.timestamp_ms < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "\"timestamp\" must be >= 0, got ", e.timestamp_ms));
  }

  const auto out = j.find("output_length");
  if (out == j.end()) return absl::InvalidArgumentError(where + "missing \"output_length\"");
  KVSCOPE_ASSIGN_OR_RETURN(const int64_t output_length,
                           GetInteger(*out, "output_length", 1, kMaxLength, where));
  e.output_length = static_cast<int32_t>(output_length);

  const auto in = j.find("input_length");
  const auto prompt = j.find("prompt");
  const auto ids = j.find("prompt_ids");
  if (in == j.end() && prompt == j.end() && ids == j.end()) {
    return absl::InvalidArgumentError(
        where + "missing the input: one of \"input_length\", \"prompt\", \"prompt_ids\"");
  }
  if (in != j.end()) {
    KVSCOPE_ASSIGN_OR_RETURN(e.input_length, GetInteger(*in, "input_length", 1, kMaxLength, where));
  }
  if (prompt != j.end()) {
    if (!prompt->is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"prompt\" must be a string, got ", prompt->type_name()));
    }
    e.prompt = prompt->get<std::string>();
    if (e.prompt.empty()) return absl::InvalidArgumentError(where + "\"prompt\" is empty");
  }
  if (ids != j.end()) {
    if (!ids->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"prompt_ids\" must be a list, got ", ids->type_name()));
    }
    if (ids->empty()) return absl::InvalidArgumentError(where + "\"prompt_ids\" is empty");
    e.prompt_ids.reserve(ids->size());
    for (size_t k = 0; k < ids->size(); ++k) {
      KVSCOPE_ASSIGN_OR_RETURN(const int64_t id,
                               GetInteger((*ids)[k], absl::StrCat("prompt_ids[", k, "]"), 0,
                                          std::numeric_limits<int32_t>::max(), where));
      e.prompt_ids.push_back(static_cast<int32_t>(id));
    }
  }

  const auto hashes = j.find("hash_ids");
  if (hashes != j.end()) {
    if (!hashes->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "\"hash_ids\" must be a list, got ", hashes->type_name()));
    }
    e.hash_ids.reserve(hashes->size());
    for (size_t k = 0; k < hashes->size(); ++k) {
      KVSCOPE_ASSIGN_OR_RETURN(
          const int64_t h,
          GetInteger((*hashes)[k], absl::StrCat("hash_ids[", k, "]"), 0, kInt64Max, where));
      e.hash_ids.push_back(h);
    }
  }

  const auto conv = j.find("conversation_id");
  if (conv != j.end()) {
    KVSCOPE_ASSIGN_OR_RETURN(e.conversation_id,
                             GetInteger(*conv, "conversation_id", 0, kInt64Max, where));
  }
  return e;
}

// The prompt of a trace entry given by input_length (+ hash_ids): the hash blocks, truncated
// to `length`, then random tokens from the request's own stream.
std::vector<int32_t> HashPrompt(const WorkloadSpec& spec, const TraceEntry& e, int64_t length,
                                int64_t request_id) {
  std::vector<int32_t> prompt;
  prompt.reserve(static_cast<size_t>(length));
  for (const int64_t h : e.hash_ids) {
    const int64_t remaining = length - static_cast<int64_t>(prompt.size());
    if (remaining <= 0) break;
    Rng rng(StreamSeed(spec.seed, Stream::kTraceBlocks, static_cast<uint64_t>(h)));
    AppendRandomTokens(rng, std::min<int64_t>(remaining, spec.trace_block_tokens), spec, &prompt);
  }
  const int64_t pad = length - static_cast<int64_t>(prompt.size());
  if (pad > 0) {
    Rng rng = RequestTokenRng(spec, request_id);
    AppendRandomTokens(rng, pad, spec, &prompt);
  }
  return prompt;
}

absl::StatusOr<std::vector<RequestSpec>> BuildTrace(const WorkloadSpec& spec,
                                                    const Tokenizer* tokenizer) {
  const std::string& path = spec.trace_path;
  KVSCOPE_ASSIGN_OR_RETURN(const std::string text, ReadWholeFile(path, "trace file"));

  struct Line {
    int64_t number;
    TraceEntry entry;
  };
  std::vector<Line> lines;
  int64_t number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    KVSCOPE_ASSIGN_OR_RETURN(TraceEntry entry, ParseTraceLine(line, path, number));
    if (!lines.empty() && entry.timestamp_ms < lines.back().entry.timestamp_ms) {
      return absl::InvalidArgumentError(
          absl::StrCat(Where(path, number), "\"timestamp\" ", entry.timestamp_ms,
                       " ms is before the previous line's ", lines.back().entry.timestamp_ms,
                       " ms (timestamps must be non-decreasing)"));
    }
    lines.push_back(Line{number, std::move(entry)});
  }
  if (lines.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": the trace has no requests"));
  }

  const int64_t n = std::min<int64_t>(spec.num_requests, static_cast<int64_t>(lines.size()));
  ArrivalProcess arrivals(spec);
  const double t0 = lines.front().entry.timestamp_ms;
  std::vector<RequestSpec> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const TraceEntry& e = lines[i].entry;
    const std::string where = Where(path, lines[i].number);
    RequestSpec& r = out[i];
    r.id = i;
    r.conversation_id = e.conversation_id;
    r.arrival_s = spec.arrival == ArrivalKind::kTrace
                      ? (e.timestamp_ms - t0) / 1000.0 * spec.trace_time_scale
                      : arrivals.Next();
    if (!e.prompt_ids.empty()) {
      for (size_t k = 0; k < e.prompt_ids.size(); ++k) {
        if (e.prompt_ids[k] >= spec.vocab_size) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, "\"prompt_ids[", k, "]\" = ", e.prompt_ids[k],
                           " is outside the vocabulary (vocab_size ", spec.vocab_size, ")"));
        }
      }
      r.prompt = e.prompt_ids;
    } else if (!e.prompt.empty()) {
      if (tokenizer == nullptr) {
        return absl::FailedPreconditionError(where + "a trace with prompt text needs a tokenizer");
      }
      absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(e.prompt, true);
      if (!ids.ok()) {
        return absl::Status(ids.status().code(), absl::StrCat(where, ids.status().message()));
      }
      if (ids->empty()) {
        return absl::InvalidArgumentError(where + "\"prompt\" encodes to no tokens");
      }
      r.prompt = *std::move(ids);
    } else {
      r.prompt = HashPrompt(spec, e, e.input_length, i);
    }
    int64_t input = static_cast<int64_t>(r.prompt.size());
    int64_t output = e.output_length;
    FitToModel(spec.max_model_len, &input, &output);
    r.prompt.resize(static_cast<size_t>(input));
    r.output_len = static_cast<int32_t>(output);
  }
  return out;
}

}  // namespace

absl::Status ValidateWorkloadSpec(const WorkloadSpec& spec) {
  if (spec.num_requests < 1) {
    return Invalid("num_requests", absl::StrCat("must be >= 1, got ", spec.num_requests));
  }
  const bool rated = spec.arrival == ArrivalKind::kPoisson || spec.arrival == ArrivalKind::kGamma ||
                     spec.arrival == ArrivalKind::kConstant;
  if (rated && !(std::isfinite(spec.request_rate) && spec.request_rate > 0)) {
    return Invalid("request_rate",
                   absl::StrCat("must be a finite number > 0 for ", ArrivalName(spec.arrival),
                                " arrivals, got ", spec.request_rate));
  }
  if (!(std::isfinite(spec.burstiness) && spec.burstiness > 0)) {
    return Invalid("burstiness",
                   absl::StrCat("must be a finite number > 0, got ", spec.burstiness));
  }
  if (spec.arrival == ArrivalKind::kClosedLoop && spec.concurrency < 1) {
    return Invalid("concurrency",
                   absl::StrCat("must be >= 1 for closed-loop arrivals, got ", spec.concurrency));
  }
  if (spec.arrival == ArrivalKind::kTrace && spec.source != SourceKind::kTrace) {
    return Invalid("arrival", "trace arrivals need the trace source");
  }
  KVSCOPE_RETURN_IF_ERROR(ValidateLength(spec.input_len, "input_len"));
  KVSCOPE_RETURN_IF_ERROR(ValidateLength(spec.output_len, "output_len"));
  if (spec.first_token_id < 0) {
    return Invalid("first_token_id", absl::StrCat("must be >= 0, got ", spec.first_token_id));
  }
  if (spec.vocab_size <= spec.first_token_id) {
    return Invalid("vocab_size", absl::StrCat("must be > first_token_id (", spec.first_token_id,
                                              "), got ", spec.vocab_size));
  }
  if (spec.vocab_size > int64_t{1} << 31) {
    return Invalid("vocab_size", absl::StrCat("must be <= 2^31, got ", spec.vocab_size));
  }
  if (spec.max_model_len < 0 || spec.max_model_len == 1) {
    return Invalid("max_model_len",
                   absl::StrCat("must be 0 (off) or >= 2, got ", spec.max_model_len));
  }
  switch (spec.source) {
    case SourceKind::kRandom:
      break;
    case SourceKind::kText:
      if (spec.text_path.empty()) return Invalid("text_path", "is required for the text source");
      break;
    case SourceKind::kTrace:
      if (spec.trace_path.empty()) {
        return Invalid("trace_path", "is required for the trace source");
      }
      if (spec.trace_block_tokens < 1) {
        return Invalid("trace_block_tokens",
                       absl::StrCat("must be >= 1, got ", spec.trace_block_tokens));
      }
      if (!(std::isfinite(spec.trace_time_scale) && spec.trace_time_scale > 0)) {
        return Invalid("trace_time_scale",
                       absl::StrCat("must be a finite number > 0, got ", spec.trace_time_scale));
      }
      break;
    case SourceKind::kSharedPrefix:
      if (spec.num_prefix_groups < 1) {
        return Invalid("num_prefix_groups",
                       absl::StrCat("must be >= 1, got ", spec.num_prefix_groups));
      }
      if (spec.shared_prefix_len < 1 || spec.shared_prefix_len > kMaxLength) {
        return Invalid("shared_prefix_len",
                       absl::StrCat("must be in [1, 2^31 - 1], got ", spec.shared_prefix_len));
      }
      if (spec.max_model_len > 0 && spec.shared_prefix_len > spec.max_model_len - 2) {
        return Invalid("shared_prefix_len",
                       absl::StrCat("must be <= max_model_len - 2 (", spec.max_model_len - 2,
                                    ") to leave room for a suffix and an output, got ",
                                    spec.shared_prefix_len));
      }
      break;
    case SourceKind::kMultiTurn:
      if (spec.turns < 1) return Invalid("turns", absl::StrCat("must be >= 1, got ", spec.turns));
      if (!(std::isfinite(spec.think_time_s) && spec.think_time_s >= 0)) {
        return Invalid("think_time_s",
                       absl::StrCat("must be a finite number >= 0, got ", spec.think_time_s));
      }
      break;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadSpec& spec,
                                                       const Tokenizer* tokenizer) {
  KVSCOPE_RETURN_IF_ERROR(ValidateWorkloadSpec(spec));
  switch (spec.source) {
    case SourceKind::kRandom:
      return BuildRandom(spec);
    case SourceKind::kText:
      return BuildText(spec, tokenizer);
    case SourceKind::kTrace:
      return BuildTrace(spec, tokenizer);
    case SourceKind::kSharedPrefix:
      return BuildSharedPrefix(spec);
    case SourceKind::kMultiTurn:
      return BuildMultiTurn(spec);
  }
  return absl::InternalError("workload: unknown source kind");
}

absl::StatusOr<TraceEntry> ParseTraceLine(const std::string& line, const std::string& source,
                                          int64_t line_number) {
  const std::string where = Where(source, line_number);
  try {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      return absl::InvalidArgumentError(absl::StrCat(where, "malformed JSON: ", e.what()));
    }
    return ParseTraceObject(j, where);
  } catch (const nlohmann::json::exception& e) {
    // Type checks above should make this unreachable; keep exceptions inside the library.
    return absl::InvalidArgumentError(absl::StrCat(where, e.what()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(where, e.what()));
  }
}

}  // namespace kvscope::engine
