// The gradients of a depthwise convolution with TF `SAME` padding, as XLA:CPU
// FFI handlers (built and registered by `__init__.py`):
//
//   kernel: dk[i, j, c] = sum_{b, h, w} x[b, h*s + i - top, w*s + j - left, c] * dy[b, h, w, c]
//   input:  dx = the transposed convolution of dy with the kernel
//
// XLA expresses the first as one reduction per tap or a loop of small fusions,
// and fuses the producer of dy into the second, recomputing it for every tap
// (the batch norm and activation backward, 9 or 25 times per element). Here
// each row is read once and multiplied into all taps while it is in cache,
// split over the intra-op thread pool.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel_rows.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using effdet_jax::ChunkCount;
using effdet_jax::ParallelRows;

using Activation = ffi::Buffer<ffi::F32, 4>;  // NHWC
using KernelTaps = ffi::Buffer<ffi::F32, 3>;  // [kh, kw, C]

struct Geometry {
  int64_t batch, height, width, channels;  // x
  int64_t out_height, out_width;            // dy
  int64_t kernel_h, kernel_w, stride, top, left;
};

// Floor and ceiling of a / b for b > 0 (C++ division truncates toward zero).
int64_t FloorDiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((b - 1 - a) / b); }
int64_t CeilDiv(int64_t a, int64_t b) { return -FloorDiv(-a, b); }

// The output columns [first, last) whose tap j reads inside the row (the rest read padding).
void TapColumns(const Geometry& g, int64_t j, int64_t* first, int64_t* last) {
  *first = std::max<int64_t>(0, CeilDiv(g.left - j, g.stride));
  *last = std::min<int64_t>(g.out_width, FloorDiv(g.width - 1 + g.left - j, g.stride) + 1);
}

// Adds rows [begin, end) of the flattened (batch, output row) range into acc.
void AccumulateRows(const Geometry& g, const float* x, const float* dy, int64_t begin,
                    int64_t end, float* acc) {
  const int64_t c = g.channels;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / g.out_height, oh = r % g.out_height;
    const float* dy_row = dy + (b * g.out_height + oh) * g.out_width * c;
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t ih = oh * g.stride + i - g.top;
      if (ih < 0 || ih >= g.height) continue;
      const float* x_row = x + (b * g.height + ih) * g.width * c;
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        float* __restrict a = acc + (i * g.kernel_w + j) * c;
        int64_t first, last;
        TapColumns(g, j, &first, &last);
        for (int64_t ow = first; ow < last; ++ow) {
          const float* __restrict xv = x_row + (ow * g.stride + j - g.left) * c;
          const float* __restrict gv = dy_row + ow * c;
          for (int64_t k = 0; k < c; ++k) a[k] += xv[k] * gv[k];
        }
      }
    }
  }
}

ffi::Error KernelGrad(ffi::ThreadPool pool, Activation x, Activation dy,
                      ffi::Result<KernelTaps> out, int64_t stride, int64_t top, int64_t left) {
  const auto xd = x.dimensions();
  const auto gd = dy.dimensions();
  const auto od = out->dimensions();
  const Geometry g{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], od[0], od[1], stride, top, left};
  const int64_t size = od[0] * od[1] * od[2];
  const int64_t rows = g.batch * g.out_height;
  const int64_t chunks = ChunkCount(pool, rows, rows * g.out_width * size);
  // One accumulator per chunk, summed in chunk order: the same result every run.
  std::vector<std::vector<float>> acc(chunks, std::vector<float>(size, 0.f));
  const float* xs = x.typed_data();
  const float* dys = dy.typed_data();
  ParallelRows(pool, rows, chunks, [&](int64_t c, int64_t begin, int64_t end) {
    AccumulateRows(g, xs, dys, begin, end, acc[c].data());
  });
  float* result = out->typed_data();
  std::fill(result, result + size, 0.f);
  for (const auto& partial : acc)
    for (int64_t k = 0; k < size; ++k) result[k] += partial[k];
  return ffi::Error::Success();
}

// dx[b, ih, iw, c] = sum over the taps (i, j) reading (ih, iw) of dy[b, oh, ow, c] * k[i, j, c],
// one input row at a time, so rows split over threads never overlap.
void InputGradRows(const Geometry& g, const float* dy, const float* kernel, int64_t begin,
                   int64_t end, float* dx) {
  const int64_t c = g.channels;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / g.height, ih = r % g.height;
    float* __restrict dx_row = dx + (b * g.height + ih) * g.width * c;
    std::fill(dx_row, dx_row + g.width * c, 0.f);
    for (int64_t i = 0; i < g.kernel_h; ++i) {
      const int64_t shifted = ih + g.top - i;  // oh * stride for the output row reading ih
      if (shifted < 0 || shifted % g.stride) continue;
      const int64_t oh = shifted / g.stride;
      if (oh >= g.out_height) continue;
      const float* dy_row = dy + (b * g.out_height + oh) * g.out_width * c;
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const float* __restrict k = kernel + (i * g.kernel_w + j) * c;
        int64_t first, last;
        TapColumns(g, j, &first, &last);
        for (int64_t ow = first; ow < last; ++ow) {
          float* __restrict d = dx_row + (ow * g.stride + j - g.left) * c;
          const float* __restrict gv = dy_row + ow * c;
          for (int64_t q = 0; q < c; ++q) d[q] += gv[q] * k[q];
        }
      }
    }
  }
}

ffi::Error InputGrad(ffi::ThreadPool pool, Activation dy, KernelTaps kernel,
                     ffi::Result<Activation> out, int64_t stride, int64_t top, int64_t left) {
  const auto gd = dy.dimensions();
  const auto kd = kernel.dimensions();
  const auto xd = out->dimensions();
  const Geometry g{xd[0], xd[1], xd[2], xd[3], gd[1], gd[2], kd[0], kd[1], stride, top, left};
  const int64_t rows = g.batch * g.height;
  const int64_t work = g.batch * g.out_height * g.out_width * kd[0] * kd[1] * kd[2];
  const float* dys = dy.typed_data();
  const float* ks = kernel.typed_data();
  float* dx = out->typed_data();
  ParallelRows(pool, rows, ChunkCount(pool, rows, work),
               [&](int64_t, int64_t begin, int64_t end) {
                 InputGradRows(g, dys, ks, begin, end, dx);
               });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffdetDepthwiseKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Activation>()
                                  .Arg<Activation>()
                                  .Ret<KernelTaps>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffdetDepthwiseInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Activation>()
                                  .Arg<KernelTaps>()
                                  .Ret<Activation>()
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("top")
                                  .Attr<int64_t>("left"));
