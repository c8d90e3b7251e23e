// CUDA kernels of the ProbIoU ops. The per-pair math is the one of
// csrc/box_ops/probiou_utils.h, shared with the CPU kernels.
//
// Design (the box-metric kernels' pattern, csrc/cuda/box_ops_cuda.cu):
// * forward (pairwise, aligned, loss): one thread per output element,
//   grid-stride loops, 32-bit indexing unless the sizes need 64-bit; each
//   thread prepares both boxes' Gaussians (no scratch memory).
// * pairwise backward: no atomics. grad(b1) is a warp per row (lanes over
//   columns, the adjoints of the row's Gaussian reduced by a fixed-order
//   shuffle, then one per-box backward); grad(b2) a block per 32 columns
//   (threads over rows, fixed-order shared-memory reduction). Each pair is
//   recomputed in both passes instead of storing (N, M) partials, so results
//   are bit-for-bit deterministic.
// * half/bfloat16 are loaded, computed in float32 (at::opmath_type), stored.
// * launches use the current stream under a device guard and are checked.
// Argument checks, contiguous inputs and outputs come from the ops' contracts
// (csrc/box_ops/probiou.h); this file holds the kernels and their launches.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>

#include "../box_ops/probiou.h"
#include "cuda_utils.cuh"

namespace tood_ext {
namespace probiou {
namespace {

// Scalars of a launch in the accumulation type.
template <typename acc_t>
struct Params {
  acc_t eps, floor;
  bool ciou;
};

template <typename scalar_t>
Params<at::opmath_type<scalar_t>> params_of(double eps, double floor, bool ciou) {
  using acc_t = at::opmath_type<scalar_t>;
  return {static_cast<acc_t>(eps), static_cast<acc_t>(floor), ciou};
}

template <typename acc_t>
TOOD_HOST_DEVICE_INLINE Obb<acc_t> prepared(const acc_t* box, const Params<acc_t>& s) {
  return prepare_obb(box, s.floor, s.ciou, static_cast<ObbTrig<acc_t>*>(nullptr));
}

// ---- element-wise pair values (aligned probiou, probiou_loss) --------------------

// P: PairValues or PairValueGrads (csrc/box_ops/probiou.h), one thread per element.
template <typename P, typename index_t>
__global__ void pair_values_kernel(const P p, index_t n) {
  for (index_t i = global_thread<index_t>(); i < n; i += grid_stride<index_t>()) {
    pair_value_at(p, i);
  }
}

template <typename P>
void launch_pair_values(const P& p, cudaStream_t stream) {
  with_kernel_index_type(5 * p.n, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(pair_values_kernel<P, index_t>, num_blocks(p.n), kThreads, stream, p,
                  static_cast<index_t>(p.n));
  });
}

// ---- pairwise probiou -------------------------------------------------------------

template <typename scalar_t, typename index_t>
__global__ void probiou_pairwise_kernel(const scalar_t* __restrict__ b1,
                                        const scalar_t* __restrict__ b2,
                                        scalar_t* __restrict__ out, index_t n, index_t m,
                                        index_t total, Params<at::opmath_type<scalar_t>> s) {
  using acc_t = at::opmath_type<scalar_t>;
  for (index_t idx = global_thread<index_t>(); idx < total; idx += grid_stride<index_t>()) {
    const index_t r = idx / m;  // row of b1 over the flattened batch
    const index_t j = idx - r * m;
    acc_t ba[5], bb[5];
    load_obb(b1 + 5 * r, ba);
    load_obb(b2 + 5 * ((r / n) * m + j), bb);
    out[idx] = static_cast<scalar_t>(probiou_value(ba, bb, s.eps, s.floor, s.ciou));
  }
}

// The inputs of both pairwise backward kernels: grad (batch, n, m) read with
// stride gstride, b1 (batch, n, 5), b2 (batch, m, 5).
template <typename scalar_t, typename index_t>
struct PairwiseGrad {
  const scalar_t* grad;
  index_t gstride;
  const scalar_t* b1;
  const scalar_t* b2;
  index_t batch, n, m;
  Params<at::opmath_type<scalar_t>> s;
};

// The 7 adjoint fields as an array, for the reductions.
template <typename T>
TOOD_HOST_DEVICE_INLINE void adjoint_to(const ObbAdjoint<T>& g, T* out) {
  out[0] = g.x; out[1] = g.y; out[2] = g.a; out[3] = g.b;
  out[4] = g.cab; out[5] = g.det_c; out[6] = g.aspect;
}

template <typename T>
TOOD_HOST_DEVICE_INLINE ObbAdjoint<T> adjoint_from(const T* in) {
  return {in[0], in[1], in[2], in[3], in[4], in[5], in[6]};
}

// One box's gradient from its summed adjoints, stored.
template <typename scalar_t, typename acc_t>
__device__ void store_box_grad(const scalar_t* box_in, const acc_t* adj,
                               const Params<acc_t>& s, scalar_t* out) {
  acc_t box[5], g[5];
  load_obb(box_in, box);
  obb_backward(box, s.floor, s.ciou, adjoint_from(adj), g);
#pragma unroll
  for (int k = 0; k < 5; ++k) out[k] = static_cast<scalar_t>(g[k]);
}

// grad(b1)[r] = the backward of row r's Gaussian from sum_j grad[r, j] * its
// adjoints in pair (r, j): a warp per row.
template <typename scalar_t, typename index_t>
__global__ void probiou_backward_rows_kernel(const PairwiseGrad<scalar_t, index_t> in,
                                             scalar_t* __restrict__ g1) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* __restrict__ grad = in.grad;
  const scalar_t* __restrict__ b1 = in.b1;
  const scalar_t* __restrict__ b2 = in.b2;
  const index_t gstride = in.gstride, n = in.n, m = in.m, rows = in.batch * in.n;
  const Params<acc_t> s = in.s;
  const int lane = threadIdx.x & 31;
  for (index_t r = global_warp<index_t>(); r < rows; r += warp_grid_stride<index_t>()) {
    acc_t ba[5], acc[7] = {0, 0, 0, 0, 0, 0, 0};
    load_obb(b1 + 5 * r, ba);
    const Obb<acc_t> p = prepared(ba, s);
    const scalar_t* row2 = b2 + 5 * (r / n) * m;
    for (index_t j = lane; j < m; j += 32) {
      acc_t bb[5], part[7];
      load_obb(row2 + 5 * j, bb);
      ObbAdjoint<acc_t> ga, gb;
      probiou_obb<acc_t, true>(p, prepared(bb, s), s.eps, s.ciou,
                               static_cast<acc_t>(grad[(r * m + j) * gstride]), &ga, &gb);
      adjoint_to(ga, part);
#pragma unroll
      for (int c = 0; c < 7; ++c) acc[c] += part[c];
    }
    warp_sum(acc);
    if (lane == 0) store_box_grad(b1 + 5 * r, acc, s, g1 + 5 * r);
  }
}

// grad(b2)[b, j]: a block per 32 columns; coalesced reads of grad along j,
// fixed-order reduction over y, then one per-box backward per column.
template <typename scalar_t, typename index_t>
__global__ void probiou_backward_cols_kernel(const PairwiseGrad<scalar_t, index_t> in,
                                             scalar_t* __restrict__ g2) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t partial[kColRows][kColTile][7];
  const scalar_t* __restrict__ b1 = in.b1;
  const scalar_t* __restrict__ b2 = in.b2;
  const scalar_t* __restrict__ grad = in.grad;
  const index_t batch = in.batch, n = in.n, m = in.m, gstride = in.gstride;
  const Params<acc_t> s = in.s;
  const index_t tiles = (m + kColTile - 1) / kColTile;
  for (index_t t = blockIdx.x; t < batch * tiles; t += gridDim.x) {
    const index_t bi = t / tiles;
    const index_t j = (t - bi * tiles) * kColTile + threadIdx.x;
    acc_t acc[7] = {0, 0, 0, 0, 0, 0, 0};
    if (j < m) {
      acc_t bb[5];
      load_obb(b2 + 5 * (bi * m + j), bb);
      const Obb<acc_t> q = prepared(bb, s);
      for (index_t i = threadIdx.y; i < n; i += kColRows) {
        acc_t ba[5], part[7];
        load_obb(b1 + 5 * (bi * n + i), ba);
        ObbAdjoint<acc_t> ga, gb;
        probiou_obb<acc_t, true>(prepared(ba, s), q, s.eps, s.ciou,
                                 static_cast<acc_t>(grad[((bi * n + i) * m + j) * gstride]),
                                 &ga, &gb);
        adjoint_to(gb, part);
#pragma unroll
        for (int c = 0; c < 7; ++c) acc[c] += part[c];
      }
    }
    if (column_tile_sum(partial, acc) && j < m) {
      store_box_grad(b2 + 5 * (bi * m + j), acc, s, g2 + 5 * (bi * m + j));
    }
    __syncthreads();
  }
}

template <typename scalar_t>
void launch_probiou_pairwise(const ProbIouContract& c, cudaStream_t stream) {
  const int64_t total = c.out.numel();
  const int64_t max_index = std::max({total, 5 * c.b1.numel(), 5 * c.b2.numel()});
  with_kernel_index_type(max_index, [&](auto index_c) {
    using index_t = decltype(index_c);
    launch_kernel(probiou_pairwise_kernel<scalar_t, index_t>, num_blocks(total), kThreads,
                  stream, c.b1.const_data_ptr<scalar_t>(), c.b2.const_data_ptr<scalar_t>(),
                  c.out.mutable_data_ptr<scalar_t>(), static_cast<index_t>(c.n),
                  static_cast<index_t>(c.m), static_cast<index_t>(total),
                  params_of<scalar_t>(c.eps, c.floor, c.ciou));
  });
}

template <typename scalar_t>
void launch_probiou_pairwise(const ProbIouBackwardContract& c, cudaStream_t stream) {
  const int64_t max_index = std::max({c.grad.numel(), 5 * c.b1.numel(), 5 * c.b2.numel()});
  with_kernel_index_type(max_index, [&](auto index_c) {
    using index_t = decltype(index_c);
    const PairwiseGrad<scalar_t, index_t> in{
        c.grad.const_data_ptr<scalar_t>(), static_cast<index_t>(c.grad_stride),
        c.b1.const_data_ptr<scalar_t>(),   c.b2.const_data_ptr<scalar_t>(),
        static_cast<index_t>(c.batch),     static_cast<index_t>(c.n),
        static_cast<index_t>(c.m),         params_of<scalar_t>(c.eps, c.floor, c.ciou)};
    launch_pairwise_backward(probiou_backward_rows_kernel<scalar_t, index_t>,
                             probiou_backward_cols_kernel<scalar_t, index_t>, c.batch, c.n, c.m,
                             stream, in, c.grad_b1.mutable_data_ptr<scalar_t>(),
                             c.grad_b2.mutable_data_ptr<scalar_t>());
  });
}

// ---- the kernels of the contracts (csrc/box_ops/probiou.h) ---------------------------

// probiou and its backward: the element-wise kernel when aligned, else the pairwise kernels.
template <typename Contract>
void probiou_cuda(const Contract& c) {
  const DeviceGuard guard(c.b1.device());
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(c.b1.scalar_type(), "probiou_cuda", [&] {
    if (c.aligned) {
      launch_pair_values(pair_values<scalar_t>(c), current_stream());
    } else {
      launch_probiou_pairwise<scalar_t>(c, current_stream());
    }
  });
}

// probiou_loss (element-wise, unreduced) and its backward.
template <typename Contract>
void probiou_loss_cuda(const Contract& c) {
  const DeviceGuard guard(c.pred.device());
  TOOD_DISPATCH_CUDA_FLOATING_TYPES(c.pred.scalar_type(), "probiou_loss_cuda", [&] {
    launch_pair_values(pair_values<scalar_t>(c), current_stream());
  });
}

}  // namespace

TOOD_EXT_CUDA_IMPL(m) {
  register_probiou_ops<probiou_cuda<ProbIouContract>, probiou_cuda<ProbIouBackwardContract>,
                       probiou_loss_cuda<ProbIouLossContract>,
                       probiou_loss_cuda<ProbIouLossBackwardContract>>(m);
}

}  // namespace probiou
}  // namespace tood_ext
