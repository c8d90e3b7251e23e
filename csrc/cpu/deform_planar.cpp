// CPU deform kernels, the planar path: loops under at::parallel_for around the
// per-element math of csrc/deform/deform_sampling_utils.h (the same functions
// the CUDA kernels call), over the tile plan of csrc/cpu/deform/plan.h (its
// header says how work is cut and why the results are bitwise deterministic).
//
// Each channel plane is swept over a tile: the sweeps that gather (forward
// value, offset/mask gradient) are dense loops over the plan that the compiler
// vectorises with hardware gathers (edge pixels, with a corner outside the
// plane, get placeholder loads that are selected away), followed by a short
// exact pass over the tile's edge pixels; the grad_input scatter is scalar,
// over the inner pixels and then the edge pixels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_utils.h"
#include "deform/plan.h"

namespace tood_ext {
namespace deform {
namespace cpu_kernels {

using cpu::grain_for;

// ---- forward ------------------------------------------------------------------------

// dst[q] = (m[q] *) value of pixel q of the tile in plane src: a dense sweep
// over every pixel (edge pixels get a placeholder), then the edge list
// overwrites its pixels with their exact values.
template <bool kMask, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void sample_tile(const TilePlan<acc_t, index_t>& t, index_t W,
                                               const scalar_t* __restrict src,
                                               const scalar_t* __restrict m,
                                               scalar_t* __restrict dst) {
  sweep_tile(
      t,
      [&](int64_t q, index_t o, acc_t ly, acc_t lx, bool) TOOD_INLINE_BODY {
        acc_t v[4], w[4];
        load_cell(src, o, W, v);
        bilinear_weights(ly, lx, w);
        acc_t value = bilinear_combine(w, v);
        if (kMask) value *= static_cast<acc_t>(m[q]);
        dst[q] = static_cast<scalar_t>(value);
      },
      [&](int64_t q, const BilinearCorners<acc_t, index_t>& c) TOOD_INLINE_BODY {
        acc_t v[4];
        load_corners(src, c, v);
        acc_t value = bilinear_value(c, v);
        if (kMask) value *= static_cast<acc_t>(m[q]);
        dst[q] = static_cast<scalar_t>(value);
      });
}

template <typename scalar_t, typename index_t>
void forward_planar(const DeformArgs<scalar_t>& a, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  static_assert(std::is_same_v<acc_t, scalar_t>, "CPU kernels: float32 and float64 only");
  const int64_t tiles = ceil_div(a.HW, kTile);
  const int64_t tile_len = std::min(kTile, a.HW);
  const index_t W = static_cast<index_t>(a.W);
  at::parallel_for(0, a.B * a.G * tiles, grain_for(a.Cg * tile_len), [&](int64_t begin,
                                                                         int64_t end) {
    TilePlan<acc_t, index_t> plan(tile_len);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / tiles, b = bg / a.G, g = bg - b * a.G;
      const int64_t p0 = (u - bg * tiles) * kTile, p1 = std::min(p0 + kTile, a.HW);
      with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
        plan.template fill<false>(a, bg, p0, p1);
        const scalar_t* m = a.mask ? a.mask + bg * a.HW + p0 : nullptr;
        for (int64_t c = 0; c < a.Cg; ++c) {
          const int64_t plane = (b * a.C + g * a.Cg + c) * a.HW;
          const scalar_t* src = a.input + plane;
          if (c + 1 < a.Cg) prefetch_rows(src + a.HW, a.W, a.HW, p0, p1);
          if (m) {
            sample_tile<true>(plan, W, src, m, out + plane + p0);
          } else {
            sample_tile<false>(plan, W, src, m, out + plane + p0);
          }
        }
      });
    }
  });
}

// ---- backward -----------------------------------------------------------------------

// Per-thread scratch of the backward: the tile's corners and, per pixel, the
// sums over channels of grad * d value / d (y, x) and of grad * value.
template <typename acc_t, typename index_t>
struct BackwardScratch {
  TilePlan<acc_t, index_t> plan;
  std::vector<acc_t> acc;

  explicit BackwardScratch(int64_t len) : plan(len), acc(3 * len) {}
};

// acc_y/acc_x (/acc_m) of the tile's pixels += grad * d value / d (y, x)
// (/ grad * value) of one channel plane src: a dense gathering sweep in which
// edge pixels add 0, then the edge list adds their exact terms.
template <bool kMask, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void position_grad_tile(const TilePlan<acc_t, index_t>& t,
                                                      index_t W,
                                                      const scalar_t* __restrict src,
                                                      const scalar_t* __restrict go,
                                                      acc_t* __restrict acc_y,
                                                      acc_t* __restrict acc_x,
                                                      acc_t* __restrict acc_m) {
  sweep_tile(
      t,
      [&](int64_t q, index_t o, acc_t ly, acc_t lx, bool in) TOOD_INLINE_BODY {
        acc_t v[4], gy, gx;
        load_cell(src, o, W, v);
        bilinear_position_grad(ly, lx, v, gy, gx);
        const acc_t g_out = static_cast<acc_t>(go[q]);
        acc_y[q] += in ? g_out * gy : acc_t(0);
        acc_x[q] += in ? g_out * gx : acc_t(0);
        if (kMask) {
          acc_t w[4];
          bilinear_weights(ly, lx, w);
          acc_m[q] += in ? g_out * bilinear_combine(w, v) : acc_t(0);
        }
      },
      [&](int64_t q, const BilinearCorners<acc_t, index_t>& c) TOOD_INLINE_BODY {
        acc_t v[4], gy, gx;
        load_corners(src, c, v);
        bilinear_position_grad(c, v, gy, gx);
        const acc_t g_out = static_cast<acc_t>(go[q]);
        acc_y[q] += g_out * gy;
        acc_x[q] += g_out * gx;
        if (kMask) acc_m[q] += g_out * bilinear_value(c, v);
      });
}

// grad_input plane gin += the tile's upstream gradient go (times m) spread
// over each pixel's corners: inner pixels (no validity tests), then the edge
// list in raster order. Scalar read-modify-writes: neighbouring pixels share
// corners, so the adds must not be reordered into vector scatters.
//
// The inner pixels are taken in for_each_in_scatter_order (interleaved
// streams; a fixed function of the tile: thread count plays no part).
template <bool kMask, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void input_grad_tile(const TilePlan<acc_t, index_t>& t, index_t W,
                                                   const scalar_t* __restrict go,
                                                   const scalar_t* __restrict m,
                                                   scalar_t* __restrict gin) {
  const int64_t n = t.size();
  auto add = [gin](index_t off, acc_t v) TOOD_INLINE_BODY {
    gin[off] = static_cast<scalar_t>(static_cast<acc_t>(gin[off]) + v);
  };
  if (t.dense()) {
    const index_t* __restrict base = t.base();
    const acc_t* __restrict wts = t.weights();
    const uint8_t* __restrict inner = t.inner();
    typedef acc_t quad_t __attribute__((vector_size(4 * sizeof(acc_t))));
    auto one = [&](int64_t q) TOOD_INLINE_BODY {
      if (!inner[q]) return;
      acc_t g = static_cast<acc_t>(go[q]);
      if (kMask) g *= static_cast<acc_t>(m[q]);
      quad_t w;
      std::memcpy(&w, wts + 4 * q, sizeof(w));
      const quad_t d = g * w;  // the four products g * w[k], in one vector multiply
      const index_t o = base[q];
      add_pair(gin + o, d[0], d[1]);
      add_pair(gin + o + W, d[2], d[3]);
    };
    for_each_in_scatter_order(0, n, one);
  }
  for (int64_t k = 0; k < t.n_edge(); ++k) {
    const int64_t q = t.edge_q(k);
    acc_t g = static_cast<acc_t>(go[q]);
    if (kMask) g *= static_cast<acc_t>(m[q]);
    scatter_corners(t.edge(k), g, add);
  }
}

// One tile [p0, p1) of block (b, g), channels [c0, c1) of the group.
// kInput: scatter into the grad_input planes of those channels (owned by the
// calling thread, which zeroes each plane before its first tile: grad_input is
// allocated uninitialised and gets no separate zeroing pass).
// kPosition: grad_offset / grad_mask of the tile's pixels (needs all channels
// of the group, c0 = 0, c1 = Cg).
template <bool kInput, bool kPosition, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void backward_tile(const DeformArgs<scalar_t>& a,
                                                 const DeformGrads<scalar_t>& gr, int64_t bg,
                                                 int64_t p0, int64_t p1, int64_t c0, int64_t c1,
                                                 BackwardScratch<acc_t, index_t>& scratch) {
  const int64_t b = bg / a.G, g = bg - b * a.G, n = p1 - p0;
  const index_t W = static_cast<index_t>(a.W);
  TilePlan<acc_t, index_t>& plan = scratch.plan;
  plan.template fill<kInput>(a, bg, p0, p1);
  const scalar_t* m = a.mask ? a.mask + bg * a.HW + p0 : nullptr;
  acc_t* acc_y = scratch.acc.data();
  acc_t* acc_x = acc_y + n;
  acc_t* acc_m = acc_x + n;
  if (kPosition) std::memset(acc_y, 0, 3 * n * sizeof(acc_t));
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t plane = (b * a.C + g * a.Cg + c) * a.HW;
    const scalar_t* src = a.input + plane;
    const scalar_t* go = gr.grad + plane + p0;
    scalar_t* gin = gr.grad_input + plane;
    if (kInput && p0 == 0) std::memset(gin, 0, a.HW * sizeof(scalar_t));  // first touch, by the owner
    if (c + 1 < c1) {
      if (kPosition) prefetch_rows(src + a.HW, a.W, a.HW, p0, p1);
      if (kInput && p0 > 0) prefetch_rows<true>(gin + a.HW, a.W, a.HW, p0, p1);
    }
    if (kPosition) {
      if (m) {
        position_grad_tile<true>(plan, W, src, go, acc_y, acc_x, acc_m);
      } else {
        position_grad_tile<false>(plan, W, src, go, acc_y, acc_x, acc_m);
      }
    }
    if (kInput) {
      if (m) {
        input_grad_tile<true>(plan, W, go, m, gin);
      } else {
        input_grad_tile<false>(plan, W, go, m, gin);
      }
    }
  }
  if (kPosition) write_position_grads(a, gr, bg, p0, p1, acc_y);
}


// The shared schedule (run_backward_schedule): fused, a (b, g) block per unit,
// tile after tile; else pass 1 over (b, g, tile) units and pass 2 over (b, g,
// chunk of channels) units (each grad_input plane has one owner).
template <typename scalar_t, typename index_t>
void backward_planar(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr) {
  using acc_t = at::opmath_type<scalar_t>;
  using Scratch = BackwardScratch<acc_t, index_t>;
  const int64_t tiles = ceil_div(a.HW, kTile);
  const int64_t tile_len = std::min(kTile, a.HW);
  const int64_t blocks = a.B * a.G;
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::max<int64_t>(1, std::min(a.Cg, ceil_div(4 * threads, blocks)));
  const int64_t chunk = ceil_div(a.Cg, chunks);
  const BackwardSchedule s{blocks, tiles, kTile, a.Cg, chunks, chunk,
                           grain_for(a.Cg * a.HW), grain_for(a.Cg * tile_len),
                           grain_for(chunk * a.HW)};
  run_backward_schedule(
      s, a.HW, fuse_backward(blocks, threads), [&] { return Scratch(tile_len); },
      [&](Scratch& scratch, int64_t bg) {
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t p0 = t * kTile, p1 = std::min(p0 + kTile, a.HW);
          with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
            backward_tile<true, true>(a, gr, bg, p0, p1, 0, a.Cg, scratch);
          });
        }
      },
      [&](Scratch& scratch, int64_t bg, int64_t p0, int64_t p1) {
        with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
          backward_tile<false, true>(a, gr, bg, p0, p1, 0, a.Cg, scratch);
        });
      },
      [&](Scratch& scratch, int64_t bg, int64_t c0, int64_t c1) {
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t p0 = t * kTile, p1 = std::min(p0 + kTile, a.HW);
          with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
            backward_tile<true, false>(a, gr, bg, p0, p1, c0, c1, scratch);
          });
        }
      });
}

TOOD_DEFORM_CPU_INSTANTIATE(forward_planar, backward_planar)

}  // namespace cpu_kernels
}  // namespace deform
}  // namespace tood_ext
