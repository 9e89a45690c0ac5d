// The arrival times of an open-loop load: a Poisson process (exponential gaps) from a seeded
// generator. `mesaserve loadtest --rate` and the engine-alone load of `mesaserve bench
// --engine-rate` both take their schedule from here, so that with the same seed the server
// and the engine alone see the same arrivals.
#pragma once

#include <cstdint>
#include <random>

namespace mesa {

class PoissonArrivals {
 public:
  // `rate` arrivals per second (> 0). `stream` gives independent schedules for one seed (the
  // load generator's warm-up and measured phases).
  PoissonArrivals(double rate, uint64_t seed, uint64_t stream = 0)
      : rng_(seed * 7919u + stream), gap_(rate) {}

  // Seconds from the start to the next arrival; the first is at 0.
  double Next() {
    const double t = at_;
    at_ += gap_(rng_);
    return t;
  }

 private:
  std::mt19937_64 rng_;
  std::exponential_distribution<double> gap_;
  double at_ = 0.0;
};

}  // namespace mesa
