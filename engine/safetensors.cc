// File: engine/safetensors.cc
#include "engine/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace kvscope::engine {
namespace {

using json = nlohmann::json;

// Bytes per element of every dtype the safetensors format defines (sub-byte types excluded);
// 0 for an unknown spelling.
size_t ElementSize(std::string_view dtype) {
  static constexpr std::pair<std::string_view, size_t> kSizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"F64", 8}, {"I64", 8}, {"U64", 8}};
  for (const auto& [name, size] : kSizes) {
    if (name == dtype) return size;
  }
  return 0;
}

std::string Render(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 48) text = text.substr(0, 45) + "...";
  return text;
}

// Control characters escaped, so that every message stays on one line.
std::string Printable(std::string_view text) {
  std::string out;
  for (char ch : text) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    } else {
      out.push_back(ch);
    }
  }
  if (out.size() > 200) out = out.substr(0, 197) + "...";
  return out;
}

// Validates one header entry (everything but the cross-tensor checks).
absl::StatusOr<SafetensorsTensor> ParseEntry(const std::string& name, const json& entry,
                                             uint64_t data_size, const std::string& source) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor ", Printable(name), ": ", what));
  };
  if (!entry.is_object()) {
    return bad(
        absl::StrCat("expected an object with dtype, shape and data_offsets, got ", Render(entry)));
  }
  SafetensorsTensor t;
  t.name = name;
  auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) {
    return bad("missing or non-string 'dtype'");
  }
  t.dtype = dtype->get<std::string>();
  t.element_size = ElementSize(t.dtype);
  if (t.element_size == 0) {
    return bad(absl::StrCat("unknown dtype '", Printable(t.dtype), "'"));
  }
  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) {
    return bad("missing 'shape' (a list of non-negative integers)");
  }
  // Element count, kept below 2^62 bytes so no product overflows.
  const uint64_t kLimit = (uint64_t{1} << 62) / t.element_size;
  uint64_t count = 1;
  for (const json& d : *shape) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0) {
      return bad(
          absl::StrCat("'shape' must be a list of non-negative integers, got ", Render(*shape)));
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim != 0 && count > kLimit / dim) {
      return bad(absl::StrCat("shape ", Render(*shape), " is too large"));
    }
    count *= dim;
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  t.num_elements = static_cast<int64_t>(count);
  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_integer() || !(*offsets)[1].is_number_integer() ||
      (*offsets)[0].get<int64_t>() < 0 || (*offsets)[1].get<int64_t>() < 0) {
    return bad(absl::StrCat("'data_offsets' must be [begin, end] (non-negative integers), got ",
                            offsets == entry.end() ? std::string("nothing") : Render(*offsets)));
  }
  t.begin = (*offsets)[0].get<uint64_t>();
  t.end = (*offsets)[1].get<uint64_t>();
  if (t.end < t.begin) {
    return bad(absl::StrCat("data_offsets [", t.begin, ", ", t.end, "] end before they begin"));
  }
  if (t.end > data_size) {
    return bad(absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                            "] run past the end of the data section (", data_size, " bytes)"));
  }
  const uint64_t expected = count * t.element_size;
  if (t.end - t.begin != expected) {
    return bad(absl::StrCat("data_offsets [", t.begin, ", ", t.end, "] span ", t.end - t.begin,
                            " bytes, but shape ", ShapeString(t.shape), " of ", t.dtype, " needs ",
                            expected));
  }
  return t;
}

}  // namespace

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const uint8_t* data, size_t size,
                                                         std::string_view source_view) {
  const std::string source(source_view);
  if (size < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": file is ", size, " bytes, too short for the 8-byte safetensors header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": safetensors header length ", header_len, " is larger than the limit of ",
        kMaxSafetensorsHeaderBytes, " bytes (corrupt or not a safetensors file)"));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": safetensors header length ", header_len, " runs past the end of the file (",
        size, " bytes; truncated or not a safetensors file)"));
  }
  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  const uint64_t data_size = size - header.data_start;
  const char* text = reinterpret_cast<const char*>(data + 8);

  json root;
  std::string duplicate;
  try {
    std::set<std::string, std::less<>> seen;
    // Top-level keys arrive at depth 1; nlohmann keeps only the last of duplicate keys, so
    // duplicates are caught here.
    json::parser_callback_t callback = [&](int depth, json::parse_event_t event, json& parsed) {
      if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() &&
          duplicate.empty()) {
        std::string key = parsed.get<std::string>();
        if (!seen.insert(key).second) duplicate = std::move(key);
      }
      return true;
    };
    root = json::parse(text, text + header_len, callback);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": safetensors header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": safetensors header must be a JSON object, got ", Render(root)));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor ", Printable(duplicate), " appears twice in the header"));
  }
  try {
    header.tensors.reserve(root.size());
    for (auto it = root.begin(); it != root.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      KVSCOPE_ASSIGN_OR_RETURN(SafetensorsTensor t,
                               ParseEntry(it.key(), it.value(), data_size, source));
      header.tensors.push_back(std::move(t));
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid header: ", e.what()));
  }
  // nlohmann objects iterate in key order, so `tensors` is sorted by name.
  std::vector<const SafetensorsTensor*> by_offset;
  by_offset.reserve(header.tensors.size());
  for (const SafetensorsTensor& t : header.tensors) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ": tensor ", Printable(by_offset[i]->name), " (bytes [", by_offset[i]->begin,
          ", ", by_offset[i]->end, ")) overlaps tensor ", by_offset[i - 1]->name, " (bytes [",
          by_offset[i - 1]->begin, ", ", by_offset[i - 1]->end, "))"));
    }
  }
  for (size_t i = 0; i < header.tensors.size(); ++i)
    header.index.emplace(header.tensors[i].name, i);
  return header;
}

absl::StatusOr<DType> SupportedDType(const SafetensorsTensor& tensor,
                                     std::string_view source_view) {
  const std::string source(source_view);
  if (tensor.dtype == "F32") return DType::kF32;
  if (tensor.dtype == "BF16") return DType::kBF16;
  if (tensor.dtype == "F16") return DType::kF16;
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", Printable(tensor.name),
                                                 " has dtype ", tensor.dtype,
                                                 "; kvscope reads F32, BF16 and F16 weights"));
}

absl::StatusOr<std::shared_ptr<const SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  KVSCOPE_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  auto mapped = std::make_shared<MappedFile>(std::move(file));
  KVSCOPE_ASSIGN_OR_RETURN(SafetensorsHeader header,
                           ParseSafetensorsHeader(mapped->data(), mapped->size(), path));
  return std::shared_ptr<const SafetensorsFile>(
      new SafetensorsFile(std::move(mapped), std::move(header)));
}

const SafetensorsTensor* SafetensorsFile::Find(std::string_view name) const {
  auto it = header_.index.find(name);
  return it == header_.index.end() ? nullptr : &header_.tensors[it->second];
}

std::string EncodeSafetensors(const std::vector<SafetensorsWriteTensor>& tensors) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const SafetensorsWriteTensor& t : tensors) {
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');
  std::string out;
  out.reserve(8 + text.size() + offset);
  uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out += text;
  for (const SafetensorsWriteTensor& t : tensors) out += t.bytes;
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsWriteTensor>& tensors) {
  const std::string bytes = EncodeSafetensors(tensors);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot open for writing"));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace kvscope::engine
