// Host contracts of the box-metric op family (box_iou, _box_iou_backward,
// iou_loss, _iou_loss_backward, alignment_metric): every argument check, the
// contiguous inputs, the outputs and the registered host function of each op,
// written once for the CPU and CUDA implementations (csrc/cpu/box_ops_cpu.cpp,
// csrc/cuda/box_ops_cuda.cu), which keep only their loops / launches.
// Schemas live in csrc/schemas.h.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../host_utils.h"
#include "box_iou_utils.h"

namespace tood_ext {
namespace box_ops {

inline IoUMode parse_iou_mode(c10::string_view mode, const char* arg = "mode") {
  if (mode == "iou") return IoUMode::kIoU;
  if (mode == "giou") return IoUMode::kGIoU;
  if (mode == "diou") return IoUMode::kDIoU;
  if (mode == "ciou") return IoUMode::kCIoU;
  TORCH_CHECK_VALUE(false, arg, " must be one of 'iou', 'giou', 'diou', 'ciou', got '",
                    std::string(mode), "'");
}

inline void check_boxes(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1 && t.size(-1) == 4, name,
              " must have shape (..., 4) holding xyxy boxes, got shape ", t.sizes());
}

// Leading ("batch") dims of a (..., N, 4) tensor.
inline std::vector<int64_t> leading_dims(const at::Tensor& t, int64_t trailing) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - trailing);
}

// A gradient that arrives as a broadcast scalar (all strides 0, e.g. from
// loss.sum()) is read through stride 0 instead of being materialised.
inline std::pair<at::Tensor, int64_t> grad_with_stride(const at::Tensor& grad) {
  bool all_zero = grad.numel() > 0;
  for (int64_t s : grad.strides()) all_zero = all_zero && s == 0;
  if (all_zero) return {grad, 0};
  return {grad.contiguous(), 1};
}

// --- host contracts: every check of an op, once for both backends ----------
//
// prepare_<op>(...) makes every argument check of <op> (mode strings and
// scalar values: ValueError; tensor shapes, dtypes, devices, the backward's
// gradient included: RuntimeError naming the argument; label values:
// IndexError) before anything is allocated or written, then returns the op's
// contract: the contiguous inputs, the parsed modes and scalars, the sizes and
// the allocated outputs. <op>_op<Kernel> is the registered host function of
// both backends: the contract, the empty-input early return, then Kernel (the
// backend's loops or launches, csrc/cpu/box_ops_cpu.cpp and
// csrc/cuda/box_ops_cuda.cu), which fills the outputs.

// Two box tensors (..., 4) of one floating dtype and device; a is the
// reference whose dtype and device b must share.
inline void check_box_pair(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                           const char* b_name) {
  check_boxes(a, a_name);
  check_boxes(b, b_name);
  check_float_dtype(a, a_name);
  check_same_dtype(b, a, b_name, a_name);
  check_same_device(b, a, b_name, a_name);
}

// The layout of a pair op over two box tensors a (..., N, W) and b (..., M, W)
// (box_iou, probiou): pairwise, batch = the product of the leading dims and
// out_sizes (..., N, M); aligned (same shapes), batch 1, n = the number of
// pairs, m 1 and out_sizes (..., N).
struct PairLayout {
  int64_t batch, n, m;
  std::vector<int64_t> out_sizes;
};

// Checks the shapes of a and b (already checked (..., W)) against the layout;
// op, a_name, b_name and box_width W word the errors.
inline void set_pair_layout(PairLayout& s, const char* op, const at::Tensor& a,
                            const char* a_name, const at::Tensor& b, const char* b_name,
                            bool aligned, int64_t box_width) {
  if (aligned) {
    TORCH_CHECK(a.sizes() == b.sizes(), "aligned ", op, " needs ", a_name, " and ", b_name,
                " of the same shape (..., N, ", box_width, "), got ", a.sizes(), " and ",
                b.sizes());
    s.out_sizes = leading_dims(a, 1);
    s.batch = 1;
    s.n = a.numel() / box_width;
    s.m = 1;
  } else {
    TORCH_CHECK(a.dim() >= 2 && b.dim() >= 2, "pairwise ", op, " needs ", a_name, " (..., N, ",
                box_width, ") and ", b_name, " (..., M, ", box_width, "), got shapes ",
                a.sizes(), " and ", b.sizes());
    auto lead1 = leading_dims(a, 2), lead2 = leading_dims(b, 2);
    TORCH_CHECK(lead1 == lead2, "pairwise ", op, " needs the same leading (batch) dims in ",
                a_name, " ", a.sizes(), " and ", b_name, " ", b.sizes());
    s.batch = 1;
    for (int64_t d : lead1) s.batch *= d;
    s.n = a.size(-2);
    s.m = b.size(-2);
    s.out_sizes = lead1;
    s.out_sizes.push_back(s.n);
    s.out_sizes.push_back(s.m);
  }
}

// box_iou's inputs (the layout: PairLayout).
struct BoxIouArgs : PairLayout {
  at::Tensor boxes1, boxes2;  // contiguous
  IoUMode mode;
  bool aligned;
  double eps;
};

inline BoxIouArgs box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2,
                               c10::string_view mode, bool aligned, double eps) {
  BoxIouArgs s;
  s.mode = parse_iou_mode(mode);
  s.aligned = aligned;
  s.eps = eps;
  check_box_pair(boxes1, "boxes1", boxes2, "boxes2");
  set_pair_layout(s, "box_iou", boxes1, "boxes1", boxes2, "boxes2", aligned, 4);
  s.boxes1 = boxes1.contiguous();
  s.boxes2 = boxes2.contiguous();
  return s;
}

// The upstream gradient of a backward op: shape, dtype and device checked
// against the forward's output (ref: the input whose dtype and device it
// must share); read with stride grad_stride (0: a broadcast scalar).
struct GradInput {
  at::Tensor grad;
  int64_t grad_stride;
};

inline GradInput grad_input(const at::Tensor& grad, at::IntArrayRef out_sizes,
                            const char* out_name, const at::Tensor& ref, const char* ref_name) {
  TORCH_CHECK(grad.sizes() == out_sizes, "grad must have the shape of ", out_name, " ",
              out_sizes, ", got ", grad.sizes());
  check_same_dtype(grad, ref, "grad", ref_name);
  check_same_device(grad, ref, "grad", ref_name);
  GradInput g;
  std::tie(g.grad, g.grad_stride) = grad_with_stride(grad);
  return g;
}

// A forward op's contract: its checked inputs and its output (out_sizes,
// uninitialised; every element is written by the kernel).
template <typename Args>
struct ForwardContract : Args {
  at::Tensor out;
};

template <typename Args>
ForwardContract<Args> with_output(Args args, const at::TensorOptions& options) {
  ForwardContract<Args> c{std::move(args)};
  c.out = at::empty(c.out_sizes, options);
  return c;
}

using BoxIouContract = ForwardContract<BoxIouArgs>;

struct BoxIouBackwardContract : BoxIouArgs, GradInput {
  at::Tensor grad_boxes1, grad_boxes2;  // zero-filled, contiguous
};

inline BoxIouContract prepare_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                      c10::string_view mode, bool aligned, double eps) {
  return with_output(box_iou_args(boxes1, boxes2, mode, aligned, eps), boxes1.options());
}

inline BoxIouBackwardContract prepare_box_iou_backward(const at::Tensor& grad,
                                                       const at::Tensor& boxes1,
                                                       const at::Tensor& boxes2,
                                                       c10::string_view mode, bool aligned,
                                                       double eps) {
  BoxIouArgs args = box_iou_args(boxes1, boxes2, mode, aligned, eps);
  GradInput g = grad_input(grad, args.out_sizes, "box_iou's output", boxes1, "boxes1");
  BoxIouBackwardContract c{std::move(args), std::move(g)};
  c.grad_boxes1 = at::zeros_like(c.boxes1);
  c.grad_boxes2 = at::zeros_like(c.boxes2);
  return c;
}

// The inputs of an element-wise box-pair loss (iou_loss, probiou_loss), its
// own modes and scalars aside: n = the number of box pairs.
struct PairLossInputs {
  at::Tensor pred, target;  // contiguous
  at::Tensor weight;        // contiguous; undefined without a weight
  std::vector<int64_t> out_sizes;  // the unreduced loss: pred's shape without its last dim
  int64_t n;
};

// The checks such a loss shares once the family has checked pred and target
// ((..., box_width), dtype, device): the same shapes, the optional weight;
// then the contiguous inputs.
inline void set_pair_loss_inputs(PairLossInputs& s, const at::Tensor& pred,
                                 const at::Tensor& target,
                                 const c10::optional<at::Tensor>& weight, int64_t box_width) {
  TORCH_CHECK(pred.sizes() == target.sizes(), "pred and target must have the same shape "
              "(..., ", box_width, "), got ", pred.sizes(), " and ", target.sizes());
  s.out_sizes = leading_dims(pred, 1);
  const bool has_w = weight.has_value() && weight->defined();
  if (has_w) {
    check_same_dtype(*weight, pred, "weight", "pred");
    check_same_device(*weight, pred, "weight", "pred");
    TORCH_CHECK(weight->sizes() == at::IntArrayRef(s.out_sizes),
                "weight must have the shape of pred without its last dim, ",
                at::IntArrayRef(s.out_sizes), ", got ", weight->sizes());
  }
  s.pred = pred.contiguous();
  s.target = target.contiguous();
  if (has_w) s.weight = weight->contiguous();
  s.n = pred.numel() / box_width;
}

// The backward contract of such a loss (Args: its PairLossInputs and
// scalars), with its outputs uninitialised: every element is written.
template <typename Args>
struct PairLossBackwardContract : Args, GradInput {
  at::Tensor grad_pred, grad_target, grad_weight;
};

template <typename Args>
PairLossBackwardContract<Args> pair_loss_backward_contract(Args args, const at::Tensor& grad,
                                                           const at::Tensor& pred) {
  GradInput g = grad_input(grad, args.out_sizes, "the unreduced loss", pred, "pred");
  PairLossBackwardContract<Args> c{std::move(args), std::move(g)};
  c.grad_pred = at::empty_like(c.pred);
  c.grad_target = at::empty_like(c.target);
  c.grad_weight = at::empty(c.out_sizes, c.pred.options());
  return c;
}

// iou_loss's inputs.
struct IouLossArgs : PairLossInputs {
  IoUMode mode;
  double eps;
};

inline IouLossArgs iou_loss_args(const at::Tensor& pred, const at::Tensor& target,
                                 const c10::optional<at::Tensor>& weight, c10::string_view mode,
                                 double eps) {
  IouLossArgs s;
  s.mode = parse_iou_mode(mode);
  s.eps = eps;
  check_box_pair(pred, "pred", target, "target");
  set_pair_loss_inputs(s, pred, target, weight, 4);
  return s;
}

using IouLossContract = ForwardContract<IouLossArgs>;
using IouLossBackwardContract = PairLossBackwardContract<IouLossArgs>;

inline IouLossContract prepare_iou_loss(const at::Tensor& pred, const at::Tensor& target,
                                        const c10::optional<at::Tensor>& weight,
                                        c10::string_view mode, double eps) {
  return with_output(iou_loss_args(pred, target, weight, mode, eps), pred.options());
}

inline IouLossBackwardContract prepare_iou_loss_backward(const at::Tensor& grad,
                                                         const at::Tensor& pred,
                                                         const at::Tensor& target,
                                                         const c10::optional<at::Tensor>& weight,
                                                         c10::string_view mode, double eps) {
  return pair_loss_backward_contract(iou_loss_args(pred, target, weight, mode, eps), grad, pred);
}

// The raw pointers of the element-wise pair values (aligned box_iou and
// iou_loss) that both backends' loops / kernels take:
//   out[i] = v(a_i, b_i)                 (w == nullptr, is_loss == false)
//   out[i] = w_i * (1 - v(a_i, b_i))     (is_loss; w_i = 1 without weight)
template <typename scalar_t>
struct PairValues {
  const scalar_t *a, *b, *w;
  bool is_loss;
  scalar_t* out;
  int64_t n;
  double eps;
};

// Their backward: grad read with stride gstride (0 or 1); grad_w may be null.
// pair_values<scalar_t>(contract) gives the view of each element-wise op.
template <typename scalar_t>
struct PairValueGrads {
  const scalar_t* grad;
  int64_t gstride;
  const scalar_t *a, *b, *w;
  bool is_loss;
  scalar_t *grad_a, *grad_b, *grad_w;
  int64_t n;
  double eps;
};

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// aligned box_iou
template <typename scalar_t>
PairValues<scalar_t> pair_values(const BoxIouContract& c) {
  return {c.boxes1.const_data_ptr<scalar_t>(), c.boxes2.const_data_ptr<scalar_t>(), nullptr,
          false, c.out.mutable_data_ptr<scalar_t>(), c.n, c.eps};
}

template <typename scalar_t>
PairValues<scalar_t> pair_values(const IouLossContract& c) {
  return {c.pred.const_data_ptr<scalar_t>(), c.target.const_data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(c.weight), true, c.out.mutable_data_ptr<scalar_t>(), c.n, c.eps};
}

// aligned box_iou's backward
template <typename scalar_t>
PairValueGrads<scalar_t> pair_values(const BoxIouBackwardContract& c) {
  return {c.grad.const_data_ptr<scalar_t>(),  c.grad_stride,
          c.boxes1.const_data_ptr<scalar_t>(), c.boxes2.const_data_ptr<scalar_t>(),
          nullptr,                             false,
          c.grad_boxes1.mutable_data_ptr<scalar_t>(), c.grad_boxes2.mutable_data_ptr<scalar_t>(),
          nullptr,                             c.n,
          c.eps};
}

template <typename scalar_t>
PairValueGrads<scalar_t> pair_values(const IouLossBackwardContract& c) {
  return {c.grad.const_data_ptr<scalar_t>(), c.grad_stride,
          c.pred.const_data_ptr<scalar_t>(), c.target.const_data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(c.weight),   true,
          c.grad_pred.mutable_data_ptr<scalar_t>(), c.grad_target.mutable_data_ptr<scalar_t>(),
          c.grad_weight.mutable_data_ptr<scalar_t>(), c.n,
          c.eps};
}

struct MetricShape {
  int64_t batch, num_gts, num_anchors, num_classes;
};

// Checks every argument of alignment_metric except label values (which need
// the data; see check_label_values). box_width: 5 for the rotated TAL's boxes.
inline MetricShape check_alignment_metric_args(const at::Tensor& pred_scores,
                                               const at::Tensor& pred_boxes,
                                               const at::Tensor& anchor_points,
                                               const at::Tensor& gt_labels,
                                               const at::Tensor& gt_boxes,
                                               const at::Tensor& gt_mask,
                                               int64_t box_width = 4) {
  const int64_t W = box_width;
  TORCH_CHECK(pred_scores.dim() == 3, "pred_scores must have shape (B, A, C), got ",
              pred_scores.sizes());
  MetricShape s{pred_scores.size(0), gt_labels.dim() == 2 ? gt_labels.size(1) : -1,
                pred_scores.size(1), pred_scores.size(2)};
  TORCH_CHECK(pred_boxes.dim() == 3 && pred_boxes.size(0) == s.batch &&
                  pred_boxes.size(1) == s.num_anchors && pred_boxes.size(2) == W,
              "pred_boxes must have shape (B, A, ", W, ") = (", s.batch, ", ", s.num_anchors,
              ", ", W, ") to match pred_scores ", pred_scores.sizes(), ", got ",
              pred_boxes.sizes());
  TORCH_CHECK(anchor_points.dim() == 2 && anchor_points.size(0) == s.num_anchors &&
                  anchor_points.size(1) == 2,
              "anchor_points must have shape (A, 2) = (", s.num_anchors, ", 2), got ",
              anchor_points.sizes());
  TORCH_CHECK(gt_labels.dim() == 2 && gt_labels.size(0) == s.batch,
              "gt_labels must have shape (B, G) with B = ", s.batch, ", got ",
              gt_labels.sizes());
  TORCH_CHECK(gt_boxes.dim() == 3 && gt_boxes.size(0) == s.batch &&
                  gt_boxes.size(1) == s.num_gts && gt_boxes.size(2) == W,
              "gt_boxes must have shape (B, G, ", W, ") = (", s.batch, ", ", s.num_gts, ", ", W,
              "), got ", gt_boxes.sizes());
  TORCH_CHECK(gt_mask.dim() == 2 && gt_mask.size(0) == s.batch && gt_mask.size(1) == s.num_gts,
              "gt_mask must have shape (B, G) = (", s.batch, ", ", s.num_gts, "), got ",
              gt_mask.sizes());
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong, "gt_labels must be int64, got ",
              gt_labels.scalar_type());
  TORCH_CHECK(gt_mask.scalar_type() == at::kBool, "gt_mask must be bool, got ",
              gt_mask.scalar_type());
  check_float_dtype(pred_scores, "pred_scores");
  check_same_dtype(pred_boxes, pred_scores, "pred_boxes", "pred_scores");
  check_same_dtype(anchor_points, pred_scores, "anchor_points", "pred_scores");
  check_same_dtype(gt_boxes, pred_scores, "gt_boxes", "pred_scores");
  check_same_device(pred_boxes, pred_scores, "pred_boxes", "pred_scores");
  check_same_device(anchor_points, pred_scores, "anchor_points", "pred_scores");
  check_same_device(gt_labels, pred_scores, "gt_labels", "pred_scores");
  check_same_device(gt_boxes, pred_scores, "gt_boxes", "pred_scores");
  check_same_device(gt_mask, pred_scores, "gt_mask", "pred_scores");
  return s;
}

// Labels of valid (mask == true) GTs must index a class of pred_scores.
// Reads the data (one device sync on CUDA); padding GTs may hold anything.
inline void check_label_values(const at::Tensor& gt_labels, const at::Tensor& gt_mask,
                               int64_t num_classes) {
  if (gt_labels.numel() == 0) return;
  const at::Tensor bad = ((gt_labels < 0) | (gt_labels >= num_classes)) & gt_mask;
  if (!bad.any().item<bool>()) return;
  const int64_t value = gt_labels.masked_select(bad).flatten()[0].item<int64_t>();
  TORCH_CHECK_INDEX(false, "gt_labels holds class ", value, " for a valid GT (gt_mask True), "
                    "outside [0, ", num_classes, ") = the classes of pred_scores");
}

// The inputs of alignment_metric (and of task_aligned_assign, which ranks the
// same quantities): checked, contiguous; iou_mode parsed.
struct MetricArgs {
  at::Tensor pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes, gt_mask;
  MetricShape shape;
  IoUMode mode;
  double alpha, beta, inside_eps, eps;
};

// Shapes, dtypes, devices; the label values only when check_labels (TAL
// checks its own sizes first); box_width 5: the rotated TAL's boxes.
inline MetricArgs metric_args(const at::Tensor& pred_scores, const at::Tensor& pred_boxes,
                              const at::Tensor& anchor_points, const at::Tensor& gt_labels,
                              const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
                              double alpha, double beta, c10::string_view iou_mode,
                              double inside_eps, double eps, bool check_labels = true,
                              int64_t box_width = 4) {
  MetricArgs s;
  s.mode = parse_iou_mode(iou_mode, "iou_mode");
  s.shape = check_alignment_metric_args(pred_scores, pred_boxes, anchor_points, gt_labels,
                                        gt_boxes, gt_mask, box_width);
  if (check_labels) check_label_values(gt_labels, gt_mask, s.shape.num_classes);
  s.alpha = alpha;
  s.beta = beta;
  s.inside_eps = inside_eps;
  s.eps = eps;
  s.pred_scores = pred_scores.contiguous();
  s.pred_boxes = pred_boxes.contiguous();
  s.anchor_points = anchor_points.contiguous();
  s.gt_labels = gt_labels.contiguous();
  s.gt_boxes = gt_boxes.contiguous();
  s.gt_mask = gt_mask.contiguous();
  return s;
}

struct AlignmentMetricContract : MetricArgs {
  at::Tensor metric, overlaps, inside;  // (B, G, A), uninitialised
};

inline AlignmentMetricContract prepare_alignment_metric(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& anchor_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
    double alpha, double beta, c10::string_view iou_mode, double inside_eps, double eps) {
  AlignmentMetricContract c{metric_args(pred_scores, pred_boxes, anchor_points, gt_labels,
                                        gt_boxes, gt_mask, alpha, beta, iou_mode, inside_eps,
                                        eps)};
  const auto opts = c.pred_scores.options();
  const std::vector<int64_t> sizes{c.shape.batch, c.shape.num_gts, c.shape.num_anchors};
  c.metric = at::empty(sizes, opts);
  c.overlaps = at::empty(sizes, opts);
  c.inside = at::empty(sizes, opts.dtype(at::kBool));
  return c;
}

// ---- the registered host functions, one per op for both backends ------------
// Kernel: the backend's loops / launches, called only for non-empty outputs.

template <void (*Kernel)(const BoxIouContract&)>
at::Tensor box_iou_op(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view mode,
                      bool aligned, double eps) {
  const BoxIouContract c = prepare_box_iou(boxes1, boxes2, mode, aligned, eps);
  if (c.out.numel() > 0) Kernel(c);
  return c.out;
}

template <void (*Kernel)(const BoxIouBackwardContract&)>
std::tuple<at::Tensor, at::Tensor> box_iou_backward_op(const at::Tensor& grad,
                                                       const at::Tensor& boxes1,
                                                       const at::Tensor& boxes2,
                                                       c10::string_view mode, bool aligned,
                                                       double eps) {
  const BoxIouBackwardContract c =
      prepare_box_iou_backward(grad, boxes1, boxes2, mode, aligned, eps);
  if (c.grad.numel() > 0) Kernel(c);
  return {c.grad_boxes1, c.grad_boxes2};
}

template <void (*Kernel)(const IouLossContract&)>
at::Tensor iou_loss_op(const at::Tensor& pred, const at::Tensor& target,
                       const c10::optional<at::Tensor>& weight, c10::string_view mode,
                       double eps) {
  const IouLossContract c = prepare_iou_loss(pred, target, weight, mode, eps);
  if (c.out.numel() > 0) Kernel(c);
  return c.out;
}

template <void (*Kernel)(const IouLossBackwardContract&)>
std::tuple<at::Tensor, at::Tensor, at::Tensor> iou_loss_backward_op(
    const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target,
    const c10::optional<at::Tensor>& weight, c10::string_view mode, double eps) {
  const IouLossBackwardContract c =
      prepare_iou_loss_backward(grad, pred, target, weight, mode, eps);
  if (c.grad.numel() > 0) Kernel(c);
  return {c.grad_pred, c.grad_target, c.grad_weight};
}

template <void (*Kernel)(const AlignmentMetricContract&)>
std::tuple<at::Tensor, at::Tensor, at::Tensor> alignment_metric_op(
    const at::Tensor& pred_scores, const at::Tensor& pred_boxes, const at::Tensor& anchor_points,
    const at::Tensor& gt_labels, const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
    double alpha, double beta, c10::string_view iou_mode, double inside_eps, double eps) {
  const AlignmentMetricContract c =
      prepare_alignment_metric(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                               gt_mask, alpha, beta, iou_mode, inside_eps, eps);
  if (c.metric.numel() > 0) Kernel(c);
  return {c.metric, c.overlaps, c.inside};
}

// Registers the family's ops with one backend's kernels (the TORCH_LIBRARY_IMPL
// block of csrc/cpu/box_ops_cpu.cpp and of csrc/cuda/box_ops_cuda.cu).
template <void (*BoxIou)(const BoxIouContract&),
          void (*BoxIouBackward)(const BoxIouBackwardContract&),
          void (*IouLoss)(const IouLossContract&),
          void (*IouLossBackward)(const IouLossBackwardContract&),
          void (*AlignmentMetric)(const AlignmentMetricContract&)>
void register_box_ops(torch::Library& m) {
  m.impl("box_iou", &box_iou_op<BoxIou>);
  m.impl("_box_iou_backward", &box_iou_backward_op<BoxIouBackward>);
  m.impl("iou_loss", &iou_loss_op<IouLoss>);
  m.impl("_iou_loss_backward", &iou_loss_backward_op<IouLossBackward>);
  m.impl("alignment_metric", &alignment_metric_op<AlignmentMetric>);
}

}  // namespace box_ops
}  // namespace tood_ext
