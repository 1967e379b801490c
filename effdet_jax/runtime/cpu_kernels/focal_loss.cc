// The sigmoid focal loss of the class head, its sum and its gradient in one
// pass, as an XLA:CPU FFI handler (registered by `__init__.py`).
//
// Over B x anchors x classes elements XLA:CPU runs the loss as several fusions,
// each evaluating or storing exp/log/pow over the whole tensor for the forward
// and again for the backward. Here every logit is read once, its loss added to
// the sum and its gradient written, with exp and log as polynomials (Cephes'
// single-precision coefficients, about 1 ulp) so the loop vectorizes.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel_rows.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using Logits = ffi::Buffer<ffi::F32, 2>;   // [rows, classes]
using Targets = ffi::Buffer<ffi::S32, 1>;  // [rows]
using Scalar = ffi::Buffer<ffi::F32, 0>;

using effdet_jax::ChunkCount;
using effdet_jax::ParallelRows;

// exp(x) for x <= 0 (0 below the float range).
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.3f);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r2 + r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &e, sizeof(bits));
  bits += static_cast<int32_t>(n) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return x <= -87.3f ? 0.0f : out;
}

// log(x) for normal x > 0.
inline float LogPositive(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t exponent = ((bits >> 23) & 0xff) - 126;
  bits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, sizeof(m));
  // Keep m in [sqrt(1/2), sqrt(2)) around 1.
  const bool low = m < 0.707106781186547524f;
  exponent -= low ? 1 : 0;
  const float f = (low ? m + m : m) - 1.0f;
  const float f2 = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  const float e = static_cast<float>(exponent);
  float y = p * f * f2 + e * -2.12194440e-4f - 0.5f * f2;
  return f + y + e * 0.693359375f;
}

// log(1 + e) for e in [0, 1], exact to a few ulp also where 1 + e rounds to 1.
inline float Log1pUnit(float e) {
  const float u = 1.0f + e;
  const float d = u - 1.0f;
  return d == 0.0f ? e : LogPositive(u) * (e / d);
}

// q^gamma and q^(gamma - 1) for q in [0, 1], without pow for the usual gammas;
// at q = 0 a power is 0 (where the gradient's other factor is 0 too), except q^0 = 1.
enum class Gamma { kOnePointFive, kTwo, kOther };

template <Gamma kind>
inline void Powers(float q, float gamma, float* q_gamma, float* q_gamma_1) {
  if constexpr (kind == Gamma::kOnePointFive) {
    const float s = std::sqrt(q);
    *q_gamma = q * s;
    *q_gamma_1 = s;
  } else if constexpr (kind == Gamma::kTwo) {
    *q_gamma = q * q;
    *q_gamma_1 = q;
  } else {
    *q_gamma = q > 0.0f ? std::pow(q, gamma) : (gamma == 0.0f ? 1.0f : 0.0f);
    *q_gamma_1 = q > 0.0f ? std::pow(q, gamma - 1.0f) : (gamma == 1.0f ? 1.0f : 0.0f);
  }
}

struct Params {
  int64_t classes;
  int32_t ignored;  // the target of an anchor without loss
  float alpha, gamma, smoothing;
};

// Loss and gradient of rows [begin, end); returns the rows' loss sum.
template <Gamma kind>
double FocalRows(const Params& p, const float* logits, const int32_t* targets, int64_t begin,
                 int64_t end, float* grad) {
  double total = 0.0;
  // Each row's losses are summed after its loop, which then vectorizes.
  std::vector<float> losses(p.classes);
  const float on = 1.0f - p.smoothing + 0.5f * p.smoothing, off = 0.5f * p.smoothing;
  for (int64_t r = begin; r < end; ++r) {
    const float* __restrict x_row = logits + r * p.classes;
    float* __restrict g_row = grad + r * p.classes;
    const int32_t target = targets[r];
    if (target == p.ignored) {
      std::fill(g_row, g_row + p.classes, 0.0f);
      continue;
    }
    float* __restrict loss = losses.data();
#pragma GCC ivdep
    for (int64_t c = 0; c < p.classes; ++c) {
      const float x = x_row[c];
      const bool positive = c == target;
      const float e = ExpNonPositive(-std::fabs(x));
      const float inv = 1.0f / (1.0f + e);
      const float prob = x >= 0.0f ? inv : e * inv;           // sigmoid(x)
      const float one_minus = x >= 0.0f ? e * inv : inv;      // 1 - sigmoid(x)
      const float q = positive ? one_minus : prob;            // 1 - p_t
      const float alpha_t = positive ? p.alpha : 1.0f - p.alpha;
      const float z = positive ? on : off;                    // smoothed target
      const float ce = std::max(x, 0.0f) - x * z + Log1pUnit(e);
      float q_gamma, q_gamma_1;
      Powers<kind>(q, p.gamma, &q_gamma, &q_gamma_1);
      loss[c] = alpha_t * q_gamma * ce;
      const float d_q = (positive ? -1.0f : 1.0f) * prob * one_minus;
      g_row[c] = alpha_t * (p.gamma * q_gamma_1 * d_q * ce + q_gamma * (prob - z));
    }
    for (int64_t c = 0; c < p.classes; ++c) total += loss[c];
  }
  return total;
}

template <Gamma kind>
void Run(ffi::ThreadPool& pool, const Params& params, const float* logits, const int32_t* targets,
         int64_t rows, float* sum, float* grad) {
  const int64_t chunks = ChunkCount(pool, rows, rows * params.classes * 16);
  std::vector<double> partial(chunks, 0.0);
  ParallelRows(pool, rows, chunks, [&](int64_t c, int64_t begin, int64_t end) {
    partial[c] = FocalRows<kind>(params, logits, targets, begin, end, grad);
  });
  double total = 0.0;
  for (double v : partial) total += v;  // in chunk order: the same sum every run
  *sum = static_cast<float>(total);
}

// targets: a class, or anything else for background, or `ignored`.
ffi::Error FocalLoss(ffi::ThreadPool pool, Logits logits, Targets targets, ffi::Result<Scalar> sum,
                     ffi::Result<Logits> grad, int32_t ignored, float alpha, float gamma,
                     float smoothing) {
  const int64_t rows = logits.dimensions()[0];
  const Params params{logits.dimensions()[1], ignored, alpha, gamma, smoothing};
  const auto run = gamma == 1.5f ? Run<Gamma::kOnePointFive>
                   : gamma == 2.0f ? Run<Gamma::kTwo> : Run<Gamma::kOther>;
  run(pool, params, logits.typed_data(), targets.typed_data(), rows, sum->typed_data(),
      grad->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffdetFocalLoss, FocalLoss,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Logits>()
                                  .Arg<Targets>()
                                  .Ret<Scalar>()
                                  .Ret<Logits>()
                                  .Attr<int32_t>("ignored")
                                  .Attr<float>("alpha")
                                  .Attr<float>("gamma")
                                  .Attr<float>("smoothing"));
