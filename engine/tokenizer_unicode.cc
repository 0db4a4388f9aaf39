// File: engine/tokenizer_unicode.cc
#include "engine/tokenizer_unicode.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace kvscope::engine::tokenizer_internal {
namespace {

// Length of the valid UTF-8 sequence at bytes[i], or 0 if none starts there; on 0,
// *bad_len is the length of the maximal invalid prefix (>= 1), as Rust/Unicode define it.
size_t ValidSequenceAt(std::string_view bytes, size_t i, size_t* bad_len) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
  unsigned char lead = b(i);
  if (lead < 0x80) return 1;
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead == 0xE0) {
    need = 3, lo = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    need = 3;
  } else if (lead == 0xED) {
    need = 3, hi = 0x9F;
  } else if (lead == 0xF0) {
    need = 4, lo = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    need = 4;
  } else if (lead == 0xF4) {
    need = 4, hi = 0x8F;
  } else {
    *bad_len = 1;
    return 0;
  }
  size_t k = 1;
  for (; k < need; ++k) {
    if (i + k >= bytes.size()) break;
    unsigned char c = b(i + k);
    bool ok = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!ok) break;
  }
  if (k == need) return need;
  *bad_len = k;
  return 0;
}

char32_t LowerCodePoint(char32_t cp) {
  // Binary search for the last run with first <= cp.
  const LowerRun* end = kLowerRuns + kLowerRunsSize;
  const LowerRun* it = std::upper_bound(kLowerRuns, end, cp,
                                        [](char32_t c, const LowerRun& r) { return c < r.first; });
  if (it == kLowerRuns) return cp;
  --it;
  if (cp > it->last || (cp - it->first) % it->stride != 0) return cp;
  return static_cast<char32_t>(static_cast<int32_t>(cp) + it->delta);
}

// Approximates Unicode "Cased": has a lowercase mapping, or is the lowercase of something.
bool IsCased(char32_t cp) {
  if (LowerCodePoint(cp) != cp) return true;
  if ((cp >= 'a' && cp <= 'z') || cp == 0xDF) return true;
  if (cp < 0x80) return false;
  for (int i = 0; i < kLowerRunsSize; ++i) {
    const LowerRun& r = kLowerRuns[i];
    int64_t src = static_cast<int64_t>(cp) - r.delta;
    if (src >= r.first && src <= r.last && (src - r.first) % r.stride == 0) return true;
  }
  return false;
}

}  // namespace

absl::Status ValidateUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    size_t bad = 0;
    size_t n = ValidSequenceAt(text, i, &bad);
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte offset ", i));
    i += n;
  }
  return absl::OkStatus();
}

char32_t NextCodePoint(std::string_view text, size_t* pos) {
  const auto b = [&](size_t k) {
    return static_cast<char32_t>(static_cast<unsigned char>(text[k]));
  };
  size_t i = *pos;
  char32_t c = b(i);
  if (c < 0x80) {
    *pos = i + 1;
    return c;
  }
  if (c < 0xE0) {
    *pos = i + 2;
    return ((c & 0x1F) << 6) | (b(i + 1) & 0x3F);
  }
  if (c < 0xF0) {
    *pos = i + 3;
    return ((c & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
  }
  *pos = i + 4;
  return ((c & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) |
         (b(i + 3) & 0x3F);
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

std::string ToLower(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  char32_t prev = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    char32_t cp = NextCodePoint(text, &pos);
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
    } else if (cp == 0x130) {  // İ lowercases to "i" + combining dot above
      AppendUtf8(0x69, &out);
      AppendUtf8(0x307, &out);
    } else if (cp == 0x3A3) {  // Σ: final sigma at the end of a word
      bool next_cased = false;
      if (pos < text.size()) {
        size_t p = pos;
        next_cased = IsCased(NextCodePoint(text, &p));
      }
      AppendUtf8(prev != 0 && IsCased(prev) && !next_cased ? 0x3C2 : 0x3C3, &out);
    } else {
      AppendUtf8(LowerCodePoint(cp), &out);
    }
    prev = cp;
  }
  return out;
}

size_t FirstNfcUnsafe(std::string_view text) {
  size_t pos = 0;
  const CodePointRange* end = kNfcUnsafe + kNfcUnsafeSize;
  while (pos < text.size()) {
    size_t start = pos;
    char32_t cp = NextCodePoint(text, &pos);
    if (cp < 0x300) continue;
    const CodePointRange* it = std::upper_bound(
        kNfcUnsafe, end, cp, [](char32_t c, const CodePointRange& r) { return c < r.first; });
    if (it != kNfcUnsafe && cp <= (it - 1)->last) return start;
  }
  return std::string_view::npos;
}

const std::array<std::string, 256>& ByteLevelAlphabet() {
  static const std::array<std::string, 256>* const kTable = [] {
    auto* table = new std::array<std::string, 256>();
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      AppendUtf8(cp, &(*table)[b]);
    }
    return table;
  }();
  return *kTable;
}

int ByteLevelByte(char32_t cp) {
  static const std::array<int16_t, 324>* const kInverse = [] {
    auto* inv = new std::array<int16_t, 324>();
    inv->fill(-1);
    const auto& alphabet = ByteLevelAlphabet();
    for (int b = 0; b < 256; ++b) {
      size_t pos = 0;
      (*inv)[NextCodePoint(alphabet[b], &pos)] = static_cast<int16_t>(b);
    }
    return inv;
  }();
  return cp < kInverse->size() ? (*kInverse)[cp] : -1;
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t bad = 0;
    size_t n = ValidSequenceAt(bytes, i, &bad);
    if (n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += bad;
    }
  }
  return out;
}

}  // namespace kvscope::engine::tokenizer_internal
