// CPU kernels of the loss op family: loops under at::parallel_for around the
// per-element math of csrc/losses/sparse_cls_loss_utils.h (the functions the
// CUDA kernels call). Deterministic for any thread count: the rows are cut
// into chunks of a fixed size (independent of the threads), each chunk's sum
// is written to its own slot, and the slots are added in order.
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

template <ClsLossKind K, typename scalar_t>
double cls_loss_rows(const SparseClsLossPlan& plan, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = plan.classes;
  const scalar_t* x = plan.pred.const_data_ptr<scalar_t>();
  const int64_t* labels = plan.labels.const_data_ptr<int64_t>();
  const scalar_t* scores = plan.scores.const_data_ptr<scalar_t>();
  const scalar_t* cw = plan.class_weight.defined() ? plan.class_weight.const_data_ptr<scalar_t>()
                                                   : nullptr;
  const ClsLossParams<acc_t> p = plan.params<acc_t>();
  double sum = 0;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t label = labels[r];
    const acc_t s = label >= 0 ? static_cast<acc_t>(scores[r]) : acc_t(0);
    const scalar_t* xr = x + r * C;
    acc_t row = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t t = c == label ? s : acc_t(0);
      const acc_t l = element_loss<K>(static_cast<acc_t>(xr[c]), t, p);
      row += cw ? static_cast<acc_t>(cw[c]) * l : l;
    }
    sum += static_cast<double>(row);
  }
  return sum;
}

at::Tensor sparse_target_cls_loss_cpu(const at::Tensor& pred, const at::Tensor& labels,
                                      const at::Tensor& scores, c10::string_view kind,
                                      double gamma, double alpha, bool activated,
                                      const c10::optional<at::Tensor>& class_weight) {
  const SparseClsLossPlan plan = prepare_sparse_target_cls_loss(pred, labels, scores, kind, gamma,
                                                                alpha, activated, class_weight);
  at::Tensor out = at::zeros({}, plan.loss_options);
  if (plan.numel() == 0) return out;
  const int64_t per = rows_per_chunk(plan.classes);
  const int64_t chunks = (plan.rows + per - 1) / per;
  at::Tensor partial = at::empty({chunks}, plan.pred.options().dtype(at::kDouble));
  double* part = partial.mutable_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_cpu", [&] {
    dispatch_cls_loss_kind(plan.kind, [&](auto kind_c) {
      constexpr ClsLossKind K = decltype(kind_c)::value;
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t ch = begin; ch < end; ++ch) {
          part[ch] = cls_loss_rows<K, scalar_t>(plan, ch * per,
                                                std::min(plan.rows, (ch + 1) * per));
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
                                               c10::string_view kind, double gamma, double alpha,
                                               bool activated,
                                               const c10::optional<at::Tensor>& class_weight) {
  const SparseClsLossPlan plan = prepare_sparse_target_cls_loss(
      pred, labels, scores, kind, gamma, alpha, activated, class_weight, &grad);
  at::Tensor grad_pred = at::empty(plan.pred.sizes(), plan.pred.options());
  if (plan.numel() == 0) return grad_pred.view(pred.sizes());
  AT_DISPATCH_FLOATING_TYPES(plan.pred.scalar_type(), "sparse_target_cls_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = plan.classes;
    const scalar_t* x = plan.pred.const_data_ptr<scalar_t>();
    const int64_t* lab = plan.labels.const_data_ptr<int64_t>();
    const scalar_t* sc = plan.scores.const_data_ptr<scalar_t>();
    const scalar_t* cw =
        plan.class_weight.defined() ? plan.class_weight.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gx = grad_pred.mutable_data_ptr<scalar_t>();
    const acc_t g = static_cast<acc_t>(plan.grad.item<double>());
    const ClsLossParams<acc_t> p = plan.params<acc_t>();
    dispatch_cls_loss_kind(plan.kind, [&](auto kind_c) {
      constexpr ClsLossKind K = decltype(kind_c)::value;
      at::parallel_for(0, plan.rows, rows_per_chunk(C), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t label = lab[r];
          const acc_t s = label >= 0 ? static_cast<acc_t>(sc[r]) : acc_t(0);
          for (int64_t c = 0; c < C; ++c) {
            const acc_t t = c == label ? s : acc_t(0);
            const acc_t d = element_grad<K>(static_cast<acc_t>(x[r * C + c]), t, p);
            const acc_t gw = cw ? g * static_cast<acc_t>(cw[c]) : g;
            gx[r * C + c] = static_cast<scalar_t>(gw * d);
          }
        }
      });
    });
  });
  return grad_pred.view(pred.sizes());
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("sparse_target_cls_loss", &sparse_target_cls_loss_cpu);
  m.impl("_sparse_target_cls_loss_backward", &sparse_target_cls_loss_backward_cpu);
}

}  // namespace losses
}  // namespace tood_ext
