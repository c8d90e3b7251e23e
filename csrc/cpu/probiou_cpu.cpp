// CPU kernels of the ProbIoU ops: loops under at::parallel_for around the
// per-pair math of csrc/box_ops/probiou_utils.h (the same functions the CUDA
// kernels call). Every loop writes disjoint outputs in a fixed order:
// race-free and deterministic for any thread count. Argument checks,
// contiguous inputs and outputs come from the ops' contracts
// (csrc/box_ops/probiou.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../box_ops/probiou.h"
#include "cpu_utils.h"

namespace tood_ext {
namespace probiou {
namespace {

using cpu::grain_for;

// ---- element-wise pair values: aligned probiou and probiou_loss ------------------

template <typename scalar_t>
void pair_values_cpu(const PairValues<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *a = p.a, *b = p.b, *w = p.w;
  scalar_t* out = p.out;
  const bool is_loss = p.is_loss, ciou = p.ciou;
  const acc_t eps = acc_t(p.eps), floor = acc_t(p.floor);
  at::parallel_for(0, p.n, grain_for(1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t ba[5], bb[5];
      load_obb(a + 5 * i, ba);
      load_obb(b + 5 * i, bb);
      const acc_t v = probiou_value(ba, bb, eps, floor, ciou);
      const acc_t wi = w ? static_cast<acc_t>(w[i]) : acc_t(1);
      out[i] = static_cast<scalar_t>(is_loss ? wi * (acc_t(1) - v) : v);
    }
  });
}

template <typename scalar_t>
void pair_values_cpu(const PairValueGrads<scalar_t>& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *grad = p.grad, *a = p.a, *b = p.b, *w = p.w;
  scalar_t *grad_a = p.grad_a, *grad_b = p.grad_b, *grad_w = p.grad_w;
  const int64_t gstride = p.gstride;
  const bool is_loss = p.is_loss, ciou = p.ciou;
  const acc_t eps = acc_t(p.eps), floor = acc_t(p.floor);
  at::parallel_for(0, p.n, grain_for(1), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t ba[5], bb[5], ga[5], gb[5];
      load_obb(a + 5 * i, ba);
      load_obb(b + 5 * i, bb);
      const acc_t g = static_cast<acc_t>(grad[i * gstride]);
      const acc_t wi = w ? static_cast<acc_t>(w[i]) : acc_t(1);
      const acc_t k = is_loss ? -g * wi : g;  // d out / d value
      const acc_t v = probiou_pair<acc_t, true>(ba, bb, eps, floor, ciou, k, ga, gb);
      for (int c = 0; c < 5; ++c) {
        grad_a[5 * i + c] = static_cast<scalar_t>(ga[c]);
        grad_b[5 * i + c] = static_cast<scalar_t>(gb[c]);
      }
      if (grad_w) grad_w[i] = static_cast<scalar_t>(g * (acc_t(1) - v));
    }
  });
}

// ---- pairwise: each box prepared once (its Gaussian), rows against columns --------

// The prepared boxes (batch * count, 5) as an array of Obb in the accumulation
// type, in a byte tensor (c10's allocator: the extra memory the tests measure).
template <typename scalar_t>
at::Tensor prepare_all(const at::Tensor& boxes, double floor, bool ciou) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t count = boxes.numel() / 5;
  at::Tensor buf = at::empty({count * static_cast<int64_t>(sizeof(Obb<acc_t>))},
                             boxes.options().dtype(at::kByte));
  Obb<acc_t>* out = reinterpret_cast<Obb<acc_t>*>(buf.mutable_data_ptr<uint8_t>());
  const scalar_t* src = boxes.const_data_ptr<scalar_t>();
  at::parallel_for(0, count, grain_for(16), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t box[5];
      load_obb(src + 5 * i, box);
      out[i] = prepare_obb(box, acc_t(floor), ciou, static_cast<ObbTrig<acc_t>*>(nullptr));
    }
  });
  return buf;
}

template <typename scalar_t>
const Obb<at::opmath_type<scalar_t>>* obbs(const at::Tensor& buf) {
  return reinterpret_cast<const Obb<at::opmath_type<scalar_t>>*>(buf.const_data_ptr<uint8_t>());
}

template <typename scalar_t>
void probiou_pairwise(const ProbIouContract& c) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = c.n, mm = c.m;
  const bool ciou = c.ciou;
  const acc_t eps = acc_t(c.eps);
  const at::Tensor row_buf = prepare_all<scalar_t>(c.b1, c.floor, ciou);
  const at::Tensor col_buf = prepare_all<scalar_t>(c.b2, c.floor, ciou);
  const Obb<acc_t>* rows = obbs<scalar_t>(row_buf);
  const Obb<acc_t>* cols = obbs<scalar_t>(col_buf);
  scalar_t* po = c.out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, c.batch * n, grain_for(mm), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Obb<acc_t> p = rows[r];
      const Obb<acc_t>* q = cols + (r / n) * mm;
      scalar_t* orow = po + r * mm;
      for (int64_t j = 0; j < mm; ++j) {
        orow[j] = static_cast<scalar_t>(
            probiou_obb<acc_t, false>(p, q[j], eps, ciou, acc_t(0), nullptr, nullptr));
      }
    }
  });
}

template <typename scalar_t>
void probiou_pairwise(const ProbIouBackwardContract& c) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = c.n, mm = c.m, gstride = c.grad_stride;
  const bool ciou = c.ciou;
  const acc_t eps = acc_t(c.eps), floor = acc_t(c.floor);
  const at::Tensor row_buf = prepare_all<scalar_t>(c.b1, c.floor, ciou);
  const at::Tensor col_buf = prepare_all<scalar_t>(c.b2, c.floor, ciou);
  const Obb<acc_t>* rows = obbs<scalar_t>(row_buf);
  const Obb<acc_t>* cols = obbs<scalar_t>(col_buf);
  const scalar_t* p1 = c.b1.const_data_ptr<scalar_t>();
  const scalar_t* p2 = c.b2.const_data_ptr<scalar_t>();
  const scalar_t* pg = c.grad.const_data_ptr<scalar_t>();
  scalar_t* pg1 = c.grad_b1.mutable_data_ptr<scalar_t>();
  scalar_t* pg2 = c.grad_b2.mutable_data_ptr<scalar_t>();
  // The gradient of one box from its summed adjoints.
  auto store = [&](const scalar_t* box_in, const ObbAdjoint<acc_t>& adj, scalar_t* out) {
    acc_t box[5], g[5];
    load_obb(box_in, box);
    obb_backward(box, floor, ciou, adj, g);
    for (int k = 0; k < 5; ++k) out[k] = static_cast<scalar_t>(g[k]);
  };
  // Pass 1, grad of b1: each row's adjoints summed over its columns in order.
  at::parallel_for(0, c.batch * n, grain_for(mm), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Obb<acc_t> p = rows[r];
      const Obb<acc_t>* q = cols + (r / n) * mm;
      const scalar_t* grow = pg + r * mm * gstride;
      ObbAdjoint<acc_t> acc = zero_adjoint<acc_t>();
      for (int64_t j = 0; j < mm; ++j) {
        ObbAdjoint<acc_t> g1, g2;
        probiou_obb<acc_t, true>(p, q[j], eps, ciou, static_cast<acc_t>(grow[j * gstride]),
                                 &g1, &g2);
        accumulate(acc, g1);
      }
      store(p1 + 5 * r, acc, pg1 + 5 * r);
    }
  });
  // Pass 2, grad of b2: tiles of kTile columns; rows in order, one
  // accumulator per column of the tile.
  constexpr int64_t kTile = 64;
  const int64_t tiles = (mm + kTile - 1) / kTile;
  at::parallel_for(0, c.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t bi = t / tiles, j0 = (t - bi * tiles) * kTile;
      const int64_t jn = std::min(kTile, mm - j0);
      ObbAdjoint<acc_t> acc[kTile];
      for (int64_t jj = 0; jj < jn; ++jj) acc[jj] = zero_adjoint<acc_t>();
      const Obb<acc_t>* q = cols + bi * mm + j0;
      for (int64_t i = 0; i < n; ++i) {
        const Obb<acc_t> p = rows[bi * n + i];
        const scalar_t* grow = pg + ((bi * n + i) * mm + j0) * gstride;
        for (int64_t jj = 0; jj < jn; ++jj) {
          ObbAdjoint<acc_t> g1, g2;
          probiou_obb<acc_t, true>(p, q[jj], eps, ciou, static_cast<acc_t>(grow[jj * gstride]),
                                   &g1, &g2);
          accumulate(acc[jj], g2);
        }
      }
      for (int64_t jj = 0; jj < jn; ++jj) {
        const int64_t j = bi * mm + j0 + jj;
        store(p2 + 5 * j, acc[jj], pg2 + 5 * j);
      }
    }
  });
}

// ---- the kernels of the contracts (csrc/box_ops/probiou.h) ---------------------------

// probiou and its backward: the element-wise loop when aligned, else the pairwise passes.
template <typename Contract>
void probiou_cpu(const Contract& c) {
  AT_DISPATCH_FLOATING_TYPES(c.b1.scalar_type(), "probiou_cpu", [&] {
    if (c.aligned) {
      pair_values_cpu<scalar_t>(pair_values<scalar_t>(c));
    } else {
      probiou_pairwise<scalar_t>(c);
    }
  });
}

// probiou_loss (element-wise, unreduced) and its backward.
template <typename Contract>
void probiou_loss_cpu(const Contract& c) {
  AT_DISPATCH_FLOATING_TYPES(c.pred.scalar_type(), "probiou_loss_cpu", [&] {
    pair_values_cpu<scalar_t>(pair_values<scalar_t>(c));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  register_probiou_ops<probiou_cpu<ProbIouContract>, probiou_cpu<ProbIouBackwardContract>,
                       probiou_loss_cpu<ProbIouLossContract>,
                       probiou_loss_cpu<ProbIouLossBackwardContract>>(m);
}

}  // namespace probiou
}  // namespace tood_ext
