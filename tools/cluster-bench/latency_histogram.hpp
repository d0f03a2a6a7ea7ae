#pragma once
// A log-bucketed latency histogram (HDR-like): fixed memory, O(1) record, about 1.6 %
// relative precision at any magnitude. Values are nanoseconds.
//
// Buckets: values below 128 ns have a bucket each; above, every power-of-two range
// [2^k, 2^(k+1)) is split into 64 equal buckets, so a bucket's width is at most 1/64 of
// its lower bound. Up to 2^63 ns fits. Not thread-safe: one per thread, then `merge`.

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

namespace cluster::bench {

class latency_histogram {
 public:
  static constexpr unsigned sub_bits = 6;                            // 64 buckets per power of two
  static constexpr std::size_t linear = std::size_t{2} << sub_bits;  // 0..127 exact
  static constexpr std::size_t bucket_count =
      (64 - sub_bits) * (std::size_t{1} << sub_bits) + linear;

  void record(std::uint64_t ns) {
    ++counts_[index_of(ns)];
    ++count_;
    sum_ += ns;
    max_ = std::max(max_, ns);
  }

  void merge(const latency_histogram& other) {
    for (std::size_t i = 0; i < bucket_count; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  void reset() { *this = latency_histogram{}; }

  std::uint64_t count() const { return count_; }
  std::uint64_t max() const { return max_; }
  double mean() const { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / count_; }

  /// The value at quantile `q` (0..1): the upper bound of the bucket holding the
  /// ceil(q * count)-th smallest value, capped at the exact maximum. 0 when empty.
  std::uint64_t quantile(double q) const {
    if (count_ == 0) return 0;
    auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count_) + 0.999999);
    rank = std::clamp<std::uint64_t>(rank, 1, count_);
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(upper_bound_of(i), max_);
    }
    return max_;
  }

  static std::size_t index_of(std::uint64_t ns) {
    if (ns < linear) return static_cast<std::size_t>(ns);
    // shift >= 1: (ns >> shift) lands in [64, 128).
    const unsigned shift = static_cast<unsigned>(std::bit_width(ns)) - 1 - sub_bits;
    return (std::size_t{shift} << sub_bits) + static_cast<std::size_t>(ns >> shift);
  }

  static std::uint64_t upper_bound_of(std::size_t index) {
    if (index < linear) return index;
    const std::size_t shift = (index >> sub_bits) - 1;
    const std::uint64_t mantissa = index - (shift << sub_bits);  // in [64, 128)
    return ((mantissa + 1) << shift) - 1;
  }

 private:
  std::array<std::uint64_t, bucket_count> counts_{};
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
};

}  // namespace cluster::bench
