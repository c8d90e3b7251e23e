// CPU kernel of task_aligned_assign: two race-free passes, never a
// (B, G, A) tensor.
//   1. per (image, GT), in parallel: overlap u and the centre test of all
//      anchors into a per-thread scratch row (alignment_metric's vectorised
//      loop; the centre test redone against the widened box when
//      min_inside_size > 0), then t for the anchors that can rank and the
//      top-k candidates by insertion (csrc/tal/tal_utils.h; for
//      "inside_then_topk" the inside anchors of t > 0, then the ranks of
//      masked t = 0 in anchor order, fill_zero_metric_ranks);
//   2. per image, in parallel over images, in anchor-sized per-thread rows:
//      a. claims: each positive candidate, GTs in order, counts its anchor and
//         keeps the claim of largest packed (u, GT) key with its slot;
//      b. each claimed anchor's final GT: the key's GT, or for
//         conflict="all_gts" and >= 2 claims the argmax over all G GTs
//         (all_gts_argmax, recomputing u and the centre test); t and u from
//         the winner's slot, recomputed when the winner did not pick it;
//      c. the per-GT maxima of t and u over the final positives (G-sized row);
//      d. the outputs of each positive anchor.
// Extra memory: candidates (B, G, k) x (index, t, u, flag); per thread
// (threads <= cores) scratch rows of A (u, centre test, claim key, slot,
// count, final GT, t, u) and of G (maxima).
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
                                   double inside_eps, double norm_eps,
                                   c10::string_view conflict, double min_inside_size) {
  const TALArgs args = check_tal_args(pred_scores, pred_boxes, anchor_points, gt_labels, gt_boxes,
                                      gt_mask, topk, candidates, iou_mode, conflict,
                                      min_inside_size);
  const int64_t B = args.shape.batch, A = args.shape.num_anchors, G = args.shape.num_gts,
                C = args.shape.num_classes;
  TALOutputs out = background_outputs(pred_scores, gt_boxes, B, A);
  if (B == 0 || A == 0 || G == 0) return out;
  const int64_t K = std::min<int64_t>(topk, A);
  const bool inside_first = args.candidates == Candidates::kInsideThenTopk;
  const bool all_gts = args.conflict == Conflict::kAllGts;

  const at::Tensor sc = pred_scores.contiguous(), pb = pred_boxes.contiguous(),
                   ap = anchor_points.contiguous(), gl = gt_labels.contiguous(),
                   gb = gt_boxes.contiguous(), gm = gt_mask.contiguous();
  at::Tensor cand_idx = at::full({B, G, K}, -1, sc.options().dtype(at::kInt));
  at::Tensor cand_pos = at::zeros({B, G, K}, sc.options().dtype(at::kBool));
  at::Tensor cand_t = at::empty({B, G, K}, sc.options());
  at::Tensor cand_u = at::empty({B, G, K}, sc.options());

  auto& [assigned, fg, labels, boxes, ious, metrics, soft] = out;
  AT_DISPATCH_FLOATING_TYPES(sc.scalar_type(), "task_aligned_assign_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    int32_t* p_idx = cand_idx.mutable_data_ptr<int32_t>();
    bool* p_pos = cand_pos.mutable_data_ptr<bool>();
    scalar_t* p_t = cand_t.mutable_data_ptr<scalar_t>();
    scalar_t* p_u = cand_u.mutable_data_ptr<scalar_t>();
    const bool* p_mask = gm.const_data_ptr<bool>();
    const int64_t* p_labels = gl.const_data_ptr<int64_t>();
    const scalar_t* p_gt = gb.const_data_ptr<scalar_t>();
    const scalar_t* p_pts = ap.const_data_ptr<scalar_t>();
    const acc_t min_size = static_cast<acc_t>(min_inside_size);
    box_ops::dispatch_iou_mode(args.mode, [&](auto mode_c) {
      constexpr IoUMode kMode = decltype(mode_c)::value;
      const at::Tensor cols = cpu::box_columns<scalar_t, kMode>(pb, B, A);
      constexpr int64_t R = kMode == IoUMode::kCIoU ? 5 : 4;
      const scalar_t* p_cols = cols.const_data_ptr<scalar_t>();
      const scalar_t* p_scores = sc.const_data_ptr<scalar_t>();
      const cpu::MetricInputs<scalar_t> in{
          sc.const_data_ptr<scalar_t>(), cols.const_data_ptr<scalar_t>(),
          ap.const_data_ptr<scalar_t>(), p_labels, p_gt, p_mask, G, A, C,
          box_ops::make_metric_exponents<acc_t>(alpha, beta), acc_t(inside_eps),
          acc_t(kOverlapEps)};

      // 1. candidates. With beta > 0 an anchor whose box misses the GT has
      // t = 0 (or NaN): never a positive of "topk_then_inside", so only
      // anchors with u > 0 are ranked there (and for "inside_then_topk" only
      // inside anchors of t > 0, then fill_zero_metric_ranks): the score
      // gather and the powers run for few.
      const bool all_anchors = !inside_first && !(beta > 0.0);
      at::parallel_for(0, B * G, cpu::grain_for(A), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> u_row(A);
        std::unique_ptr<bool[]> in_row(new bool[A]);
        std::vector<scalar_t> vals(K);
        std::vector<int32_t> idxs(K);
        for (int64_t bg = begin; bg < end; ++bg) {
          if (!p_mask[bg]) continue;
          int count = 0;
          if (inside_first) {
            // the centre test first (vectorised), then u (vectorised) and t of
            // the spans of inside anchors only: a GT holds a small share of
            // the anchors, in runs along the grid rows
            acc_t gt[4], ib[4];
            box_ops::load_box(p_gt + 4 * bg, gt);
            if (min_size > acc_t(0)) {  // the centre test against the widened box
              inside_box(gt, min_size, ib);
            } else {
              std::copy(gt, gt + 4, ib);
            }
            cpu::inside_row(in, ib, in_row.get());
            const int64_t b = bg / G;
            const scalar_t* img_cols = p_cols + b * R * A;
            const scalar_t* class_scores = p_scores + b * A * C + p_labels[bg];
            const acc_t theta_gt = cpu::angle_of<kMode>(gt);
            cpu::for_each_true_span(in_row.get(), A, [&](int64_t begin, int64_t end) {
              cpu::overlap_span<scalar_t, kMode>(in, img_cols, gt, theta_gt, begin, end,
                                                 u_row.data());
              for (int64_t a = begin; a < end; ++a) {
                const scalar_t t =
                    static_cast<scalar_t>(cpu::metric_at(in, class_scores, a, u_row[a]));
                if (t > scalar_t(0)) {  // t = 0 anchors take their ranks below
                  topk_insert(vals.data(), idxs.data(), static_cast<int>(K), &count, t,
                              static_cast<int32_t>(a));
                }
              }
            });
            for (int s = 0; s < count; ++s) {
              p_idx[bg * K + s] = idxs[s];
              p_t[bg * K + s] = vals[s];
              p_u[bg * K + s] = u_row[idxs[s]];
              p_pos[bg * K + s] = true;
            }
            // fewer than K inside anchors of t > 0: the masked t = 0 ranks
            fill_zero_metric_ranks<scalar_t>(
                A, count, static_cast<int>(K),
                [&](int32_t a) { return in_list(idxs.data(), count, a); },
                [&](int32_t a, bool* inside, scalar_t* t, scalar_t* u) {
                  *inside = in_row[a];
                  *u = *inside ? u_row[a] : scalar_t(0);
                  *t = *inside ? static_cast<scalar_t>(
                                     cpu::metric_at(in, class_scores, a, u_row[a]))
                               : scalar_t(0);
                },
                [&](int s, int32_t a, scalar_t u, bool inside) {
                  p_idx[bg * K + s] = a;
                  p_t[bg * K + s] = scalar_t(0);
                  p_u[bg * K + s] = u;
                  p_pos[bg * K + s] = inside;
                });
          } else {
            cpu::overlap_row<scalar_t, kMode>(in, bg, u_row.data(), in_row.get());
            if (min_size > acc_t(0)) {  // the centre test against the widened box
              acc_t gt[4], ib[4];
              box_ops::load_box(p_gt + 4 * bg, gt);
              inside_box(gt, min_size, ib);
              cpu::inside_row(in, ib, in_row.get());
            }
            for (int64_t a = 0; a < A; ++a) {
              if (!(all_anchors || u_row[a] > 0)) continue;
              const scalar_t t = static_cast<scalar_t>(cpu::metric_of(in, bg, a, u_row[a]));
              topk_insert(vals.data(), idxs.data(), static_cast<int>(K), &count, t,
                          static_cast<int32_t>(a));
            }
            for (int s = 0; s < count; ++s) {
              const int32_t a = idxs[s];
              p_idx[bg * K + s] = a;
              p_t[bg * K + s] = vals[s];
              p_u[bg * K + s] = u_row[a];
              p_pos[bg * K + s] = vals[s] > scalar_t(0) && in_row[a];
            }
          }
        }
      });

      // 2. per image: claims, final GTs, per-GT maxima, outputs
      int64_t* o_assigned = assigned.mutable_data_ptr<int64_t>();
      bool* o_fg = fg.mutable_data_ptr<bool>();
      int64_t* o_labels = labels.mutable_data_ptr<int64_t>();
      scalar_t* o_boxes = boxes.mutable_data_ptr<scalar_t>();
      scalar_t* o_iou = ious.mutable_data_ptr<scalar_t>();
      scalar_t* o_metric = metrics.mutable_data_ptr<scalar_t>();
      scalar_t* o_soft = soft.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        std::vector<uint64_t> key(A);
        std::vector<int64_t> slot(A);
        std::vector<int32_t> count(A);
        std::vector<int64_t> fin_gt(A);
        std::vector<acc_t> fin_t(A), fin_u(A), max_t(G), max_u(G);
        for (int64_t b = begin; b < end; ++b) {
          std::fill(key.begin(), key.end(), uint64_t(0));
          std::fill(count.begin(), count.end(), 0);
          // a. claims, GTs in order; the largest key wins (ties impossible: g is in it)
          for (int64_t i = b * G * K; i < (b + 1) * G * K; ++i) {
            if (!p_pos[i]) continue;
            const int32_t a = p_idx[i];
            ++count[a];
            const uint64_t k = claim_key(p_u[i], (i / K) % G);
            if (k > key[a]) {
              key[a] = k;
              slot[a] = i;
            }
          }
          // b. final GT, t and u of each claimed anchor
          for (int64_t a = 0; a < A; ++a) {
            fin_gt[a] = -1;
            if (count[a] == 0) continue;
            if (!all_gts || count[a] == 1) {
              fin_gt[a] = claim_gt(key[a]);
              fin_t[a] = p_t[slot[a]];
              fin_u[a] = p_u[slot[a]];
              continue;
            }
            const scalar_t* col = p_cols + b * R * A + a;
            const acc_t pred[4] = {col[0], col[A], col[2 * A], col[3 * A]};
            const acc_t theta = R == 5 ? static_cast<acc_t>(col[4 * A]) : acc_t(0);
            acc_t u;
            bool inside;
            const int64_t w = all_gts_argmax<acc_t, kMode>(
                pred, theta, static_cast<acc_t>(p_pts[2 * a]), static_cast<acc_t>(p_pts[2 * a + 1]),
                p_gt + 4 * b * G, p_mask + b * G, G, in.eps, in.inside_eps, min_size, &u, &inside);
            fin_gt[a] = w;
            const int64_t row = (b * G + w) * K;
            const int s_w = find_slot(p_idx + row, p_pos + row, K, static_cast<int32_t>(a));
            if (s_w >= 0) {  // the winner picked it: its stored t and u
              fin_t[a] = p_t[row + s_w];
              fin_u[a] = p_u[row + s_w];
            } else {  // masked values: 0 unless inside the valid winner
              fin_u[a] = u;
              fin_t[a] = inside ? static_cast<acc_t>(cpu::metric_of(in, b * G + w, a, u))
                                : acc_t(0);
            }
          }
          // c. maxima of t and u over each GT's final positives
          std::fill(max_t.begin(), max_t.end(), -std::numeric_limits<acc_t>::infinity());
          std::fill(max_u.begin(), max_u.end(), -std::numeric_limits<acc_t>::infinity());
          for (int64_t a = 0; a < A; ++a) {
            const int64_t g = fin_gt[a];
            if (g < 0) continue;
            max_t[g] = max_nan(max_t[g], fin_t[a]);
            max_u[g] = max_nan(max_u[g], fin_u[a]);
          }
          // d. outputs
          for (int64_t a = 0; a < A; ++a) {
            const int64_t g = fin_gt[a];
            if (g < 0) continue;
            const int64_t ba = b * A + a, bg = b * G + g;
            o_assigned[ba] = g;
            o_fg[ba] = true;
            o_labels[ba] = p_labels[bg];
            for (int c = 0; c < 4; ++c) o_boxes[4 * ba + c] = p_gt[4 * bg + c];
            o_iou[ba] = static_cast<scalar_t>(fin_u[a]);
            o_metric[ba] = static_cast<scalar_t>(fin_t[a]);
            o_soft[ba] = static_cast<scalar_t>(fin_t[a] * max_u[g] / (max_t[g] + acc_t(norm_eps)));
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
