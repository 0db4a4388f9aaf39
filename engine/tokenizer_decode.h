// File: engine/tokenizer_decode.h
//
// tokenizer.json "decoder" components: Sequence, Replace, ByteFallback, Fuse, Strip,
// Metaspace, ByteLevel. A decoder turns the token strings of an id sequence into text
// pieces that are concatenated. Internal to the tokenizer library.
#ifndef KVSCOPE_ENGINE_TOKENIZER_DECODE_H_
#define KVSCOPE_ENGINE_TOKENIZER_DECODE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer_json.h"

namespace kvscope::engine::tokenizer_internal {

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings in place (tokenizers' decode_chain). The strings are valid
  // UTF-8 on output.
  virtual absl::Status DecodeChain(std::vector<std::string>* tokens) const = 0;
};

// Parses a decoder object at `at`. JSON null gives nullptr (tokens are joined with " ").
absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const Json& j, const JsonPath& at,
                                                      int depth = 0);

}  // namespace kvscope::engine::tokenizer_internal

#endif  // KVSCOPE_ENGINE_TOKENIZER_DECODE_H_
