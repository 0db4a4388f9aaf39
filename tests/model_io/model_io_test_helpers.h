// File: tests/model_io/model_io_test_helpers.h
//
// Helpers for the model_io tests: temporary directories, file writing, and walking every
// view of a ModelWeights.
#ifndef KVSCOPE_TESTS_MODEL_IO_MODEL_IO_TEST_HELPERS_H_
#define KVSCOPE_TESTS_MODEL_IO_MODEL_IO_TEST_HELPERS_H_

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/weights.h"
#include "gtest/gtest.h"

namespace kvscope::testing {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && base[0] != '\0' ? base : "/tmp") +
                          "/kvscope_model_io_XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    const char* made = ::mkdtemp(buffer.data());
    if (made == nullptr) std::abort();
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Sub(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteFileOrDie(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    ADD_FAILURE() << "cannot write " << path;
    std::abort();
  }
}

// Every view of `w` with a readable name, in a fixed order (empty views included).
inline std::vector<std::pair<std::string, engine::WeightView>> AllViews(
    const engine::ModelWeights& w) {
  std::vector<std::pair<std::string, engine::WeightView>> out = {{"embed", w.embed},
                                                                 {"positions", w.positions},
                                                                 {"project_in", w.project_in},
                                                                 {"project_out", w.project_out}};
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const engine::LayerWeights& l = w.layers[i];
    const std::pair<const char*, const engine::WeightView*> fields[] = {
        {"attn_norm", &l.attn_norm},
        {"attn_norm_bias", &l.attn_norm_bias},
        {"q", &l.q},
        {"k", &l.k},
        {"v", &l.v},
        {"o", &l.o},
        {"q_bias", &l.q_bias},
        {"k_bias", &l.k_bias},
        {"v_bias", &l.v_bias},
        {"o_bias", &l.o_bias},
        {"mlp_norm", &l.mlp_norm},
        {"mlp_norm_bias", &l.mlp_norm_bias},
        {"gate", &l.gate},
        {"up", &l.up},
        {"down", &l.down},
        {"gate_bias", &l.gate_bias},
        {"up_bias", &l.up_bias},
        {"down_bias", &l.down_bias}};
    for (const auto& [name, view] : fields) {
      out.emplace_back(absl::StrCat("layers.", i, ".", name), *view);
    }
  }
  out.emplace_back("final_norm", w.final_norm);
  out.emplace_back("final_norm_bias", w.final_norm_bias);
  out.emplace_back("lm_head", w.lm_head);
  return out;
}

}  // namespace kvscope::testing

#endif  // KVSCOPE_TESTS_MODEL_IO_MODEL_IO_TEST_HELPERS_H_
