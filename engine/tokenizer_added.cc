// File: engine/tokenizer_added.cc
#include "engine/tokenizer_added.h"

#include <algorithm>
#include <memory>

#include "engine/tokenizer_regex.h"
#include "engine/tokenizer_unicode.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

// Unicode word character (\w: letters, digits, connector punctuation, marks).
bool IsWordChar(std::string_view ch) {
  static const Regex* const kWord = Regex::Compile(R"(^\w$)").value().release();
  std::vector<std::pair<size_t, size_t>> matches;
  return kWord->FindAll(ch, &matches).ok() && !matches.empty();
}

// The character of `text` ending at byte `end` (> 0).
std::string_view CharBefore(std::string_view text, size_t end) {
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return text.substr(start, end - start);
}

std::string_view CharAt(std::string_view text, size_t begin) {
  size_t end = begin;
  NextCodePoint(text, &end);
  return text.substr(begin, end - begin);
}

// Start of the whitespace run that ends text[0, end).
size_t WhitespaceRunBefore(std::string_view text, size_t end) {
  while (end > 0) {
    std::string_view ch = CharBefore(text, end);
    size_t pos = 0;
    if (!IsWhitespace(NextCodePoint(ch, &pos))) break;
    end -= ch.size();
  }
  return end;
}

// End of the whitespace run that starts at text[begin].
size_t WhitespaceRunAfter(std::string_view text, size_t begin) {
  while (begin < text.size()) {
    size_t next = begin;
    if (!IsWhitespace(NextCodePoint(text, &next))) break;
    begin = next;
  }
  return begin;
}

}  // namespace

void AddedTokenMatcher::Add(std::string pattern, const AddedToken* token) {
  if (pattern.empty()) return;
  unsigned char first = static_cast<unsigned char>(pattern[0]);
  patterns_.emplace_back(std::move(pattern), token);
  std::vector<size_t>& bucket = by_first_byte_[first];
  bucket.push_back(patterns_.size() - 1);
  // Longest first; among equal lengths, the first added wins.
  std::stable_sort(bucket.begin(), bucket.end(), [this](size_t a, size_t b) {
    return patterns_[a].first.size() > patterns_[b].first.size();
  });
}

std::vector<AddedTokenMatcher::Segment> AddedTokenMatcher::Split(std::string_view text) const {
  std::vector<Segment> out;
  size_t start_offset = 0;  // end of the last emitted segment
  size_t pos = 0;           // where the next leftmost-longest search starts
  while (pos < text.size() && !patterns_.empty()) {
    const std::pair<std::string, const AddedToken*>* found = nullptr;
    for (size_t index : by_first_byte_[static_cast<unsigned char>(text[pos])]) {
      const auto& candidate = patterns_[index];
      if (text.compare(pos, candidate.first.size(), candidate.first) == 0) {
        found = &candidate;
        break;
      }
    }
    if (found == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + found->first.size();
    pos = stop;
    const AddedToken& token = *found->second;
    if (token.single_word) {
      bool word_before = start > 0 && IsWordChar(CharBefore(text, start));
      bool word_after = stop < text.size() && IsWordChar(CharAt(text, stop));
      if (word_before || word_after) continue;
    }
    if (token.lstrip) start = std::max(WhitespaceRunBefore(text, start), start_offset);
    if (token.rstrip) stop = WhitespaceRunAfter(text, stop);
    start = std::max(start, start_offset);
    stop = std::max(stop, start);
    if (start_offset < start) out.push_back(Segment{start_offset, start, nullptr});
    out.push_back(Segment{start, stop, &token});
    start_offset = stop;
    pos = std::max(pos, stop);
  }
  if (start_offset < text.size()) out.push_back(Segment{start_offset, text.size(), nullptr});
  return out;
}

}  // namespace kvscope::engine::tokenizer_internal
