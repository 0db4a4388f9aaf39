// File: common/clock.h
//
// Time is injected: code that measures or waits takes a Clock&, so tests script time with
// FakeClock. Both implementations are thread-safe.
#ifndef KVSCOPE_COMMON_CLOCK_H_
#define KVSCOPE_COMMON_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace kvscope {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time in nanoseconds since an arbitrary origin.
  virtual int64_t NowNanos() const = 0;
  double NowSeconds() const { return static_cast<double>(NowNanos()) * 1e-9; }
};

// The process-wide steady clock.
class RealClock final : public Clock {
 public:
  int64_t NowNanos() const override;
  static RealClock& Get();
};

// A clock that moves only when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_nanos = 0) : now_(start_nanos) {}
  int64_t NowNanos() const override { return now_.load(); }
  void AdvanceNanos(int64_t delta) { now_.fetch_add(delta); }
  void AdvanceSeconds(double seconds) { AdvanceNanos(static_cast<int64_t>(seconds * 1e9)); }
  void SetNanos(int64_t nanos) { now_.store(nanos); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace kvscope

#endif  // KVSCOPE_COMMON_CLOCK_H_
