// The work a benchmarked listener does, in a translation unit of its own so that neither
// Omnibus's dispatch nor the std::function baseline can inline it.

#include <atomic>

namespace bench {

std::atomic<long> sink{0};

__attribute__((noinline)) void listener_work(long n) { sink.fetch_add(n, std::memory_order_relaxed); }

}  // namespace bench
