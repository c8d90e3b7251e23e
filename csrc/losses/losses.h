// Host contract of the loss op family (tood_ext.sparse_target_cls_loss):
// every argument check of both backends, forward and backward (the incoming
// gradient included), made once by prepare_sparse_target_cls_loss before
// anything is allocated or written. The CPU (csrc/cpu/losses_cpu.cpp) and CUDA
// (csrc/cuda/losses_cuda.cu) files keep only their loops and launches.
//
// Error policy (README, "Reliability"): unknown kind or a bad gamma / alpha /
// activated combination -> ValueError (TORCH_CHECK_VALUE); a tensor of the
// wrong shape, dtype or device -> RuntimeError (TORCH_CHECK); a label outside
// [-1, C) -> IndexError (TORCH_CHECK_INDEX); a score outside [0, 1] of a
// foreground anchor for kinds qfl, vfl and focal -> ValueError; focal's alpha
// outside [0, 1] -> ValueError. The per-anchor weight: shape pred.shape[:-1],
// pred's dtype and device (RuntimeError), any value. Reading the labels and
// scores costs one device sync on CUDA.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <string>
#include <vector>

#include "../host_utils.h"
#include "dfl_loss_utils.h"
#include "sparse_cls_loss_utils.h"

namespace tood_ext {
namespace losses {

inline ClsLossKind parse_cls_loss_kind(c10::string_view kind, bool activated) {
  ClsLossKind k;
  if (kind == "bce") {
    k = ClsLossKind::kBCE;
  } else if (kind == "qfl") {
    k = activated ? ClsLossKind::kQFLProb : ClsLossKind::kQFL;
  } else if (kind == "vfl") {
    k = ClsLossKind::kVFL;
  } else if (kind == "focal") {
    k = activated ? ClsLossKind::kFocalProb : ClsLossKind::kFocal;
  } else {
    TORCH_CHECK_VALUE(false, "kind must be one of 'bce', 'qfl', 'vfl', 'focal', got '",
                      std::string(kind), "'");
  }
  TORCH_CHECK_VALUE(!activated || k == ClsLossKind::kQFLProb || k == ClsLossKind::kFocalProb,
                    "activated=True (pred holds probabilities) is supported by kind='qfl' and "
                    "kind='focal' only, got kind='", std::string(kind), "'");
  return k;
}

inline bool is_focal_kind(ClsLossKind k) {
  return k == ClsLossKind::kFocal || k == ClsLossKind::kFocalProb;
}

// alpha=None (the Python default): the kind's own default, 0.25 for focal
// (mmdetection's FocalLoss), else 0.75 (vfl: mmdetection's VarifocalLoss,
// PP-YOLOE; unused by bce and qfl).
inline double default_alpha(ClsLossKind k) { return is_focal_kind(k) ? 0.25 : 0.75; }

// Kinds whose target must be a quality in [0, 1] (bce takes any real target).
inline bool kind_needs_unit_scores(ClsLossKind k) { return k != ClsLossKind::kBCE; }

// The checked inputs of one call and what the kernels need.
//
// pred's layout: row-major (the (rows, C) contiguous tensor; any other layout
// is copied to it), or class-major, read in place: a (..., A, C) tensor whose
// last two dims transposed are contiguous, i.e. a (..., C, A) buffer viewed
// as (..., A, C) (ultralytics' head output permute(0, 2, 1)). Element (l, a, c)
// of the class-major buffer is at (l * C + c) * A + a, its anchor row l * A + a.
// grad_pred has pred's layout (grad_pred_like).
struct SparseClsLossPlan {
  int64_t rows = 0;     // anchors: pred.numel() / C
  int64_t classes = 0;  // C = pred.size(-1)
  int64_t anchors = 0;  // class-major: A = pred.size(-2); row-major: 0
  at::Tensor pred;          // (rows, C) contiguous, or class-major (above)
  at::Tensor labels;        // (rows,) int64 contiguous
  at::Tensor scores;        // (rows,) contiguous, pred's dtype
  at::Tensor class_weight;  // (C,) contiguous, or undefined
  at::Tensor weight;        // (rows,) contiguous per-anchor weight, or undefined
  ClsLossKind kind = ClsLossKind::kBCE;
  double gamma = 2.0, alpha = 0.75;
  at::TensorOptions loss_options;  // 0-d loss: float32 for half inputs, else pred's dtype
  at::Tensor grad;                 // backward: the 0-d incoming gradient

  int64_t numel() const { return rows * classes; }
  bool class_major() const { return anchors > 0; }
  template <typename T>
  ClsLossParams<T> params() const {
    return ClsLossParams<T>{static_cast<T>(gamma), static_cast<T>(alpha)};
  }
};

// The dtype of the loss: pred's, or float32 for float16/bfloat16 (a sum over
// B * A * C elements overflows float16).
inline at::ScalarType loss_dtype(at::ScalarType pred_dtype) {
  return (pred_dtype == at::kHalf || pred_dtype == at::kBFloat16) ? at::kFloat : pred_dtype;
}

// Every check of sparse_target_cls_loss (grad == nullptr) and of its backward.
inline SparseClsLossPlan prepare_sparse_target_cls_loss(
    const at::Tensor& pred, const at::Tensor& labels, const at::Tensor& scores,
    c10::string_view kind, double gamma, c10::optional<double> alpha_opt, bool activated,
    const c10::optional<at::Tensor>& class_weight, const c10::optional<at::Tensor>& weight,
    const at::Tensor* grad = nullptr) {
  SparseClsLossPlan plan;
  plan.kind = parse_cls_loss_kind(kind, activated);
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0, "gamma must be a finite number >= 0, got ",
                    gamma);
  const double alpha = alpha_opt.has_value() ? *alpha_opt : default_alpha(plan.kind);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0, "alpha must be a finite number >= 0, got ",
                    alpha);
  TORCH_CHECK_VALUE(!is_focal_kind(plan.kind) || alpha <= 1,
                    "alpha must be in [0, 1] for kind='focal' (the positives' share), got ", alpha);
  plan.gamma = gamma;
  plan.alpha = alpha;

  TORCH_CHECK(pred.dim() >= 1, "pred must have shape (..., C) with C classes, got a 0-d tensor");
  check_float_dtype(pred, "pred");
  const auto lead = pred.sizes().slice(0, pred.dim() - 1);
  TORCH_CHECK(labels.sizes() == lead, "labels must have shape pred.shape[:-1] = ", lead,
              " (one class per anchor, -1 for background), got ", labels.sizes());
  TORCH_CHECK(at::isIntegralType(labels.scalar_type(), /*includeBool=*/false),
              "labels must be an integer tensor (int64 class indices, -1 for background), got ",
              labels.scalar_type());
  TORCH_CHECK(scores.sizes() == lead, "scores must have shape pred.shape[:-1] = ", lead,
              " (the target score of each anchor's label), got ", scores.sizes());
  check_same_dtype(scores, pred, "scores", "pred");
  check_same_device(labels, pred, "labels", "pred");
  check_same_device(scores, pred, "scores", "pred");
  plan.classes = pred.size(-1);
  plan.rows = 1;
  for (int64_t d : lead) plan.rows *= d;
  const bool has_weight = class_weight.has_value() && class_weight->defined();
  if (has_weight) {
    TORCH_CHECK(class_weight->dim() == 1 && class_weight->size(0) == plan.classes,
                "class_weight must have shape (C,) = (", plan.classes,
                ",) (one weight per class of pred), got ", class_weight->sizes());
    check_same_dtype(*class_weight, pred, "class_weight", "pred");
    check_same_device(*class_weight, pred, "class_weight", "pred");
  }
  const bool has_row_weight = weight.has_value() && weight->defined();
  if (has_row_weight) {
    TORCH_CHECK(weight->sizes() == lead, "weight must have shape pred.shape[:-1] = ", lead,
                " (one weight per anchor), got ", weight->sizes());
    check_same_dtype(*weight, pred, "weight", "pred");
    check_same_device(*weight, pred, "weight", "pred");
  }
  plan.loss_options = pred.options().dtype(loss_dtype(pred.scalar_type()));
  if (grad != nullptr) {
    TORCH_CHECK(grad->dim() == 0, "grad (of the 0-d loss) must be 0-d, got shape ",
                grad->sizes());
    TORCH_CHECK(grad->scalar_type() == loss_dtype(pred.scalar_type()), "grad has dtype ",
                grad->scalar_type(), " but the loss of pred (", pred.scalar_type(),
                ") has dtype ", loss_dtype(pred.scalar_type()));
    check_same_device(*grad, pred, "grad", "pred");
    plan.grad = grad->contiguous();
  }

  // Values: read the data (one sync on CUDA), still before anything is written.
  if (plan.rows > 0) {
    const at::Tensor bad = (labels < -1) | (labels >= plan.classes);
    if (bad.any().item<bool>()) {
      const int64_t value = labels.masked_select(bad).flatten()[0].item<int64_t>();
      TORCH_CHECK_INDEX(false, "labels holds class ", value, ", outside [-1, ", plan.classes,
                        ") (-1: background; C = pred.size(-1) = ", plan.classes, ")");
    }
    if (kind_needs_unit_scores(plan.kind)) {
      const at::Tensor out = ((scores < 0) | (scores > 1)) & (labels >= 0);
      if (out.any().item<bool>()) {
        const double value = scores.masked_select(out).flatten()[0].item<double>();
        TORCH_CHECK_VALUE(false, "scores holds ", value, " for a foreground anchor: kind='",
                          std::string(kind), "' needs scores (target qualities) in [0, 1]");
      }
    }
  }
  if (pred.dim() >= 2 && !pred.is_contiguous() && pred.transpose(-1, -2).is_contiguous()) {
    plan.anchors = pred.size(-2);  // class-major, in place (> 0: pred is not empty here)
    plan.pred = pred;
  } else {
    plan.pred = pred.contiguous();
  }
  plan.labels = labels.scalar_type() == at::kLong ? labels.contiguous()
                                                 : labels.to(at::kLong).contiguous();
  plan.scores = scores.contiguous();
  if (has_weight) plan.class_weight = class_weight->contiguous();
  if (has_row_weight) plan.weight = weight->contiguous();
  return plan;
}

// An uninitialised gradient of pred's shape in the plan's layout: (rows, C)
// contiguous, or class-major ((..., C, A) contiguous viewed as (..., A, C)).
inline at::Tensor grad_pred_like(const SparseClsLossPlan& plan) {
  if (!plan.class_major()) return at::empty(plan.pred.sizes(), plan.pred.options());
  return at::empty(plan.pred.transpose(-1, -2).sizes(), plan.pred.options()).transpose(-1, -2);
}

// ---- dfl_loss ---------------------------------------------------------------

struct DflLossPlan {
  int64_t rows = 0;  // pred_dist.numel() / R
  int64_t bins = 0;  // R = reg_max = pred_dist.size(-1)
  at::Tensor pred;    // (rows, R) contiguous
  at::Tensor target;  // (rows,) contiguous
  at::Tensor weight;  // (rows,) contiguous, or undefined
  at::TensorOptions loss_options;
  at::Tensor grad;  // backward: the 0-d incoming gradient

  int64_t numel() const { return rows * bins; }
};

// Every check of dfl_loss (grad == nullptr) and of its backward.
inline DflLossPlan prepare_dfl_loss(const at::Tensor& pred_dist, const at::Tensor& target,
                                    const c10::optional<at::Tensor>& weight,
                                    const at::Tensor* grad = nullptr) {
  TORCH_CHECK(pred_dist.dim() >= 1 && pred_dist.size(-1) >= 2,
              "pred_dist must have shape (..., reg_max) with reg_max >= 2 bins, got ",
              pred_dist.sizes());
  check_float_dtype(pred_dist, "pred_dist");
  const auto lead = pred_dist.sizes().slice(0, pred_dist.dim() - 1);
  TORCH_CHECK(target.sizes() == lead, "target must have shape pred_dist.shape[:-1] = ", lead,
              " (one distance per row of bins), got ", target.sizes());
  check_same_dtype(target, pred_dist, "target", "pred_dist");
  check_same_device(target, pred_dist, "target", "pred_dist");
  const bool has_weight = weight.has_value() && weight->defined();
  if (has_weight) {
    TORCH_CHECK(weight->sizes() == lead, "weight must have shape pred_dist.shape[:-1] = ", lead,
                ", got ", weight->sizes());
    check_same_dtype(*weight, pred_dist, "weight", "pred_dist");
    check_same_device(*weight, pred_dist, "weight", "pred_dist");
  }
  DflLossPlan plan;
  plan.bins = pred_dist.size(-1);
  plan.rows = 1;
  for (int64_t d : lead) plan.rows *= d;
  plan.loss_options = pred_dist.options().dtype(loss_dtype(pred_dist.scalar_type()));
  if (grad != nullptr) {
    TORCH_CHECK(grad->dim() == 0, "grad (of the 0-d loss) must be 0-d, got shape ",
                grad->sizes());
    TORCH_CHECK(grad->scalar_type() == loss_dtype(pred_dist.scalar_type()), "grad has dtype ",
                grad->scalar_type(), " but the loss of pred_dist (", pred_dist.scalar_type(),
                ") has dtype ", loss_dtype(pred_dist.scalar_type()));
    check_same_device(*grad, pred_dist, "grad", "pred_dist");
    plan.grad = grad->contiguous();
  }
  plan.pred = pred_dist.contiguous();
  plan.target = target.contiguous();
  if (has_weight) plan.weight = weight->contiguous();
  return plan;
}

}  // namespace losses
}  // namespace tood_ext
