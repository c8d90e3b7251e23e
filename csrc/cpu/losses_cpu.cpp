// CPU kernels of the loss op family: loops under at::parallel_for around the
// per-element math of csrc/losses/sparse_cls_loss_utils.h (the functions the
// CUDA kernels call).
//
// The inner loops are element-wise over the elements of background target
// t = 0 (no reduction, no library call for float and gamma == 2, weights as
// plain products: GCC vectorises them); an anchor's one element of its label is
// handled apart with its score. They run inside with_cpu_isa (csrc/cpu/deform/
// isa.h): compiled for the baseline (4-wide SSE) and for AVX2 (8-wide), picked
// at run time (TOOD_EXT_CPU_ISA=generic forces the baseline); both do the same
// IEEE operations in the same order (no FMA: csrc/correctness_flags.txt), so
// they give the same bits.
//
// Two layouts of pred (SparseClsLossPlan): row-major (an anchor's C classes
// contiguous) and class-major (a (..., C, A) buffer viewed as (..., A, C), read
// in place; grad_pred written in the same layout).
//
// Deterministic for any thread count: the work is cut into chunks of a fixed
// size (depending on the shape only, never on the threads), each chunk's sum is
// written to its own slot, and the slots are added in order. Forward reduction
// order:
// * row-major: chunks of rows; within a row, its elements (the label's with its
//   score) in blocks of kColumns classes, each block into kLanes interleaved
//   float partial sums (element j into lane j % kLanes), the lanes added in
//   order into the row's sum, which is added (in double; times the anchor's
//   weight, in double) to the chunk's.
// * class-major: first the lines (image, class) of A anchors with all targets
//   0, in chunks of lines, each line as a row-major row (elements j in lane
//   j % kLanes; each element times its anchor's weight, in float, as the CUDA
//   kernel); then, in chunks of anchor rows, each foreground anchor's
//   correction L(x, score) - L(x, 0) of its label's element (in double); the
//   loss is the sum of the line chunks' slots, then of the correction chunks'.
// Gradients: (g * anchor weight) * class weight * dL/dx, the same bits in both
// layouts and on CUDA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../losses/losses.h"
#include "deform/isa.h"

namespace tood_ext {
namespace losses {
namespace {

using deform::cpu_kernels::with_cpu_isa;

// Rows per chunk: ~32k elements, at least one row. Depends on C only.
inline int64_t rows_per_chunk(int64_t classes) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(classes, 1));
}

constexpr int64_t kColumns = 512;         // elements per buffered block of a row / line
constexpr int kLanes = 8;                 // interleaved partial sums of a block
constexpr int64_t kFixupRows = 32768;     // anchor rows per chunk of the label corrections

// Whether the AVX2 clones may run: the CPU has AVX2 and TOOD_EXT_CPU_ISA is not
// "generic" (the environment as of the first call).
bool use_avx2() {
  static const bool avx2 = [] {
#ifdef TOOD_CPU_AVX2_CLONE
    const char* isa = std::getenv("TOOD_EXT_CPU_ISA");
    if (isa == nullptr || std::strcmp(isa, "generic") != 0) {
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") != 0;
    }
#endif
    return false;
  }();
  return avx2;
}

// Raw pointers of a plan, typed. Absent weights point at ones (products by
// 1 are exact: the same bits as no product, one loop for both cases).
template <typename scalar_t>
struct Rows {
  const scalar_t* x;
  const int64_t* labels;
  const scalar_t* scores;
  const scalar_t* cw;  // (C,) class weight, or ones
  const scalar_t* w;   // (rows,) per-anchor weight, or nullptr
  int64_t classes;
  int64_t anchors;     // class-major: A; row-major: 0
  at::Tensor ones;     // keeps the ones alive
  explicit Rows(const SparseClsLossPlan& plan)
      : x(plan.pred.const_data_ptr<scalar_t>()),
        labels(plan.labels.const_data_ptr<int64_t>()),
        scores(plan.scores.const_data_ptr<scalar_t>()),
        w(plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr),
        classes(plan.classes),
        anchors(plan.anchors) {
    if (plan.class_weight.defined()) {
      cw = plan.class_weight.const_data_ptr<scalar_t>();
    } else {
      ones = at::ones({plan.classes}, plan.pred.options());
      cw = ones.const_data_ptr<scalar_t>();
    }
  }
  // Class-major: the element (row r = l * A + a, class c) in memory.
  int64_t cm_index(int64_t r, int64_t c) const {
    const int64_t l = r / anchors, a = r - l * anchors;
    return (l * classes + c) * anchors + a;
  }
};

#define TOOD_LOSS_INLINE inline __attribute__((always_inline))

// Adds buf[0, n) into the lanes, element j into lane j % kLanes.
template <typename acc_t>
TOOD_LOSS_INLINE void add_to_lanes(acc_t* lanes, const acc_t* buf, int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] += buf[j + k];
  }
  for (; j < n; ++j) lanes[j % kLanes] += buf[j];
}

template <typename acc_t>
TOOD_LOSS_INLINE acc_t lanes_sum(const acc_t* lanes) {
  acc_t s = 0;
  for (int k = 0; k < kLanes; ++k) s += lanes[k];
  return s;
}

// Row-major: sum of the losses of rows [begin, end), rows in order (double).
template <ClsLossKind K, bool kSquare, typename scalar_t>
TOOD_LOSS_INLINE double cls_loss_rows(const Rows<scalar_t>& in,
                                      const ClsLossParams<at::opmath_type<scalar_t>>& p,
                                      int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = in.classes;
  acc_t buf[kColumns];
  double sum = 0;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t label = in.labels[r];
    const scalar_t* xr = in.x + r * C;
    acc_t lanes[kLanes] = {};
    for (int64_t c0 = 0; c0 < C; c0 += kColumns) {
      const int64_t n = C - c0 < kColumns ? C - c0 : kColumns;
      const scalar_t* xb = xr + c0;
      const scalar_t* wb = in.cw + c0;
      for (int64_t j = 0; j < n; ++j) {  // background targets: vectorised
        buf[j] = static_cast<acc_t>(wb[j]) *
                 element_loss<K, kSquare>(static_cast<acc_t>(xb[j]), acc_t(0), p);
      }
      if (label >= c0 && label < c0 + n) {  // the label's element, with its score
        buf[label - c0] = static_cast<acc_t>(in.cw[label]) *
                          element_loss<K, kSquare>(static_cast<acc_t>(xr[label]),
                                                   static_cast<acc_t>(in.scores[r]), p);
      }
      add_to_lanes(lanes, buf, n);
    }
    const double row = static_cast<double>(lanes_sum(lanes));
    sum += in.w ? row * static_cast<double>(in.w[r]) : row;
  }
  return sum;
}

// Class-major: sum of the losses of lines [begin, end) (line l * C + c: class c
// of the A anchors of leading index l) with all targets 0, lines in order.
template <ClsLossKind K, bool kSquare, bool kRowWeight, typename scalar_t>
TOOD_LOSS_INLINE double cls_loss_lines(const Rows<scalar_t>& in,
                                       const ClsLossParams<at::opmath_type<scalar_t>>& p,
                                       int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t A = in.anchors, C = in.classes;
  acc_t buf[kColumns];
  double sum = 0;
  for (int64_t line = begin; line < end; ++line) {
    const acc_t w = static_cast<acc_t>(in.cw[line % C]);
    const scalar_t* xl = in.x + line * A;
    const scalar_t* wl = kRowWeight ? in.w + line / C * A : nullptr;  // its anchors' weights
    acc_t lanes[kLanes] = {};
    for (int64_t a0 = 0; a0 < A; a0 += kColumns) {
      const int64_t n = A - a0 < kColumns ? A - a0 : kColumns;
      const scalar_t* xb = xl + a0;
      for (int64_t j = 0; j < n; ++j) {  // vectorised
        const acc_t l = w * element_loss<K, kSquare>(static_cast<acc_t>(xb[j]), acc_t(0), p);
        buf[j] = kRowWeight ? static_cast<acc_t>(wl[a0 + j]) * l : l;
      }
      add_to_lanes(lanes, buf, n);
    }
    sum += static_cast<double>(lanes_sum(lanes));
  }
  return sum;
}

// Class-major: sum over the foreground anchors of rows [begin, end) of the
// label element's L(x, score) - L(x, 0) (each weighted as in cls_loss_lines).
template <ClsLossKind K, bool kSquare, typename scalar_t>
TOOD_LOSS_INLINE double cls_loss_fixups(const Rows<scalar_t>& in,
                                        const ClsLossParams<at::opmath_type<scalar_t>>& p,
                                        int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  double sum = 0;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t label = in.labels[r];
    if (label < 0) continue;
    const acc_t x = static_cast<acc_t>(in.x[in.cm_index(r, label)]);
    const acc_t w = static_cast<acc_t>(in.cw[label]);
    acc_t with_score = w * element_loss<K, kSquare>(x, static_cast<acc_t>(in.scores[r]), p);
    acc_t background = w * element_loss<K, kSquare>(x, acc_t(0), p);
    if (in.w) {
      with_score = static_cast<acc_t>(in.w[r]) * with_score;
      background = static_cast<acc_t>(in.w[r]) * background;
    }
    sum += static_cast<double>(with_score) - static_cast<double>(background);
  }
  return sum;
}

// Row-major grad_pred of rows [begin, end): (g * class weight) * dL/dx.
template <ClsLossKind K, bool kSquare, typename scalar_t>
TOOD_LOSS_INLINE void cls_grad_rows(const Rows<scalar_t>& in,
                                    const ClsLossParams<at::opmath_type<scalar_t>>& p,
                                    at::opmath_type<scalar_t> g, scalar_t* gx, int64_t begin,
                                    int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = in.classes;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* xr = in.x + r * C;
    scalar_t* gr = gx + r * C;
    const acc_t g_r = in.w ? g * static_cast<acc_t>(in.w[r]) : g;
    for (int64_t c = 0; c < C; ++c) {  // background targets: vectorised
      const acc_t d = element_grad<K, kSquare>(static_cast<acc_t>(xr[c]), acc_t(0), p);
      gr[c] = static_cast<scalar_t>((g_r * static_cast<acc_t>(in.cw[c])) * d);
    }
    const int64_t label = in.labels[r];
    if (label >= 0) {
      const acc_t d = element_grad<K, kSquare>(static_cast<acc_t>(xr[label]),
                                               static_cast<acc_t>(in.scores[r]), p);
      gr[label] = static_cast<scalar_t>((g_r * static_cast<acc_t>(in.cw[label])) * d);
    }
  }
}

// Class-major grad_pred of lines [begin, end), all targets 0.
template <ClsLossKind K, bool kSquare, bool kRowWeight, typename scalar_t>
TOOD_LOSS_INLINE void cls_grad_lines(const Rows<scalar_t>& in,
                                     const ClsLossParams<at::opmath_type<scalar_t>>& p,
                                     at::opmath_type<scalar_t> g, scalar_t* gx, int64_t begin,
                                     int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t A = in.anchors, C = in.classes;
  for (int64_t line = begin; line < end; ++line) {
    const acc_t cw = static_cast<acc_t>(in.cw[line % C]);
    const scalar_t* xl = in.x + line * A;
    const scalar_t* wl = kRowWeight ? in.w + line / C * A : nullptr;
    scalar_t* gl = gx + line * A;
    for (int64_t a = 0; a < A; ++a) {  // vectorised
      const acc_t g_r = kRowWeight ? g * static_cast<acc_t>(wl[a]) : g;
      gl[a] = static_cast<scalar_t>(
          (g_r * cw) * element_grad<K, kSquare>(static_cast<acc_t>(xl[a]), acc_t(0), p));
    }
  }
}

// Class-major: the label elements of the foreground anchors of rows [begin, end).
template <ClsLossKind K, bool kSquare, typename scalar_t>
TOOD_LOSS_INLINE void cls_grad_fixups(const Rows<scalar_t>& in,
                                      const ClsLossParams<at::opmath_type<scalar_t>>& p,
                                      at::opmath_type<scalar_t> g, scalar_t* gx, int64_t begin,
                                      int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t label = in.labels[r];
    if (label < 0) continue;
    const int64_t i = in.cm_index(r, label);
    const acc_t d = element_grad<K, kSquare>(static_cast<acc_t>(in.x[i]),
                                             static_cast<acc_t>(in.scores[r]), p);
    const acc_t g_r = in.w ? g * static_cast<acc_t>(in.w[r]) : g;
    gx[i] = static_cast<scalar_t>((g_r * static_cast<acc_t>(in.cw[label])) * d);
  }
}

// Runs fn(begin, end) on the chunks [k * per, min((k + 1) * per, n)) of [0, n)
// in parallel, each chunk's sum into its slot of part (part[k]).
template <typename Fn>
void chunked_sums(int64_t n, int64_t per, double* part, const Fn& fn) {
  const int64_t chunks = (n + per - 1) / per;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      part[ch] = fn(ch * per, std::min(n, (ch + 1) * per));
    }
  });
}

at::Tensor sparse_target_cls_loss_cpu(const at::Tensor& pred, const at::Tensor& labels,
                                      const at::Tensor& scores, c10::string_view kind,
                                      double gamma, c10::optional<double> alpha, bool activated,
                                      const c10::optional<at::Tensor>& class_weight,
                                      const c10::optional<at::Tensor>& weight) {
  const SparseClsLossPlan plan = prepare_sparse_target_cls_loss(
      pred, labels, scores, kind, gamma, alpha, activated, class_weight, weight);
  at::Tensor out = at::zeros({}, plan.loss_options);
  if (plan.numel() == 0) return out;
  const bool cm = plan.class_major();
  // row-major: chunks of rows; class-major: chunks of lines, then of fixup rows
  const int64_t units = cm ? plan.rows / plan.anchors * plan.classes : plan.rows;
  const int64_t per = rows_per_chunk(cm ? plan.anchors : plan.classes);
  const int64_t chunks = (units + per - 1) / per;
  const int64_t fix_chunks = cm ? (plan.rows + kFixupRows - 1) / kFixupRows : 0;
  at::Tensor partial = at::empty({chunks + fix_chunks}, plan.pred.options().dtype(at::kDouble));
  double* part = partial.mutable_data_ptr<double>();
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Rows<scalar_t> in(plan);
    const ClsLossParams<acc_t> p = plan.params<acc_t>();
    dispatch_cls_loss(plan.kind, plan.gamma, [&](auto kind_c, auto square_c) {
      constexpr ClsLossKind K = decltype(kind_c)::value;
      constexpr bool kSquare = decltype(square_c)::value;
      chunked_sums(units, per, part, [&](int64_t b, int64_t e) {
        double s = 0;
        with_cpu_isa(avx2, [&]() TOOD_INLINE_BODY {
          if (!cm) {
            s = cls_loss_rows<K, kSquare>(in, p, b, e);
          } else if (in.w) {
            s = cls_loss_lines<K, kSquare, true>(in, p, b, e);
          } else {
            s = cls_loss_lines<K, kSquare, false>(in, p, b, e);
          }
        });
        return s;
      });
      if (cm) {
        chunked_sums(plan.rows, kFixupRows, part + chunks, [&](int64_t b, int64_t e) {
          return cls_loss_fixups<K, kSquare>(in, p, b, e);
        });
      }
    });
  });
  double total = 0;
  for (int64_t ch = 0; ch < chunks + fix_chunks; ++ch) total += part[ch];  // fixed order
  out.fill_(total);
  return out;
}

at::Tensor sparse_target_cls_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred,
                                               const at::Tensor& labels, const at::Tensor& scores,
                                               c10::string_view kind, double gamma,
                                               c10::optional<double> alpha, bool activated,
                                               const c10::optional<at::Tensor>& class_weight,
                                               const c10::optional<at::Tensor>& weight) {
  const SparseClsLossPlan plan = prepare_sparse_target_cls_loss(
      pred, labels, scores, kind, gamma, alpha, activated, class_weight, weight, &grad);
  at::Tensor grad_pred = grad_pred_like(plan);
  if (plan.numel() == 0) return grad_pred.view(pred.sizes());
  const bool cm = plan.class_major();
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Rows<scalar_t> in(plan);
    const ClsLossParams<acc_t> p = plan.params<acc_t>();
    const acc_t g = static_cast<acc_t>(plan.grad.item<double>());
    scalar_t* gx = grad_pred.mutable_data_ptr<scalar_t>();
    dispatch_cls_loss(plan.kind, plan.gamma, [&](auto kind_c, auto square_c) {
      constexpr ClsLossKind K = decltype(kind_c)::value;
      constexpr bool kSquare = decltype(square_c)::value;
      if (!cm) {
        at::parallel_for(0, plan.rows, rows_per_chunk(plan.classes), [&](int64_t b, int64_t e) {
          with_cpu_isa(avx2, [&]() TOOD_INLINE_BODY {
            cls_grad_rows<K, kSquare>(in, p, g, gx, b, e);
          });
        });
        return;
      }
      const int64_t lines = plan.rows / plan.anchors * plan.classes;
      at::parallel_for(0, lines, rows_per_chunk(plan.anchors), [&](int64_t b, int64_t e) {
        with_cpu_isa(avx2, [&]() TOOD_INLINE_BODY {
          if (in.w) {
            cls_grad_lines<K, kSquare, true>(in, p, g, gx, b, e);
          } else {
            cls_grad_lines<K, kSquare, false>(in, p, g, gx, b, e);
          }
        });
      });
      // then the label elements (after every line is written)
      at::parallel_for(0, plan.rows, kFixupRows, [&](int64_t b, int64_t e) {
        cls_grad_fixups<K, kSquare>(in, p, g, gx, b, e);
      });
    });
  });
  return grad_pred;
}

// ---- dfl_loss -------------------------------------------------------------------

// Rows [r0, r1): kBins > 0 is the bin count known at compile time (16: ultralytics'
// reg_max; the lane loops of dfl_loss_utils.h then unroll into two 8-wide vectors in
// the AVX2 clone), 0 reads it from `bins`. The same operations in the same order
// either way.
template <int64_t kBins, typename acc_t, typename scalar_t>
TOOD_LOSS_INLINE double dfl_rows_loss(const scalar_t* x, const scalar_t* y, const scalar_t* w,
                                      int64_t bins, int64_t r0, int64_t r1) {
  const int64_t R = kBins > 0 ? kBins : bins;
  double sum = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const acc_t l = dfl_row_loss<acc_t>(x + r * R, R, static_cast<acc_t>(y[r]));
    sum += static_cast<double>(w ? static_cast<acc_t>(w[r]) * l : l);
  }
  return sum;
}

template <int64_t kBins, typename acc_t, typename scalar_t>
TOOD_LOSS_INLINE void dfl_rows_grad(const scalar_t* x, const scalar_t* y, const scalar_t* w,
                                    acc_t g, int64_t bins, int64_t r0, int64_t r1,
                                    scalar_t* gx) {
  const int64_t R = kBins > 0 ? kBins : bins;
  for (int64_t r = r0; r < r1; ++r) {
    const acc_t scale = w ? g * static_cast<acc_t>(w[r]) : g;
    dfl_row_grad<acc_t>(x + r * R, R, static_cast<acc_t>(y[r]), scale, gx + r * R);
  }
}

at::Tensor dfl_loss_cpu(const at::Tensor& pred_dist, const at::Tensor& target,
                        const c10::optional<at::Tensor>& weight) {
  const DflLossPlan plan = prepare_dfl_loss(pred_dist, target, weight);
  at::Tensor out = at::zeros({}, plan.loss_options);
  if (plan.rows == 0) return out;
  const int64_t per = rows_per_chunk(plan.bins);
  const int64_t chunks = (plan.rows + per - 1) / per;
  at::Tensor partial = at::empty({chunks}, plan.pred.options().dtype(at::kDouble));
  double* part = partial.mutable_data_ptr<double>();
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "dfl_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = plan.pred.const_data_ptr<scalar_t>();
    const scalar_t* y = plan.target.const_data_ptr<scalar_t>();
    const scalar_t* w = plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
    const int64_t R = plan.bins;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch) {
        const int64_t r0 = ch * per, r1 = std::min(plan.rows, (ch + 1) * per);
        double sum = 0;
        with_cpu_isa(avx2, [&]() TOOD_INLINE_BODY {
          sum = R == 16 ? dfl_rows_loss<16, acc_t>(x, y, w, R, r0, r1)
                        : dfl_rows_loss<0, acc_t>(x, y, w, R, r0, r1);
        });
        part[ch] = sum;
      }
    });
  });
  double total = 0;
  for (int64_t ch = 0; ch < chunks; ++ch) total += part[ch];  // fixed order
  out.fill_(total);
  return out;
}

at::Tensor dfl_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& pred_dist,
                                 const at::Tensor& target,
                                 const c10::optional<at::Tensor>& weight) {
  const DflLossPlan plan = prepare_dfl_loss(pred_dist, target, weight, &grad);
  at::Tensor grad_pred = at::empty(plan.pred.sizes(), plan.pred.options());
  if (plan.numel() == 0) return grad_pred.view(pred_dist.sizes());
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "dfl_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = plan.pred.const_data_ptr<scalar_t>();
    const scalar_t* y = plan.target.const_data_ptr<scalar_t>();
    const scalar_t* w = plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gx = grad_pred.mutable_data_ptr<scalar_t>();
    const acc_t g = static_cast<acc_t>(plan.grad.item<double>());
    const int64_t R = plan.bins;
    at::parallel_for(0, plan.rows, rows_per_chunk(R), [&](int64_t begin, int64_t end) {
      with_cpu_isa(avx2, [&]() TOOD_INLINE_BODY {
        if (R == 16) {
          dfl_rows_grad<16, acc_t>(x, y, w, g, R, begin, end, gx);
        } else {
          dfl_rows_grad<0, acc_t>(x, y, w, g, R, begin, end, gx);
        }
      });
    });
  });
  return grad_pred.view(pred_dist.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("sparse_target_cls_loss", &sparse_target_cls_loss_cpu);
  m.impl("_sparse_target_cls_loss_backward", &sparse_target_cls_loss_backward_cpu);
  m.impl("dfl_loss", &dfl_loss_cpu);
  m.impl("_dfl_loss_backward", &dfl_loss_backward_cpu);
}

}  // namespace losses
}  // namespace tood_ext
