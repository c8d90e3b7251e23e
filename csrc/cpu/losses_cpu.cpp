// CPU kernels of the loss op family: loops under at::parallel_for around the
// per-element math of csrc/losses/sparse_cls_loss_utils.h (the functions the
// CUDA kernels call). Deterministic for any thread count: the rows are cut
// into chunks of a fixed size (independent of the threads), each chunk's sum
// is written to its own slot, and the slots are added in order.
//
// The inner loops are element-wise over a row's classes with the background
// target t = 0 (no reduction, no library call for float and gamma == 2: the
// compiler vectorises them); the one element of the label is then recomputed
// with its score and overwrites its slot. The forward sums a row's losses from
// a small buffer in a fixed order. Baseline x86-64 code: 4-wide SSE. (An AVX2
// clone as in deform_sampling_cpu.cpp stays scalar: GCC 12's jump threading
// splits exp_neg's clamp into two paths that the AVX2 vectoriser does not
// if-convert; only -fno-thread-jumps for the whole file fixed it in a test.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../losses/losses.h"

namespace tood_ext {
namespace losses {
namespace {



// Rows per chunk: ~32k elements, at least one row. Depends on C only.
inline int64_t rows_per_chunk(int64_t classes) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(classes, 1));
}

constexpr int64_t kColumns = 512;  // classes per buffered block of a row
constexpr int kLanes = 8;          // interleaved partial sums of a block

// Raw pointers of a plan, typed.
template <typename scalar_t>
struct Rows {
  const scalar_t* x;
  const int64_t* labels;
  const scalar_t* scores;
  const scalar_t* cw;  // nullptr: no class weight
  const scalar_t* w;   // nullptr: no per-anchor weight
  int64_t classes;
  explicit Rows(const SparseClsLossPlan& plan)
      : x(plan.pred.const_data_ptr<scalar_t>()),
        labels(plan.labels.const_data_ptr<int64_t>()),
        scores(plan.scores.const_data_ptr<scalar_t>()),
        cw(plan.class_weight.defined() ? plan.class_weight.const_data_ptr<scalar_t>() : nullptr),
        w(plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr),
        classes(plan.classes) {}
};

// Sum of the losses of rows [begin, end), rows in order (double); a row's sum
// times its anchor's weight (in double) when there is one.
template <ClsLossKind K, bool kSquare, bool kWeighted, typename scalar_t>
inline double cls_loss_rows(const Rows<scalar_t>& in,
                            const ClsLossParams<at::opmath_type<scalar_t>>& p, int64_t begin,
                            int64_t end) {
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
      for (int64_t j = 0; j < n; ++j) {  // background targets: vectorised
        const acc_t l = element_loss<K, kSquare>(static_cast<acc_t>(xb[j]), acc_t(0), p);
        buf[j] = kWeighted ? static_cast<acc_t>(in.cw[c0 + j]) * l : l;
      }
      if (label >= c0 && label < c0 + n) {  // the label's element, with its score
        const acc_t l = element_loss<K, kSquare>(static_cast<acc_t>(xr[label]),
                                                 static_cast<acc_t>(in.scores[r]), p);
        buf[label - c0] = kWeighted ? static_cast<acc_t>(in.cw[label]) * l : l;
      }
      int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes) {
        for (int k = 0; k < kLanes; ++k) lanes[k] += buf[j + k];
      }
      for (; j < n; ++j) lanes[j % kLanes] += buf[j];
    }
    acc_t row = 0;
    for (int k = 0; k < kLanes; ++k) row += lanes[k];
    sum += in.w ? static_cast<double>(row) * static_cast<double>(in.w[r])
                : static_cast<double>(row);
  }
  return sum;
}

// grad_pred of rows [begin, end): gw * dL/dx, gw = g (times the anchor's weight)
// (times the class weight).
template <ClsLossKind K, bool kSquare, bool kWeighted, typename scalar_t>
inline void cls_grad_rows(const Rows<scalar_t>& in,
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
      gr[c] = static_cast<scalar_t>((kWeighted ? g_r * static_cast<acc_t>(in.cw[c]) : g_r) * d);
    }
    const int64_t label = in.labels[r];
    if (label >= 0) {
      const acc_t d = element_grad<K, kSquare>(static_cast<acc_t>(xr[label]),
                                               static_cast<acc_t>(in.scores[r]), p);
      gr[label] =
          static_cast<scalar_t>((kWeighted ? g_r * static_cast<acc_t>(in.cw[label]) : g_r) * d);
    }
  }
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
  const int64_t per = rows_per_chunk(plan.classes);
  const int64_t chunks = (plan.rows + per - 1) / per;
  at::Tensor partial = at::empty({chunks}, plan.pred.options().dtype(at::kDouble));
  double* part = partial.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Rows<scalar_t> in(plan);
    const ClsLossParams<acc_t> p = plan.params<acc_t>();
    dispatch_cls_loss(plan.kind, plan.gamma, [&](auto kind_c, auto square_c) {
      constexpr ClsLossKind K = decltype(kind_c)::value;
      constexpr bool kSquare = decltype(square_c)::value;
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t ch = begin; ch < end; ++ch) {
          const int64_t r0 = ch * per, r1 = std::min(plan.rows, (ch + 1) * per);
          part[ch] = in.cw ? cls_loss_rows<K, kSquare, true>(in, p, r0, r1)
                           : cls_loss_rows<K, kSquare, false>(in, p, r0, r1);
        }
      });
    });
  });
  double total = 0;
  for (int64_t ch = 0; ch < chunks; ++ch) total += part[ch];  // fixed order
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
  at::Tensor grad_pred = at::empty(plan.pred.sizes(), plan.pred.options());
  if (plan.numel() == 0) return grad_pred.view(pred.sizes());
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Rows<scalar_t> in(plan);
    const ClsLossParams<acc_t> p = plan.params<acc_t>();
    const acc_t g = static_cast<acc_t>(plan.grad.item<double>());
    scalar_t* gx = grad_pred.mutable_data_ptr<scalar_t>();
    dispatch_cls_loss(plan.kind, plan.gamma, [&](auto kind_c, auto square_c) {
      constexpr ClsLossKind K = decltype(kind_c)::value;
      constexpr bool kSquare = decltype(square_c)::value;
      at::parallel_for(0, plan.rows, rows_per_chunk(plan.classes), [&](int64_t b, int64_t e) {
        if (in.cw) {
          cls_grad_rows<K, kSquare, true>(in, p, g, gx, b, e);
        } else {
          cls_grad_rows<K, kSquare, false>(in, p, g, gx, b, e);
        }
      });
    });
  });
  return grad_pred.view(pred.sizes());
}

// ---- dfl_loss -------------------------------------------------------------------

at::Tensor dfl_loss_cpu(const at::Tensor& pred_dist, const at::Tensor& target,
                        const c10::optional<at::Tensor>& weight) {
  const DflLossPlan plan = prepare_dfl_loss(pred_dist, target, weight);
  at::Tensor out = at::zeros({}, plan.loss_options);
  if (plan.rows == 0) return out;
  const int64_t per = rows_per_chunk(plan.bins);
  const int64_t chunks = (plan.rows + per - 1) / per;
  at::Tensor partial = at::empty({chunks}, plan.pred.options().dtype(at::kDouble));
  double* part = partial.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "dfl_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = plan.pred.const_data_ptr<scalar_t>();
    const scalar_t* y = plan.target.const_data_ptr<scalar_t>();
    const scalar_t* w = plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
    const int64_t R = plan.bins;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ch = begin; ch < end; ++ch) {
        const int64_t r1 = std::min(plan.rows, (ch + 1) * per);
        double sum = 0;
        for (int64_t r = ch * per; r < r1; ++r) {
          const acc_t l = dfl_row_loss<acc_t>(x + r * R, R, static_cast<acc_t>(y[r]));
          sum += static_cast<double>(w ? static_cast<acc_t>(w[r]) * l : l);
        }
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
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "dfl_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = plan.pred.const_data_ptr<scalar_t>();
    const scalar_t* y = plan.target.const_data_ptr<scalar_t>();
    const scalar_t* w = plan.weight.defined() ? plan.weight.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gx = grad_pred.mutable_data_ptr<scalar_t>();
    const acc_t g = static_cast<acc_t>(plan.grad.item<double>());
    const int64_t R = plan.bins;
    at::parallel_for(0, plan.rows, rows_per_chunk(R), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const acc_t scale = w ? g * static_cast<acc_t>(w[r]) : g;
        dfl_row_grad<acc_t>(x + r * R, R, static_cast<acc_t>(y[r]), scale, gx + r * R);
      }
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
