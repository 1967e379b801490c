// Splitting a kernel's rows over XLA:CPU's intra-op thread pool.
#ifndef EFFDET_JAX_CPU_KERNELS_PARALLEL_ROWS_H_
#define EFFDET_JAX_CPU_KERNELS_PARALLEL_ROWS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace effdet_jax {

namespace ffi = xla::ffi;

// Below this many multiply-adds per chunk, splitting costs more than it saves.
constexpr int64_t kMinWorkPerChunk = 1 << 20;

inline int64_t ChunkCount(ffi::ThreadPool& pool, int64_t rows, int64_t work) {
  return std::max<int64_t>(1, std::min({pool.num_threads(), rows, work / kMinWorkPerChunk}));
}

// Runs body(chunk, begin, end) over `chunks` contiguous pieces of [0, rows) and
// returns when all are done. The calling thread claims pieces itself and the
// pool's threads help when they are free; it only ever waits for pieces another
// thread is already running, never for a queued task.
template <typename Body>
void ParallelRows(ffi::ThreadPool& pool, int64_t rows, int64_t chunks, Body body) {
  struct State {
    State(Body body, int64_t rows, int64_t chunks)
        : body(std::move(body)), rows(rows), chunks(chunks) {}
    Body body;
    const int64_t rows, chunks;
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>(std::move(body), rows, chunks);
  auto work = [state] {
    for (int64_t c; (c = state->next.fetch_add(1, std::memory_order_relaxed)) < state->chunks;) {
      state->body(c, state->rows * c / state->chunks, state->rows * (c + 1) / state->chunks);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t c = 1; c < chunks; ++c) {
    auto helper = work;
    pool.Schedule(std::move(helper));
  }
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace effdet_jax

#endif  // EFFDET_JAX_CPU_KERNELS_PARALLEL_ROWS_H_
