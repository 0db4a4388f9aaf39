// File: engine/tokenizer.cc
//
// The tokenizer pipeline (Hugging Face tokenizers' order): added tokens are cut out of the
// raw text, the rest is normalized, normalized added tokens are cut out, the remainder is
// pre-tokenized into pieces, and the BPE model encodes each piece; the post-processor (or
// tokenizer_config.json's add_bos_token / add_eos_token) frames the result. Decoding maps
// ids to token strings, runs the decoder chain, and applies transformers' optional
// clean-up.
#include "engine/tokenizer.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "engine/tokenizer_added.h"
#include "engine/tokenizer_bpe.h"
#include "engine/tokenizer_config.h"
#include "engine/tokenizer_decode.h"
#include "engine/tokenizer_json.h"
#include "engine/tokenizer_normalize.h"
#include "engine/tokenizer_post.h"
#include "engine/tokenizer_pretokenize.h"
#include "engine/tokenizer_unicode.h"

namespace kvscope::engine {

using tokenizer_internal::AddedToken;
using tokenizer_internal::AddedTokenMatcher;
using tokenizer_internal::BpeModel;
using tokenizer_internal::Decoder;
using tokenizer_internal::Json;
using tokenizer_internal::JsonPath;
using tokenizer_internal::Normalizer;
using tokenizer_internal::Piece;
using tokenizer_internal::PreTokenizer;
using tokenizer_internal::TokenizerConfig;

struct Tokenizer::Impl {
  std::vector<std::unique_ptr<AddedToken>> added;               // owned, stable addresses
  absl::flat_hash_map<int32_t, const AddedToken*> added_by_id;  // id -> added token
  absl::flat_hash_map<std::string, int32_t> added_by_content;   // content -> id
  absl::flat_hash_set<std::string> special_contents;            // contents of special ones
  AddedTokenMatcher raw_matcher;                // added tokens with normalized = false
  AddedTokenMatcher normalized_matcher;         // added tokens with normalized = true
  std::unique_ptr<Normalizer> normalizer;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // may be null
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Decoder> decoder;             // may be null: tokens joined with " "
  tokenizer_internal::SpecialTokenFrame frame;  // add_special_tokens framing
  bool clean_up_spaces = false;                 // transformers' clean_up_tokenization
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
  int32_t vocab_size = 0;  // max id + 1

  std::optional<int32_t> TokenToId(std::string_view token) const {
    auto it = added_by_content.find(tokenizer_internal::Sv(token));
    if (it != added_by_content.end()) return it->second;
    return model->TokenToId(token);
  }
  const std::string* IdToToken(int32_t id) const {
    auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &it->second->content;
    return model->IdToToken(id);
  }
  absl::Status EncodeNormalized(std::string text, bool at_start, std::vector<int32_t>* ids) const;
};

namespace {

// True when some component object below `j` has "type": `type`.
bool UsesComponent(const Json& j, std::string_view type, int depth = 0) {
  if (depth > tokenizer_internal::kMaxComponentDepth + 2) return false;
  if (j.is_object()) {
    const Json* t = tokenizer_internal::FindField(j, "type");
    if (t != nullptr && t->is_string() && t->get_ref<const std::string&>() == type) return true;
  }
  if (j.is_object() || j.is_array()) {
    for (const Json& child : j) {
      if (UsesComponent(child, type, depth + 1)) return true;
    }
  }
  return false;
}

// transformers 5 does not run a LlamaTokenizer's tokenizer.json pipeline as written: its
// LlamaTokenizer class keeps only vocab, merges and added tokens and rebuilds the rest
// (BPE without unk_token and with byte_fallback/fuse_unk; no normalizer; a Metaspace
// pre-tokenizer with split = false whose prepend scheme is "first" unless
// tokenizer_config.json says legacy = true ("always"), or "never" when add_prefix_space is
// false; and a Replace/ByteFallback/Fuse/Strip decoder). The visible differences from
// the file's Prepend + Replace normalizer are that text already starting with a space gets
// no extra "▁" (the reference's "  two  spaces" has two leading ▁, not three), text after
// an added token gets none either, and characters with neither a vocabulary entry nor
// <0xNN> tokens are dropped instead of becoming <unk>. Its post-processor is rebuilt from
// add_bos_token / add_eos_token when the config sets either. We reproduce all this when
// tokenizer_config.json names a Llama tokenizer class and the file is SentencePiece-style
// BPE (no ByteLevel component); tokenizer_config.json's legacy = false in the tinystories
// model is what makes its prepend scheme "first".
bool UsesTransformersLlamaPipeline(const TokenizerConfig& config, const Json& doc) {
  if (config.tokenizer_class != "LlamaTokenizer" &&
      config.tokenizer_class != "LlamaTokenizerFast") {
    return false;
  }
  const Json* model = tokenizer_internal::FindField(doc, "model");
  if (model == nullptr || !model->is_object()) return false;
  const Json* type = tokenizer_internal::FindField(*model, "type");
  if (type == nullptr || !type->is_string() || type->get_ref<const std::string&>() != "BPE") {
    return false;
  }
  for (std::string_view key : {"normalizer", "pre_tokenizer", "decoder"}) {
    const Json* part = tokenizer_internal::FindField(doc, key);
    if (part != nullptr && UsesComponent(*part, "ByteLevel")) return false;
  }
  return true;
}

// The pre_tokenizer and decoder transformers 5's LlamaTokenizer builds.
std::pair<Json, Json> TransformersLlamaComponents(const TokenizerConfig& config) {
  const std::string kMeta = "\xE2\x96\x81";  // "▁"
  bool add_prefix_space = config.add_prefix_space.value_or(true);
  bool legacy = config.legacy.value_or(false);
  std::string scheme = !add_prefix_space ? "never" : (legacy ? "always" : "first");
  Json pre = {
      {"type", "Metaspace"}, {"replacement", kMeta}, {"prepend_scheme", scheme}, {"split", false}};
  Json decoders = Json::array();
  decoders.push_back({{"type", "Replace"}, {"pattern", {{"String", kMeta}}}, {"content", " "}});
  decoders.push_back({{"type", "ByteFallback"}});
  decoders.push_back({{"type", "Fuse"}});
  if (add_prefix_space) {
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  Json decoder = {{"type", "Sequence"}, {"decoders", decoders}};
  return {pre, decoder};
}

// transformers' clean_up_tokenization (sequential replacements).
std::string CleanUpSpaces(std::string text) {
  static constexpr std::pair<absl::string_view, absl::string_view> kRules[] = {
      {" .", "."},     {" ?", "?"},   {" !", "!"},   {" ,", ","},     {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    absl::StrReplaceAll({{from, to}}, &text);
  }
  return text;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return contents.str();
}

absl::Status ParseAddedTokens(const Json& doc, const JsonPath& root, Tokenizer::Impl* impl) {
  const Json* list = tokenizer_internal::FindField(doc, "added_tokens");
  if (list == nullptr || list->is_null()) return absl::OkStatus();
  JsonPath at = root.Field("added_tokens");
  if (!list->is_array()) return at.Error("expected an array");
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& entry = (*list)[i];
    JsonPath entry_at = at.Index(i);
    if (!entry.is_object()) return entry_at.Error("expected an object");
    auto token = std::make_unique<AddedToken>();
    const Json* id = tokenizer_internal::FindField(entry, "id");
    if (id == nullptr) return entry_at.Field("id").Error("missing");
    KVSCOPE_ASSIGN_OR_RETURN(token->id, tokenizer_internal::AsId(*id, entry_at.Field("id")));
    KVSCOPE_ASSIGN_OR_RETURN(token->content,
                             tokenizer_internal::RequireString(entry, "content", entry_at));
    KVSCOPE_ASSIGN_OR_RETURN(token->special,
                             tokenizer_internal::GetBool(entry, "special", entry_at, false));
    KVSCOPE_ASSIGN_OR_RETURN(token->lstrip,
                             tokenizer_internal::GetBool(entry, "lstrip", entry_at, false));
    KVSCOPE_ASSIGN_OR_RETURN(token->rstrip,
                             tokenizer_internal::GetBool(entry, "rstrip", entry_at, false));
    KVSCOPE_ASSIGN_OR_RETURN(token->single_word,
                             tokenizer_internal::GetBool(entry, "single_word", entry_at, false));
    KVSCOPE_ASSIGN_OR_RETURN(
        token->normalized,
        tokenizer_internal::GetBool(entry, "normalized", entry_at, !token->special));
    if (impl->added_by_id.contains(token->id)) {
      return entry_at.Field("id").Error(absl::StrCat("id ", token->id, " is added twice"));
    }
    impl->added_by_id[token->id] = token.get();
    impl->added_by_content[token->content] = token->id;
    if (token->special) impl->special_contents.insert(token->content);
    impl->added.push_back(std::move(token));
  }
  // Normalized tokens are searched in normalized text, so their pattern is normalized too.
  for (const auto& token : impl->added) {
    if (token->normalized) {
      std::string pattern = token->content;
      if (impl->normalizer != nullptr) {
        absl::Status status = impl->normalizer->Normalize(&pattern);
        if (!status.ok()) {
          return at.Error(absl::StrCat("normalizing added token ",
                                       tokenizer_internal::Quote(token->content), ": ",
                                       status.message()));
        }
      }
      impl->normalized_matcher.Add(std::move(pattern), token.get());
    } else {
      impl->raw_matcher.Add(token->content, token.get());
    }
  }
  return absl::OkStatus();
}

// The id of a token named in tokenizer_config.json.
absl::StatusOr<std::optional<int32_t>> ConfigTokenId(const Tokenizer::Impl& impl,
                                                     const std::optional<std::string>& token,
                                                     std::string_view field,
                                                     const JsonPath& config_root) {
  if (!token.has_value()) return std::optional<int32_t>();
  std::optional<int32_t> id = impl.TokenToId(*token);
  if (!id.has_value()) {
    return config_root.Field(field).Error(
        absl::StrCat("token ", tokenizer_internal::Quote(*token), " is not in the vocabulary"));
  }
  return id;
}

absl::StatusOr<std::unique_ptr<Tokenizer::Impl>> BuildImpl(std::string_view tokenizer_json,
                                                           std::string_view config_json,
                                                           std::string_view source,
                                                           std::string_view config_source) {
  TokenizerConfig config;
  if (!config_json.empty()) {
    KVSCOPE_ASSIGN_OR_RETURN(config,
                             tokenizer_internal::ParseTokenizerConfig(config_json, config_source));
  }
  KVSCOPE_ASSIGN_OR_RETURN(Json doc, tokenizer_internal::ParseJson(tokenizer_json, source));
  JsonPath root(source, "");
  if (!doc.is_object()) return root.Error("expected a JSON object");
  auto impl = std::make_unique<Tokenizer::Impl>();

  const Json* model = tokenizer_internal::FindField(doc, "model");
  if (model == nullptr) return root.Field("model").Error("missing");
  KVSCOPE_ASSIGN_OR_RETURN(impl->model, BpeModel::Parse(*model, root.Field("model")));

  const Json kNull;
  auto member = [&](std::string_view key) -> const Json& {
    const Json* v = tokenizer_internal::FindField(doc, key);
    return v == nullptr ? kNull : *v;
  };
  KVSCOPE_ASSIGN_OR_RETURN(impl->normalizer, tokenizer_internal::ParseNormalizer(
                                                 member("normalizer"), root.Field("normalizer")));
  KVSCOPE_ASSIGN_OR_RETURN(
      impl->pre_tokenizer,
      tokenizer_internal::ParsePreTokenizer(member("pre_tokenizer"), root.Field("pre_tokenizer")));
  KVSCOPE_ASSIGN_OR_RETURN(
      impl->decoder, tokenizer_internal::ParseDecoder(member("decoder"), root.Field("decoder")));
  const bool llama_pipeline = UsesTransformersLlamaPipeline(config, doc);
  if (llama_pipeline) {
    auto [pre, decoder] = TransformersLlamaComponents(config);
    JsonPath emulated(source, "(transformers LlamaTokenizer pipeline)");
    impl->normalizer.reset();
    KVSCOPE_ASSIGN_OR_RETURN(impl->pre_tokenizer,
                             tokenizer_internal::ParsePreTokenizer(pre, emulated));
    KVSCOPE_ASSIGN_OR_RETURN(impl->decoder, tokenizer_internal::ParseDecoder(decoder, emulated));
    impl->model->UseTransformersLlamaOptions();
  }
  KVSCOPE_RETURN_IF_ERROR(ParseAddedTokens(doc, root, impl.get()));

  int32_t max_id = impl->model->max_id();
  for (const auto& token : impl->added) max_id = std::max(max_id, token->id);
  impl->vocab_size = max_id + 1;

  JsonPath config_root(config_source, "");
  KVSCOPE_ASSIGN_OR_RETURN(impl->bos_id,
                           ConfigTokenId(*impl, config.bos_token, "bos_token", config_root));
  KVSCOPE_ASSIGN_OR_RETURN(impl->eos_id,
                           ConfigTokenId(*impl, config.eos_token, "eos_token", config_root));
  const Json& post = member("post_processor");
  // transformers' Llama tokenizers rebuild the post-processor from add_bos_token /
  // add_eos_token when the config sets either; otherwise the file's post-processor holds.
  const bool config_frame = llama_pipeline && (config.add_bos_token || config.add_eos_token);
  if (!post.is_null() && !config_frame) {
    KVSCOPE_ASSIGN_OR_RETURN(
        impl->frame, tokenizer_internal::ParsePostProcessor(post, root.Field("post_processor")));
  } else {
    // No (or an overridden) post-processor: tokenizer_config.json's add_bos_token /
    // add_eos_token decide.
    if (config.add_bos_token.value_or(false)) {
      if (!impl->bos_id) return config_root.Field("add_bos_token").Error("no bos_token given");
      impl->frame.prefix.push_back(*impl->bos_id);
    }
    if (config.add_eos_token.value_or(false)) {
      if (!impl->eos_id) return config_root.Field("add_eos_token").Error("no eos_token given");
      impl->frame.suffix.push_back(*impl->eos_id);
    }
  }
  for (const auto* ids : {&impl->frame.prefix, &impl->frame.suffix}) {
    for (int32_t id : *ids) {
      if (impl->IdToToken(id) == nullptr) {
        return root.Field("post_processor").Error(absl::StrCat("special id ", id, " has no token"));
      }
    }
  }
  if (!impl->bos_id && !impl->frame.prefix.empty()) impl->bos_id = impl->frame.prefix.front();
  impl->clean_up_spaces = config.clean_up_tokenization_spaces;
  return impl;
}

}  // namespace

absl::Status Tokenizer::Impl::EncodeNormalized(std::string text, bool at_start,
                                               std::vector<int32_t>* ids) const {
  if (normalizer != nullptr) KVSCOPE_RETURN_IF_ERROR(normalizer->Normalize(&text));
  std::vector<AddedTokenMatcher::Segment> segments = normalized_matcher.Split(text);
  for (const AddedTokenMatcher::Segment& segment : segments) {
    if (segment.token != nullptr) {
      ids->push_back(segment.token->id);
      continue;
    }
    std::vector<Piece> pieces;
    pieces.push_back(Piece{text.substr(segment.begin, segment.end - segment.begin),
                           at_start && segment.begin == 0});
    if (pre_tokenizer != nullptr) KVSCOPE_RETURN_IF_ERROR(pre_tokenizer->PreTokenize(&pieces));
    for (const Piece& piece : pieces) model->Tokenize(piece.text, ids);
  }
  return absl::OkStatus();
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir) {
  const std::string path = model_dir + "/tokenizer.json";
  KVSCOPE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const std::string config_path = model_dir + "/tokenizer_config.json";
  std::string config;
  if (std::ifstream(config_path).good()) {
    KVSCOPE_ASSIGN_OR_RETURN(config, ReadFile(config_path));
  }
  return FromJson(text, config, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                               std::string_view config_json,
                                                               std::string_view source) {
  std::string config_source =
      absl::EndsWith(tokenizer_internal::Sv(source), "tokenizer.json")
          ? absl::StrCat(tokenizer_internal::Sv(source.substr(0, source.size() - 14)),
                         "tokenizer_config.json")
          : absl::StrCat(tokenizer_internal::Sv(source), " (tokenizer_config.json)");
  // NOTE: the parsers check every JSON type before reading it; this guard only keeps an
  // unforeseen library exception (e.g. bad_alloc) from crossing the boundary.
  try {
    KVSCOPE_ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl,
                             BuildImpl(tokenizer_json, config_json, source, config_source));
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl)));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(tokenizer_internal::Sv(source),
                                            ": unexpected error while loading: ", e.what()));
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  KVSCOPE_RETURN_IF_ERROR(tokenizer_internal::ValidateUtf8(text));
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = impl_->frame.prefix;
  for (const AddedTokenMatcher::Segment& segment : impl_->raw_matcher.Split(text)) {
    if (segment.token != nullptr) {
      ids.push_back(segment.token->id);
    } else {
      KVSCOPE_RETURN_IF_ERROR(impl_->EncodeNormalized(
          std::string(text.substr(segment.begin, segment.end - segment.begin)), segment.begin == 0,
          &ids));
    }
  }
  if (add_special_tokens) {
    ids.insert(ids.end(), impl_->frame.suffix.begin(), impl_->frame.suffix.end());
  }
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids,
                                              bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string* token = ids[i] >= 0 ? impl_->IdToToken(ids[i]) : nullptr;
    if (token == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("Decode: id ", ids[i], " at position ", i,
                                                     " is not in the vocabulary (size ",
                                                     impl_->vocab_size, ")"));
    }
    if (skip_special_tokens && impl_->special_contents.contains(*token)) continue;
    tokens.push_back(*token);
  }
  std::string text;
  if (impl_->decoder != nullptr) {
    KVSCOPE_RETURN_IF_ERROR(impl_->decoder->DecodeChain(&tokens));
    text = absl::StrJoin(tokens, "");
  } else {
    text = absl::StrJoin(tokens, " ");
  }
  if (impl_->clean_up_spaces) text = CleanUpSpaces(std::move(text));
  return text;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }
std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos_id; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos_id; }

std::string Tokenizer::TokenString(int32_t id) const {
  const std::string* token = impl_->IdToToken(id);
  return token == nullptr ? std::string() : *token;
}

}  // namespace kvscope::engine
