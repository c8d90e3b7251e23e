// CPU kernel of task_aligned_assign: three race-free passes, never a
// (B, G, A) tensor.
//   1. per (image, GT), in parallel: overlap u and the centre test of all
//      anchors into a per-thread scratch row (alignment_metric's vectorised
//      loop), then t for the anchors that can rank and the top-k candidates
//      by insertion (csrc/tal/tal_utils.h);
//   2. per image, in parallel: conflicts, each positive candidate claiming its
//      anchor with the packed (u, GT) key of tal_utils.h, GTs in order;
//   3. per (image, GT), in parallel: the maxima of t and u over the anchors
//      it won, then its positives' outputs (each anchor written once).
// Extra memory: candidates (B, G, k) x (index, t, u, flag), claims (B, A),
// scratch rows of A per thread.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <vector>

#include "../tal/tal.h"
#include "cpu_utils.h"

namespace tood_ext {
namespace tal {
namespace {

using box_ops::IoUMode;

TALOutputs task_aligned_assign_cpu(const at::Tensor& pred_scores, const at::Tensor& pred_boxes,
                                   const at::Tensor& anchor_points, const at::Tensor& gt_labels,
                                   const at::Tensor& gt_boxes, const at::Tensor& gt_mask,
                                   int64_t topk, double alpha, double beta,
                                   c10::string_view candidates, c10::string_view iou_mode,
                                   double inside_eps, double norm_eps) {
  const TALArgs args = check_tal_args(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                                      gt_mask, topk, candidates, iou_mode);
  const int64_t B = args.shape.batch, A = args.shape.num_anchors, G = args.shape.num_gts,
                C = args.shape.num_classes;
  TALOutputs out = background_outputs(pred_scores, gt_boxes, B, A);
  if (B == 0 || A == 0 || G == 0) return out;
  const int64_t K = std::min<int64_t>(topk, A);
  const bool inside_first = args.candidates == Candidates::kInsideThenTopk;

  const at::Tensor sc = pred_scores.contiguous(), pb = pred_boxes.contiguous(),
                   ap = anchor_points.contiguous(), gl = gt_labels.contiguous(),
                   gb = gt_boxes.contiguous(), gm = gt_mask.contiguous();
  at::Tensor cand_idx = at::full({B, G, K}, -1, sc.options().dtype(at::kInt));
  at::Tensor cand_pos = at::zeros({B, G, K}, sc.options().dtype(at::kBool));
  at::Tensor cand_t = at::empty({B, G, K}, sc.options());
  at::Tensor cand_u = at::empty({B, G, K}, sc.options());
  at::Tensor claims = at::zeros({B, A}, sc.options().dtype(at::kLong));  // uint64 keys

  auto& [assigned, fg, labels, boxes, ious, metrics, soft] = out;
  AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "task_aligned_assign_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int32_t* p_idx = cand_idx.mutable_data_ptr<int32_t>();
    bool* p_pos = cand_pos.mutable_data_ptr<bool>();
    scalar_t* p_t = cand_t.mutable_data_ptr<scalar_t>();
    scalar_t* p_u = cand_u.mutable_data_ptr<scalar_t>();
    uint64_t* p_claim = reinterpret_cast<uint64_t*>(claims.mutable_data_ptr<int64_t>());
    const bool* p_mask = gm.const_data_ptr<bool>();
    const int64_t* p_labels = gl.const_data_ptr<int64_t>();
    const scalar_t* p_gt = gb.const_data_ptr<scalar_t>();
    box_ops::dispatch_iou_mode(args.mode, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      const at::Tensor cols = cpu::box_columns<scalar_t, kMode>(pb, B, A);
      const cpu::MetricInputs<scalar_t> in{
          sc.const_data_ptr<scalar_t>(), cols.const_data_ptr<scalar_t>(),
          ap.const_data_ptr<scalar_t>(), p_labels, p_gt, p_mask, G, A, C,
          box_ops::make_metric_exponents<acc_t>(alpha, beta), acc_t(inside_eps),
          acc_t(kOverlapEps)};

      // 1. candidates. With beta > 0 an anchor whose box misses the GT has
      // t = 0 (or NaN): never a positive of "topk_then_inside", so only
      // anchors with u > 0 are ranked there (and only inside anchors for
      // "inside_then_topk"): the score gather and the powers run for few.
      const bool all_anchors = !inside_first && !(beta > 0.0);
      at::parallel_for(0, B * G, cpu::grain_for(A), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> u_row(A);
        std::unique_ptr<bool[]> in_row(new bool[A]);
        std::vector<scalar_t> vals(K);
        std::vector<int32_t> idxs(K);
        for (int64_t bg = begin; bg < end; ++bg) {
          if (!p_mask[bg]) continue;
          cpu::overlap_row<scalar_t, kMode>(in, bg, u_row.data(), in_row.get());
          int count = 0;
          for (int64_t a = 0; a < A; ++a) {
            const bool ranked = inside_first ? in_row[a] : (all_anchors || u_row[a] > 0);
            if (!ranked) continue;
            const scalar_t t = static_cast<scalar_t>(cpu::metric_of(in, bg, a, u_row[a]));
            topk_insert(vals.data(), idxs.data(), static_cast<int>(K), &count, t,
                        static_cast<int32_t>(a));
          }
          for (int s = 0; s < count; ++s) {
            const int32_t a = idxs[s];
            p_idx[bg * K + s] = a;
            p_t[bg * K + s] = vals[s];
            p_u[bg * K + s] = u_row[a];
            p_pos[bg * K + s] = inside_first || (vals[s] > scalar_t(0) && in_row[a]);
          }
        }
      });

      // 2. conflicts: per image, GTs in order; the largest key wins
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          for (int64_t i = b * G * K; i < (b + 1) * G * K; ++i) {
            if (!p_pos[i]) continue;
            uint64_t& claim = p_claim[b * A + p_idx[i]];
            const uint64_t key = claim_key(p_u[i], (i / K) % G);
            if (key > claim) claim = key;
          }
        }
      });

      // 3. normalisation per GT over the anchors it won, and the outputs
      int64_t* o_assigned = assigned.mutable_data_ptr<int64_t>();
      bool* o_fg = fg.mutable_data_ptr<bool>();
      int64_t* o_labels = labels.mutable_data_ptr<int64_t>();
      scalar_t* o_boxes = boxes.mutable_data_ptr<scalar_t>();
      scalar_t* o_iou = ious.mutable_data_ptr<scalar_t>();
      scalar_t* o_metric = metrics.mutable_data_ptr<scalar_t>();
      scalar_t* o_soft = soft.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, B * G, cpu::grain_for(K), [&](int64_t begin, int64_t end) {
        for (int64_t bg = begin; bg < end; ++bg) {
          const int64_t b = bg / G, g = bg % G;
          acc_t max_t = -std::numeric_limits<acc_t>::infinity(), max_u = max_t;
          bool any = false;
          for (int64_t s = 0; s < K; ++s) {
            const int64_t i = bg * K + s;
            if (!p_pos[i] || claim_gt(p_claim[b * A + p_idx[i]]) != g) continue;
            any = true;
            max_t = std::max<acc_t>(max_t, p_t[i]);
            max_u = std::max<acc_t>(max_u, p_u[i]);
          }
          if (!any) continue;
          const acc_t denom = max_t + acc_t(norm_eps);
          for (int64_t s = 0; s < K; ++s) {
            const int64_t i = bg * K + s;
            if (!p_pos[i] || claim_gt(p_claim[b * A + p_idx[i]]) != g) continue;
            const int64_t ba = b * A + p_idx[i];
            o_assigned[ba] = g;
            o_fg[ba] = true;
            o_labels[ba] = p_labels[bg];
            for (int c = 0; c < 4; ++c) o_boxes[4 * ba + c] = p_gt[4 * bg + c];
            o_iou[ba] = p_u[i];
            o_metric[ba] = p_t[i];
            o_soft[ba] = static_cast<scalar_t>(static_cast<acc_t>(p_t[i]) * max_u / denom);
          }
        }
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("task_aligned_assign", &task_aligned_assign_cpu);
}

}  // namespace tal
}  // namespace tood_ext
