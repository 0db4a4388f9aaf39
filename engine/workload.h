// File: engine/workload.h
//
// Seeded, reproducible request loads for `kvscope bench`: the same WorkloadSpec (seed
// included) gives the same requests byte for byte on every machine. A workload is plain data
// (a list of RequestSpec); the serving loop replays it.
//
// Arrivals: all at t=0 (offline throughput), Poisson or gamma (with `burstiness`, as vLLM's
// benchmark: inter-arrival ~ Gamma(shape=burstiness, scale=1/(rate*burstiness))), constant
// rate, closed loop at a fixed concurrency (arrival times are decided at run time: a new
// request starts when one finishes), or the timestamps of a trace.
// Lengths: fixed, uniform, normal, lognormal (parametrized by its mean and sigma of the
// underlying normal), each clipped to [min, max]; or taken from a dataset (trace/text).
// Sources: random token ids; a text file cut into prompts through the tokenizer; JSONL traces;
// shared-prefix groups; multi-turn conversations whose turns carry the earlier turns.
//
// Determinism: every random draw comes from std::mt19937_64 (its output is fixed by the C++
// standard) through kvscope's own transforms (53-bit uniforms, inverse-CDF exponential,
// Marsaglia polar normal, Marsaglia-Tsang gamma); std::*_distribution is never used. Each
// concern has its own stream, seeded from `seed` through splitmix64: arrivals, input lengths,
// output lengths, think times, prefix-group picks, and one token stream per request (and one
// per shared prefix / trace hash id), so changing one parameter does not shift the others.
// The only platform dependence left is libm's log/exp/sqrt (glibc gives the same results on
// x86-64 and aarch64; the build uses -std=c++20, which keeps GCC from contracting into FMA).
//
// Request order and ids: requests are returned with ids 0..n-1; single-turn sources in
// arrival order, multi-turn ones conversation by conversation, turn by turn.
// Arrival processes start at t = 0 (the first request), as vLLM's benchmark: Poisson and
// gamma then add independent inter-arrival gaps; constant gives exactly i / rate.
// Lengths are drawn as doubles, rounded to the nearest integer and clipped to [min, max]
// (uniform draws an integer uniformly from [round(mean - spread), round(mean + spread)]).
// With max_model_len > 0 a prompt is truncated to max_model_len - 1 tokens and the output to
// max_model_len - prompt tokens (multi-turn: the whole conversation so far counts, and a
// conversation with no room for one more turn ends early; the next request starts a new one).
#ifndef KVSCOPE_ENGINE_WORKLOAD_H_
#define KVSCOPE_ENGINE_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace kvscope::engine {

enum class ArrivalKind { kAllAtOnce, kPoisson, kGamma, kConstant, kClosedLoop, kTrace };
enum class LengthDist { kFixed, kUniform, kNormal, kLognormal };
enum class SourceKind { kRandom, kText, kTrace, kSharedPrefix, kMultiTurn };

struct LengthSpec {
  LengthDist dist = LengthDist::kFixed;
  double mean = 128;   // fixed: the length; uniform: midpoint; normal/lognormal: the mean length
  double spread = 0;   // uniform: half-width; normal: stddev; lognormal: sigma of log-length
  int64_t min = 1;     // clip bounds (inclusive)
  int64_t max = 1 << 20;
};

struct WorkloadSpec {
  uint64_t seed = 0;
  int64_t num_requests = 100;
  ArrivalKind arrival = ArrivalKind::kAllAtOnce;
  double request_rate = 0;   // requests/s for poisson, gamma, constant
  double burstiness = 1.0;   // gamma shape; 1 = Poisson
  int32_t concurrency = 0;   // closed loop: requests in flight
  LengthSpec input_len;
  LengthSpec output_len;
  bool ignore_eos = true;    // outputs have exactly their requested length
  SourceKind source = SourceKind::kRandom;
  std::string text_path;     // kText: plain text, cut into prompts of the drawn input lengths
  std::string trace_path;    // kTrace: JSONL, see ParseTraceLine
  int32_t trace_block_tokens = 512;  // tokens per trace hash id (mooncake traces use 512)
  double trace_time_scale = 1.0;     // multiplies trace timestamps (e.g. 0.5 = twice as fast)
  int32_t num_prefix_groups = 4;     // kSharedPrefix: groups sharing one prefix each
  int64_t shared_prefix_len = 256;   // kSharedPrefix: tokens of the shared prefix
  bool random_prefix_group = false;  // kSharedPrefix: false = request i uses group
                                     // i % num_prefix_groups; true = a uniform draw
  int32_t turns = 3;                 // kMultiTurn: turns per conversation
  double think_time_s = 1.0;         // kMultiTurn: mean user think time between turns (s)
  bool think_time_fixed = false;     // kMultiTurn: true = every think time is exactly
                                     // think_time_s; false = exponential with that mean
  int64_t vocab_size = 32000;        // token ids are drawn from [first_token_id, vocab_size)
  int32_t first_token_id = 3;        // skip BOS/EOS/pad-like low ids
  int64_t max_model_len = 0;         // > 0: prompt + output is clipped to fit
};

struct RequestSpec {
  int64_t id = 0;
  // Seconds after the start. For closed-loop arrivals and for turns after the first of a
  // conversation this is 0 and the serving loop decides (see below).
  double arrival_s = 0;
  // Single-turn: the whole prompt. Multi-turn turn k > 0: only the new user tokens; the
  // serving loop prepends the conversation so far (earlier prompts and generated outputs).
  std::vector<int32_t> prompt;
  int32_t output_len = 0;
  int64_t conversation_id = -1;  // >= 0 for multi-turn (and traces that give one)
  int32_t turn = 0;
  double think_time_s = 0;       // turn k > 0 arrives this long after turn k-1 finishes
  int32_t prefix_group = -1;     // kSharedPrefix: which group's prefix the prompt starts with
};

// InvalidArgument naming the field for: num_requests < 1, rate <= 0 (or not finite) for
// poisson/gamma/constant, burstiness <= 0 (or not finite), concurrency < 1 for closed loop,
// trace arrivals without the trace source, lengths with min < 1 or min > max or
// max > 2^31 - 1 or negative / non-finite spread or non-finite mean (lognormal: mean <= 0;
// |mean| + spread > 1e15), a missing (empty) text/trace path, trace_block_tokens < 1 or
// trace_time_scale <= 0 for traces, num_prefix_groups < 1 or shared_prefix_len < 1 (or no
// room for it below max_model_len) for shared prefixes, turns < 1 or think_time_s < 0 for
// multi-turn, first_token_id < 0, vocab_size <= first_token_id or > 2^31, max_model_len < 0
// or == 1. Source-specific fields are only checked for their source.
absl::Status ValidateWorkloadSpec(const WorkloadSpec& spec);

// Builds the requests (validating `spec` first). `tokenizer` is needed for kText and for
// traces with prompt text (FailedPrecondition without one). Unreadable files are NotFound.
// Trace errors name the file and line number ("FILE:LINE: ...").
//
// Per source:
//   kRandom        prompt = input-length random ids in [first_token_id, vocab_size).
//   kText          the file is encoded once without special tokens; request i takes the next
//                  consecutive window (starting at token 0, wrapping around at the end). If
//                  the tokenizer has a BOS, the prompt is BOS + (input length - 1) text
//                  tokens, so prompt lengths follow the input-length distribution exactly.
//   kTrace         the first min(num_requests, lines) entries; input and output lengths come
//                  from the trace (input_len / output_len are unused). Prompt: prompt_ids if
//                  given, else the prompt text encoded with special tokens, else input_length
//                  tokens made of the hash_ids blocks (truncated to input_length, padded with
//                  random tokens past the blocks). Each hash id's block is drawn from its own
//                  stream seeded by (seed, hash id). prompt_ids must be < vocab_size.
//                  Arrivals: with ArrivalKind::kTrace, (timestamp - first timestamp) / 1000 *
//                  trace_time_scale; any other arrival kind replaces the trace timestamps.
//                  The whole file is parsed (and must be valid) even past num_requests.
//   kSharedPrefix  num_prefix_groups prefixes of shared_prefix_len random tokens; the prompt is
//                  the group's prefix + input-length random tokens (so its length is
//                  shared_prefix_len + the drawn input length); prefix_group is set.
//   kMultiTurn     num_requests requests as conversations of `turns` turns (the last one may
//                  be shorter). Turn 0: arrival from the arrival process (one draw per
//                  conversation) and an input-length random prompt. Turn k > 0: arrival_s = 0,
//                  prompt = only the new user tokens (input-length random tokens), and
//                  think_time_s (see think_time_fixed).
absl::StatusOr<std::vector<RequestSpec>> BuildWorkload(const WorkloadSpec& spec,
                                                       const Tokenizer* tokenizer);

// One JSONL trace line (mooncake-style), fields:
//   "timestamp"  arrival in milliseconds (required, number >= 0, non-decreasing over the
//                file: BuildWorkload checks that)
//   "input_length" | "prompt" (text) | "prompt_ids" (list)   at least one (required); integers
//                >= 1 / a non-empty string / a non-empty list of integers >= 0. When several
//                are given, prompt_ids wins over prompt, which wins over input_length.
//   "output_length"   (required, integer >= 1, < 2^31)
//   "hash_ids"        optional list of integers >= 0: each id stands for `trace_block_tokens`
//                     tokens; equal ids give equal token blocks (shared prefixes), drawn
//                     from the seed
//   "conversation_id" optional integer >= 0
// Other fields are ignored. Integers must be JSON integers (12.0 is a wrong type). Errors are
// InvalidArgument "SOURCE:LINE_NUMBER: ..." for malformed JSON, a non-object line, a missing
// field, a wrong type or a negative / out-of-range value. No exception escapes.
struct TraceEntry {
  double timestamp_ms = 0;
  int64_t input_length = 0;
  std::string prompt;
  std::vector<int32_t> prompt_ids;
  int32_t output_length = 0;
  std::vector<int64_t> hash_ids;
  int64_t conversation_id = -1;
};
absl::StatusOr<TraceEntry> ParseTraceLine(const std::string& line, const std::string& source,
                                          int64_t line_number);

}  // namespace kvscope::engine

#endif  // KVSCOPE_ENGINE_WORKLOAD_H_
