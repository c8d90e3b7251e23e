// CPU deform kernels, the pixel-major path (groups of at least 4 channels;
// the choice is made in csrc/cpu/deform_sampling_cpu.cpp, the shared tile plan
// and backward schedule are in csrc/cpu/deform/plan.h).
//
// With several channels per offset group, the planar sweeps (deform_planar.cpp) spend
// their time on per-channel gathers: four per pixel and channel (microcoded,
// slow, on some CPUs) and two scalar read-modify-write pairs per pixel and
// channel in the grad_input scatter. Here the group's channels are taken
// kLanes at a time ("chunks", the last one possibly partial) and transposed
// into per-thread pixel-major scratch planes (HW x kLanes, a pixel's values of
// the chunk in one vector): each corner of a sample is then one vector load
// serving kLanes channels, each corner of the scatter one vector read-modify-
// write, and the offset-gradient terms of 8 pixels are transposed back so that
// they are summed over the channels in channel order. The per-element math is
// that of the shared header (bilinear_combine / bilinear_position_grad on GCC
// vectors of channels, scalar weights), and the order of every sum is the
// planar path's (grad_offset over channels in channel order; grad_input tile
// by tile in the planar scatter's pixel order): both paths give the same bits
// (tested). Used for groups of kMinPixelMajorGroup or more channels and planes
// of up to kPixelMajorMaxPlane pixels, where it measured faster (2-core AMD
// EPYC, fwd and bwd: 2.2-2.4x at Cg = 16, 1.2-1.4x at Cg = 4; slower at Cg <= 2
// and for Cg = 4 on a 640k-pixel plane); its plan covers the whole plane.
// Per-thread scratch: the plan plus three HW x kLanes planes and the offset
// gradient sums, about 190 bytes per pixel of the plane for float32.
//
// The path passes GCC vectors (up to 64 bytes) to always-inline helpers of
// this file and of the shared header; GCC warns that such calls would have
// another ABI on other ISAs, which never matters for them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_utils.h"
#include "deform/plan.h"

namespace tood_ext {
namespace deform {
namespace cpu_kernels {

using cpu::grain_for;

constexpr int64_t kLanes = 8;                   // channels per chunk

// GCC vector of kLanes values (lane k: channel c0 + k of the chunk).
template <typename scalar_t>
struct Lanes {
  typedef scalar_t type __attribute__((vector_size(kLanes * sizeof(scalar_t))));
};

template <typename V>
[[gnu::always_inline]] inline V load_lanes(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
[[gnu::always_inline]] inline void store_lanes(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// r[k] <- column k of the 8 x 8 matrix whose rows are r[0..7] (float lanes:
// unpack / shuffle / 128-bit lane permutes; any other type: element-wise).
template <typename V>
[[gnu::always_inline]] inline void transpose8(V r[8]) {
  if constexpr (sizeof(V) == 8 * sizeof(float) && sizeof(r[0][0]) == sizeof(float)) {
    typedef int32_t M __attribute__((vector_size(8 * sizeof(int32_t))));
    const M lo = {0, 8, 1, 9, 4, 12, 5, 13}, hi = {2, 10, 3, 11, 6, 14, 7, 15};
    const M lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    const M lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
    V t[8], s[8];
    for (int k = 0; k < 8; k += 2) {
      t[k] = __builtin_shuffle(r[k], r[k + 1], lo);
      t[k + 1] = __builtin_shuffle(r[k], r[k + 1], hi);
    }
    for (int k = 0; k < 8; k += 4) {
      s[k] = __builtin_shuffle(t[k], t[k + 2], lo2);
      s[k + 1] = __builtin_shuffle(t[k], t[k + 2], hi2);
      s[k + 2] = __builtin_shuffle(t[k + 1], t[k + 3], lo2);
      s[k + 3] = __builtin_shuffle(t[k + 1], t[k + 3], hi2);
    }
    for (int k = 0; k < 4; ++k) {
      r[k] = __builtin_shuffle(s[k], s[k + 4], lo4);
      r[k + 4] = __builtin_shuffle(s[k], s[k + 4], hi4);
    }
  } else {
    for (int i = 0; i < 8; ++i) {
      for (int j = i + 1; j < 8; ++j) {
        const auto x = r[i][j];
        r[i][j] = r[j][i];
        r[j][i] = x;
      }
    }
  }
}

// dst (HW x kLanes, pixel-major) <- planes src + k * HW, k < kc (lanes >= kc: 0).
// (pixels [0, n) of planes with stride HW.)
template <typename scalar_t>
[[gnu::always_inline]] inline void to_pixel_major(const scalar_t* __restrict src, int64_t HW,
                                                  int64_t n, int64_t kc, scalar_t* __restrict dst) {
  using V = typename Lanes<scalar_t>::type;
  static_assert(kLanes == 8, "transpose8");
  int64_t p = 0;
  if (kc == kLanes) {
    for (; p + kLanes <= n; p += kLanes) {
      V r[8];
      for (int k = 0; k < 8; ++k) r[k] = load_lanes<V>(src + k * HW + p);
      transpose8(r);
      for (int j = 0; j < 8; ++j) store_lanes(dst + (p + j) * kLanes, r[j]);
    }
  }
  for (; p < n; ++p) {
    for (int64_t k = 0; k < kLanes; ++k)
      dst[p * kLanes + k] = k < kc ? src[k * HW + p] : scalar_t(0);
  }
}

// planes dst + k * HW, k < kc <- src (HW x kLanes, pixel-major).
template <typename scalar_t>
[[gnu::always_inline]] inline void from_pixel_major(const scalar_t* __restrict src, int64_t HW,
                                                    int64_t kc, scalar_t* __restrict dst) {
  using V = typename Lanes<scalar_t>::type;
  int64_t p = 0;
  if (kc == kLanes) {
    for (; p + kLanes <= HW; p += kLanes) {
      V r[8];
      for (int j = 0; j < 8; ++j) r[j] = load_lanes<V>(src + (p + j) * kLanes);
      transpose8(r);
      for (int k = 0; k < 8; ++k) store_lanes(dst + k * HW + p, r[k]);
    }
  }
  for (; p < HW; ++p) {
    for (int64_t k = 0; k < kc; ++k) dst[k * HW + p] = src[p * kLanes + k];
  }
}

// Per-thread scratch of the pixel-major path: the whole plane's plan, three
// pixel-major planes and the per-pixel sums of the offset/mask gradient.
template <typename acc_t, typename index_t>
struct PixelMajorScratch {
  TilePlan<acc_t, index_t> plan;
  std::vector<acc_t> a, b, c;  // HW x kLanes each (input / upstream gradient / output)
  std::vector<acc_t> acc;      // 3 x HW

  explicit PixelMajorScratch(int64_t HW, bool backward)
      : plan(HW),
        a(HW * kLanes),
        b(backward ? HW * kLanes : 0),
        c(HW * kLanes),
        acc(backward ? 3 * HW : 0) {}
};

// The four corner vectors of an inner pixel whose corner (y0, x0) is at pixel o.
template <typename V, typename scalar_t, typename index_t>
[[gnu::always_inline]] inline void load_cell_lanes(const scalar_t* pm, index_t o, index_t W,
                                                   V v[4]) {
  v[0] = load_lanes<V>(pm + static_cast<int64_t>(o) * kLanes);
  v[1] = load_lanes<V>(pm + (static_cast<int64_t>(o) + 1) * kLanes);
  v[2] = load_lanes<V>(pm + (static_cast<int64_t>(o) + W) * kLanes);
  v[3] = load_lanes<V>(pm + (static_cast<int64_t>(o) + W + 1) * kLanes);
}

// Forward of channels [c0, c0 + kc) of block (b, g), plan filled: the output
// planes of those channels.
template <bool kMask, typename scalar_t, typename index_t>
[[gnu::always_inline]] inline void forward_chunk(const DeformArgs<scalar_t>& a, int64_t bg,
                                                 int64_t c0, int64_t kc,
                                                 PixelMajorScratch<scalar_t, index_t>& s,
                                                 scalar_t* out) {
  using V = typename Lanes<scalar_t>::type;
  const int64_t b = bg / a.G, g = bg - b * a.G, HW = a.HW;
  const index_t W = static_cast<index_t>(a.W);
  const int64_t plane0 = (b * a.C + g * a.Cg + c0) * HW;
  const scalar_t* m = a.mask ? a.mask + bg * HW : nullptr;
  const TilePlan<scalar_t, index_t>& t = s.plan;
  scalar_t* __restrict src = s.a.data();
  scalar_t* __restrict dst = s.c.data();
  to_pixel_major(a.input + plane0, HW, HW, kc, src);
  if (t.dense()) {
    const index_t* __restrict base = t.base();
    const scalar_t* __restrict ly = t.ly();
    const scalar_t* __restrict lx = t.lx();
    for (int64_t q = 0; q < HW; ++q) {
      V v[4];
      scalar_t w[4];
      load_cell_lanes(src, base[q], W, v);
      bilinear_weights(ly[q], lx[q], w);
      V value = bilinear_combine(w, v);
      if (kMask) value *= m[q];
      store_lanes(dst + q * kLanes, value);
    }
  }
  from_pixel_major(dst, HW, kc, out + plane0);
  for (int64_t e = 0; e < t.n_edge(); ++e) {  // exact values of the edge pixels
    const int64_t q = t.edge_q(e);
    for (int64_t k = 0; k < kc; ++k) {
      scalar_t v[4];
      load_corners(a.input + plane0 + k * HW, t.edge(e), v);
      scalar_t value = bilinear_value(t.edge(e), v);
      if (kMask) value *= m[q];
      out[plane0 + k * HW + q] = value;
    }
  }
}

template <typename scalar_t, typename index_t>
void forward_pixel_major(const DeformArgs<scalar_t>& a, scalar_t* out) {
  const int64_t blocks = a.B * a.G, chunks = ceil_div(a.Cg, kLanes);
  // split a block's chunks over units when there are too few blocks to feed the threads
  const int64_t splits =
      std::max<int64_t>(1, std::min(chunks, ceil_div(4 * at::get_num_threads(), blocks)));
  const int64_t per = ceil_div(chunks, splits);
  at::parallel_for(0, blocks * splits, grain_for(per * kLanes * a.HW),
                   [&](int64_t begin, int64_t end) {
                     PixelMajorScratch<scalar_t, index_t> s(a.HW, false);
                     for (int64_t u = begin; u < end; ++u) {
                       const int64_t bg = u / splits, h0 = (u - bg * splits) * per;
                       const int64_t h1 = std::min(h0 + per, chunks);
                       if (h0 >= h1) continue;
                       with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
                         s.plan.template fill<false>(a, bg, 0, a.HW);
                         for (int64_t h = h0; h < h1; ++h) {
                           const int64_t c0 = h * kLanes, kc = std::min(kLanes, a.Cg - c0);
                           if (a.mask) {
                             forward_chunk<true>(a, bg, c0, kc, s, out);
                           } else {
                             forward_chunk<false>(a, bg, c0, kc, s, out);
                           }
                         }
                       });
                     }
                   });
}

// Backward of channels [c0, c0 + kc) of block (b, g) over the pixels [p0, p1)
// of the plan (filled with fill<kInput>). kPosition: adds the chunk's terms of
// the offset/mask gradient to s.acc; kInput (whole plane only, p0 = 0, p1 =
// HW): writes the chunk's grad_input planes.
template <bool kInput, bool kPosition, bool kMask, typename scalar_t, typename index_t>
[[gnu::always_inline]] inline void backward_chunk(const DeformArgs<scalar_t>& a,
                                                  const DeformGrads<scalar_t>& gr, int64_t bg,
                                                  int64_t p0, int64_t p1, int64_t c0, int64_t kc,
                                                  PixelMajorScratch<scalar_t, index_t>& s) {
  using V = typename Lanes<scalar_t>::type;
  const int64_t b = bg / a.G, g = bg - b * a.G, HW = a.HW, n = p1 - p0;
  const index_t W = static_cast<index_t>(a.W);
  const int64_t plane0 = (b * a.C + g * a.Cg + c0) * HW;
  const scalar_t* m = a.mask ? a.mask + bg * HW + p0 : nullptr;
  const TilePlan<scalar_t, index_t>& t = s.plan;
  const index_t* __restrict base = t.base();
  const uint8_t* __restrict inner = t.inner();
  scalar_t* __restrict go = s.b.data();
  to_pixel_major(gr.grad + plane0 + p0, HW, n, kc, go);
  if (kPosition) {
    scalar_t* __restrict src = s.a.data();
    to_pixel_major(a.input + plane0, HW, HW, kc, src);
    scalar_t* __restrict acc_y = s.acc.data();
    scalar_t* __restrict acc_x = acc_y + n;
    scalar_t* __restrict acc_m = acc_x + n;
    if (t.dense()) {
      const scalar_t* __restrict ly = t.ly();
      const scalar_t* __restrict lx = t.lx();
      // the chunk's terms of pixel q, a vector over its channels (0 for edge pixels)
      auto terms = [&](int64_t q, V& ty, V& tx, V& tm) TOOD_INLINE_BODY {
        V v[4], gy, gx;
        load_cell_lanes(src, base[q], W, v);
        bilinear_position_grad(ly[q], lx[q], v, gy, gx);
        const V g_out = load_lanes<V>(go + q * kLanes);
        const bool in = inner[q] != 0;
        const V zero = {};
        ty = in ? g_out * gy : zero;
        tx = in ? g_out * gx : zero;
        if (kMask) {
          scalar_t w[4];
          bilinear_weights(ly[q], lx[q], w);
          tm = in ? g_out * bilinear_combine(w, v) : zero;
        }
      };
      int64_t q = 0;
      for (; q + kLanes <= n; q += kLanes) {  // 8 pixels; transposed: a vector per channel
        V ty[8], tx[8], tm[8];
        for (int j = 0; j < 8; ++j) terms(q + j, ty[j], tx[j], tm[j]);
        transpose8(ty);
        transpose8(tx);
        if (kMask) transpose8(tm);
        V sy = load_lanes<V>(acc_y + q), sx = load_lanes<V>(acc_x + q);
        V sm = kMask ? load_lanes<V>(acc_m + q) : V{};
        for (int64_t k = 0; k < kc; ++k) {  // channel order, as the planar sweeps
          sy += ty[k];
          sx += tx[k];
          if (kMask) sm += tm[k];
        }
        store_lanes(acc_y + q, sy);
        store_lanes(acc_x + q, sx);
        if (kMask) store_lanes(acc_m + q, sm);
      }
      for (; q < n; ++q) {
        V ty, tx, tm;
        terms(q, ty, tx, tm);
        for (int64_t k = 0; k < kc; ++k) {
          acc_y[q] += ty[k];
          acc_x[q] += tx[k];
          if (kMask) acc_m[q] += tm[k];
        }
      }
    }
    for (int64_t e = 0; e < t.n_edge(); ++e) {
      const int64_t q = t.edge_q(e);
      const BilinearCorners<scalar_t, index_t>& c = t.edge(e);
      for (int64_t k = 0; k < kc; ++k) {
        scalar_t v[4], gy, gx;
        load_corners(a.input + plane0 + k * HW, c, v);
        bilinear_position_grad(c, v, gy, gx);
        const scalar_t g_out = gr.grad[plane0 + k * HW + p0 + q];
        acc_y[q] += g_out * gy;
        acc_x[q] += g_out * gx;
        if (kMask) acc_m[q] += g_out * bilinear_value(c, v);
      }
    }
  }
  if (kInput) {
    scalar_t* __restrict gin = s.c.data();
    std::memset(gin, 0, HW * kLanes * sizeof(scalar_t));
    auto add = [gin](int64_t o, const V& d) TOOD_INLINE_BODY {
      store_lanes(gin + o * kLanes, load_lanes<V>(gin + o * kLanes) + d);
    };
    const scalar_t* __restrict wts = t.weights();
    auto one = [&](int64_t q) TOOD_INLINE_BODY {
      if (!inner[q]) return;
      V gv = load_lanes<V>(go + q * kLanes);
      if (kMask) gv *= m[q];
      const int64_t o = base[q];
      add(o, gv * wts[4 * q]);
      add(o + 1, gv * wts[4 * q + 1]);
      add(o + W, gv * wts[4 * q + 2]);
      add(o + W + 1, gv * wts[4 * q + 3]);
    };
    // the planar scatter's pixel order: tile by tile (kTile pixels), in each the
    // inner pixels as kScatterStreams interleaved ranges, then its edge pixels
    int64_t e = 0;
    for (int64_t t0 = 0; t0 < n; t0 += kTile) {
      const int64_t tn = n - t0 < kTile ? n - t0 : kTile;
      if (t.dense()) for_each_in_scatter_order(t0, tn, one);
      for (; e < t.n_edge() && t.edge_q(e) < t0 + tn; ++e) {
        const int64_t q = t.edge_q(e);
        V gv = load_lanes<V>(go + q * kLanes);
        if (kMask) gv *= m[q];
        for (int64_t k = 0; k < kc; ++k) {
          scatter_corners(t.edge(e), gv[k], [&](index_t o, scalar_t v) TOOD_INLINE_BODY {
            gin[o * kLanes + k] += v;
          });
        }
      }
    }
    from_pixel_major(gin, HW, kc, gr.grad_input + plane0);
  }
}

template <bool kInput, bool kPosition, typename scalar_t, typename index_t>
[[gnu::always_inline]] inline void backward_chunks(const DeformArgs<scalar_t>& a,
                                                   const DeformGrads<scalar_t>& gr, int64_t bg,
                                                   int64_t p0, int64_t p1, int64_t h0, int64_t h1,
                                                   PixelMajorScratch<scalar_t, index_t>& s) {
  s.plan.template fill<kInput>(a, bg, p0, p1);
  if (kPosition) std::memset(s.acc.data(), 0, 3 * (p1 - p0) * sizeof(scalar_t));
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t c0 = h * kLanes, kc = std::min(kLanes, a.Cg - c0);
    if (a.mask) {
      backward_chunk<kInput, kPosition, true>(a, gr, bg, p0, p1, c0, kc, s);
    } else {
      backward_chunk<kInput, kPosition, false>(a, gr, bg, p0, p1, c0, kc, s);
    }
  }
  if (kPosition) write_position_grads(a, gr, bg, p0, p1, s.acc.data());
}

// The shared schedule (run_backward_schedule), its units: the fused sweep does
// a whole block; pass 1 (offset/mask gradient) takes (block, pixel range)
// units, pass 2 (grad_input) (block, range of chunks) units.
template <typename scalar_t, typename index_t>
void backward_pixel_major(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr) {
  using Scratch = PixelMajorScratch<scalar_t, index_t>;
  const int64_t blocks = a.B * a.G, chunks = ceil_div(a.Cg, kLanes);
  const int64_t threads = at::get_num_threads();
  const int64_t splits = ceil_div(4 * threads, blocks);
  const int64_t ranges = std::min(splits, ceil_div(a.HW, 1024)), range = ceil_div(a.HW, ranges);
  const int64_t parts = std::min(chunks, splits), per = ceil_div(chunks, parts);
  const BackwardSchedule s{blocks, ranges, range, chunks, parts, per,
                           grain_for(a.Cg * a.HW), grain_for(a.Cg * range),
                           grain_for(per * kLanes * a.HW)};
  run_backward_schedule(
      s, a.HW, fuse_backward(blocks, threads), [&] { return Scratch(a.HW, true); },
      [&](Scratch& scratch, int64_t bg) {
        with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
          backward_chunks<true, true>(a, gr, bg, 0, a.HW, 0, chunks, scratch);
        });
      },
      [&](Scratch& scratch, int64_t bg, int64_t p0, int64_t p1) {
        with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
          backward_chunks<false, true>(a, gr, bg, p0, p1, 0, chunks, scratch);
        });
      },
      [&](Scratch& scratch, int64_t bg, int64_t h0, int64_t h1) {
        with_cpu_isa(a.avx2, [&]() TOOD_INLINE_BODY {
          backward_chunks<true, false>(a, gr, bg, 0, a.HW, h0, h1, scratch);
        });
      });
}

TOOD_DEFORM_CPU_INSTANTIATE(forward_pixel_major, backward_pixel_major)

}  // namespace cpu_kernels
}  // namespace deform
}  // namespace tood_ext
