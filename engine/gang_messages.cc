#include "engine/gang_messages.h"

#include <cstring>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvscope::engine {
namespace {

class Writer {
 public:
  explicit Writer(GangMessageType type) { U8(static_cast<uint8_t>(type)); }
  template <typename T>
  void Int(T v) {
    static_assert(std::is_integral_v<T>);
    using U = std::make_unsigned_t<T>;
    U u = static_cast<U>(v);
    for (size_t i = 0; i < sizeof(T); ++i) {
      out_.push_back(static_cast<char>(u & 0xff));
      u = static_cast<U>(u >> 8);
    }
  }
  void U8(uint8_t v) { Int(v); }
  void String(const std::string& s) {
    Int<uint32_t>(static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void Ints(absl::Span<const int32_t> v) {
    Int<uint64_t>(v.size());
    for (int32_t x : v) Int(x);
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  Reader(const std::string& frame, GangMessageType expected) : frame_(frame) {
    if (frame.empty() || static_cast<uint8_t>(frame[0]) != static_cast<uint8_t>(expected)) {
      error_ = true;
    }
    pos_ = 1;
  }
  template <typename T>
  T Int() {
    static_assert(std::is_integral_v<T>);
    using U = std::make_unsigned_t<T>;
    if (!Need(sizeof(T))) return 0;
    U u = 0;
    for (size_t i = 0; i < sizeof(T); ++i) {
      u |= static_cast<U>(static_cast<U>(static_cast<uint8_t>(frame_[pos_ + i])) << (8 * i));
    }
    pos_ += sizeof(T);
    return static_cast<T>(u);
  }
  std::string String() {
    const uint32_t n = Int<uint32_t>();
    if (!Need(n)) return "";
    std::string s = frame_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  std::vector<int32_t> Ints() {
    const uint64_t n = Int<uint64_t>();
    if (n > (frame_.size() - pos_) / sizeof(int32_t)) {
      error_ = true;
      return {};
    }
    std::vector<int32_t> v(n);
    for (auto& x : v) x = Int<int32_t>();
    return v;
  }
  // Elements of `size` bytes that the rest of the frame could hold (guards counts).
  bool CountFits(uint64_t count, size_t size) {
    if (count > (frame_.size() - pos_) / size) error_ = true;
    return !error_;
  }
  absl::Status Finish(const char* what) {
    if (error_ || pos_ != frame_.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("gang message: malformed ", what, " frame (", frame_.size(), " bytes)"));
    }
    return absl::OkStatus();
  }

 private:
  bool Need(size_t n) {
    if (error_ || n > frame_.size() - pos_) {
      error_ = true;
      return false;
    }
    return true;
  }
  const std::string& frame_;
  size_t pos_ = 0;
  bool error_ = false;
};

}  // namespace

bool KvOp::operator==(const KvOp& o) const {
  if (steps.size() != o.steps.size()) return false;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i].seq_id != o.steps[i].seq_id ||
        steps[i].num_new_tokens != o.steps[i].num_new_tokens ||
        steps[i].start_position != o.steps[i].start_position) {
      return false;
    }
  }
  return kind == o.kind && a == o.a && b == o.b && max_new_tokens == o.max_new_tokens &&
         tokens == o.tokens && ok == o.ok && result == o.result;
}

OwnedBatch OwnedBatch::From(absl::Span<const SeqInput> batch) {
  OwnedBatch owned;
  owned.seqs.reserve(batch.size());
  for (const SeqInput& s : batch) {
    owned.seqs.push_back(
        {s.seq_id, std::vector<int32_t>(s.tokens.begin(), s.tokens.end()), s.start_position,
         s.all_logits});
  }
  return owned;
}

std::vector<SeqInput> OwnedBatch::Inputs() const {
  std::vector<SeqInput> inputs;
  inputs.reserve(seqs.size());
  for (const Seq& s : seqs) {
    inputs.push_back({s.seq_id, absl::MakeConstSpan(s.tokens), s.start_position, s.all_logits});
  }
  return inputs;
}

std::string EncodeHello(const GangHello& hello) {
  Writer w(GangMessageType::kHello);
  w.String(hello.token);
  w.Int(hello.process);
  w.Int(hello.rank);
  w.String(hello.fingerprint);
  return w.Take();
}

std::string EncodeWelcome(const std::string& refusal) {
  Writer w(GangMessageType::kWelcome);
  w.String(refusal);
  return w.Take();
}

std::string EncodeStep(absl::Span<const KvOp> ops, absl::Span<const SeqInput> batch) {
  Writer w(GangMessageType::kStep);
  w.Int<uint64_t>(ops.size());
  for (const KvOp& op : ops) {
    w.U8(static_cast<uint8_t>(op.kind));
    w.Int(op.a);
    w.Int(op.b);
    w.Int(op.max_new_tokens);
    w.Ints(op.tokens);
    w.Int<uint64_t>(op.steps.size());
    for (const kvcache::SeqStep& s : op.steps) {
      w.Int(s.seq_id);
      w.Int(s.num_new_tokens);
      w.Int(s.start_position);
    }
    w.U8(op.ok ? 1 : 0);
    w.Int(op.result);
  }
  w.Int<uint64_t>(batch.size());
  for (const SeqInput& s : batch) {
    w.Int(s.seq_id);
    w.Ints(s.tokens);
    w.Int(s.start_position);
    w.U8(s.all_logits ? 1 : 0);
  }
  return w.Take();
}

std::string EncodeStepAck(const absl::Status& status) {
  Writer w(GangMessageType::kStepAck);
  w.Int<int32_t>(static_cast<int32_t>(status.code()));
  w.String(std::string(status.message()));
  return w.Take();
}

std::string EncodeRelease(int64_t seq_id) {
  Writer w(GangMessageType::kRelease);
  w.Int(seq_id);
  return w.Take();
}

std::string EncodeDone() { return Writer(GangMessageType::kDone).Take(); }

absl::StatusOr<GangMessageType> PeekType(const std::string& frame) {
  const uint8_t t = frame.empty() ? 0 : static_cast<uint8_t>(frame[0]);
  if (t < static_cast<uint8_t>(GangMessageType::kHello) ||
      t > static_cast<uint8_t>(GangMessageType::kDataPlane)) {
    return absl::InvalidArgumentError(absl::StrCat("gang message: unknown type ", t));
  }
  return static_cast<GangMessageType>(t);
}

std::string EncodeGpuDevices(const std::vector<std::string>& devices) {
  Writer w(GangMessageType::kGpuDevices);
  w.Int<uint32_t>(static_cast<uint32_t>(devices.size()));
  for (const std::string& d : devices) w.String(d);
  return w.Take();
}

std::string EncodeDataPlane(const GangDataPlaneMessage& plane) {
  Writer w(GangMessageType::kDataPlane);
  w.String(plane.kind);
  w.String(plane.nccl_unique_id);
  return w.Take();
}

absl::StatusOr<std::vector<std::string>> DecodeGpuDevices(const std::string& frame) {
  Reader r(frame, GangMessageType::kGpuDevices);
  std::vector<std::string> devices;
  const uint32_t n = r.Int<uint32_t>();
  if (r.CountFits(n, 4)) {
    devices.resize(n);
    for (std::string& d : devices) d = r.String();
  }
  KVSCOPE_RETURN_IF_ERROR(r.Finish("gpu devices"));
  return devices;
}

absl::StatusOr<GangDataPlaneMessage> DecodeDataPlane(const std::string& frame) {
  Reader r(frame, GangMessageType::kDataPlane);
  GangDataPlaneMessage plane;
  plane.kind = r.String();
  plane.nccl_unique_id = r.String();
  KVSCOPE_RETURN_IF_ERROR(r.Finish("data plane"));
  return plane;
}

absl::StatusOr<GangHello> DecodeHello(const std::string& frame) {
  Reader r(frame, GangMessageType::kHello);
  GangHello hello;
  hello.token = r.String();
  hello.process = r.Int<int32_t>();
  hello.rank = r.Int<int32_t>();
  hello.fingerprint = r.String();
  KVSCOPE_RETURN_IF_ERROR(r.Finish("hello"));
  return hello;
}

absl::StatusOr<std::string> DecodeWelcome(const std::string& frame) {
  Reader r(frame, GangMessageType::kWelcome);
  std::string refusal = r.String();
  KVSCOPE_RETURN_IF_ERROR(r.Finish("welcome"));
  return refusal;
}

absl::Status DecodeStep(const std::string& frame, std::vector<KvOp>* ops, OwnedBatch* batch) {
  Reader r(frame, GangMessageType::kStep);
  ops->clear();
  batch->seqs.clear();
  const uint64_t num_ops = r.Int<uint64_t>();
  if (r.CountFits(num_ops, 1 + 8 + 8 + 4 + 8 + 8 + 1 + 8)) {
    ops->resize(num_ops);
    for (KvOp& op : *ops) {
      const uint8_t kind = r.Int<uint8_t>();
      if (kind < static_cast<uint8_t>(KvOp::Kind::kAdmit) ||
          kind > static_cast<uint8_t>(KvOp::Kind::kPlan)) {
        return absl::InvalidArgumentError(absl::StrCat("gang message: unknown KV op ", kind));
      }
      op.kind = static_cast<KvOp::Kind>(kind);
      op.a = r.Int<int64_t>();
      op.b = r.Int<int64_t>();
      op.max_new_tokens = r.Int<int32_t>();
      op.tokens = r.Ints();
      const uint64_t num_steps = r.Int<uint64_t>();
      if (!r.CountFits(num_steps, 16)) break;
      op.steps.resize(num_steps);
      for (kvcache::SeqStep& s : op.steps) {
        s.seq_id = r.Int<int64_t>();
        s.num_new_tokens = r.Int<int32_t>();
        s.start_position = r.Int<int32_t>();
      }
      op.ok = r.Int<uint8_t>() != 0;
      op.result = r.Int<int64_t>();
    }
  }
  const uint64_t num_seqs = r.Int<uint64_t>();
  if (r.CountFits(num_seqs, 8 + 8 + 4 + 1)) {
    batch->seqs.resize(num_seqs);
    for (OwnedBatch::Seq& s : batch->seqs) {
      s.seq_id = r.Int<int64_t>();
      s.tokens = r.Ints();
      s.start_position = r.Int<int32_t>();
      s.all_logits = r.Int<uint8_t>() != 0;
    }
  }
  return r.Finish("step");
}

absl::StatusOr<GangStepAck> DecodeStepAck(const std::string& frame) {
  Reader r(frame, GangMessageType::kStepAck);
  GangStepAck ack;
  const int32_t code = r.Int<int32_t>();
  ack.message = r.String();
  KVSCOPE_RETURN_IF_ERROR(r.Finish("step ack"));
  if (code < 0 || code > static_cast<int32_t>(absl::StatusCode::kUnauthenticated)) {
    return absl::InvalidArgumentError(absl::StrCat("gang message: unknown status code ", code));
  }
  ack.code = static_cast<absl::StatusCode>(code);
  return ack;
}

absl::StatusOr<int64_t> DecodeRelease(const std::string& frame) {
  Reader r(frame, GangMessageType::kRelease);
  const int64_t id = r.Int<int64_t>();
  KVSCOPE_RETURN_IF_ERROR(r.Finish("release"));
  return id;
}

}  // namespace kvscope::engine
