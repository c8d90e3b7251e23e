// The CPU deform kernels' shared part (csrc/cpu/deform_planar.cpp,
// csrc/cpu/deform_pixel_major.cpp, dispatched by csrc/cpu/deform_sampling_cpu.cpp):
// the arguments of a call, the tile plan (the corners of a tile of pixels,
// computed once and reused by every channel of the group), the grad_input
// scatter's pixel order, the backward's work schedule, and the entry points of
// the two paths.
//
// Work is cut into (image b, offset group g) blocks. Within a block, pixels
// are taken in tiles of up to kTile (a whole plane at the usual sizes): the
// cell of every pixel of the tile (its top-left corner's plane offset, the
// fractional parts, whether all four corners are inside the plane) is
// computed once into a per-thread structure-of-arrays plan and reused by
// every channel of the group (all C channels for G = 1).
//
// Race-freedom and determinism (bitwise, for any thread count, either path):
// * forward: every output element is written once.
// * grad_offset / grad_mask of pixel (b, g, i, j): summed over the group's
//   channels in channel order by the one thread owning the pixel.
// * grad_input: a plane (b, c) is zeroed and then scattered into by the one
//   thread owning channel c of block (b, g), tile after tile, inner pixels
//   (for_each_in_scatter_order) then edge pixels. run_backward_schedule:
//   either all gradients come from one sweep over (b, g) blocks ("fused",
//   when there are enough blocks to feed the threads), or from two passes:
//   grad_offset/grad_mask over (b, g, pixel range) units, then grad_input over
//   (b, g, channel range) units. Both schedules add into each plane and each
//   pixel sum in the same order: the same bits.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../deform/deform_sampling_utils.h"
#include "isa.h"

namespace tood_ext {
namespace deform {
namespace cpu_kernels {

constexpr int64_t kTile = 16384;  // pixels per tile plan (dense arrays ~460 KiB for float32)
constexpr int64_t kHaloRows = 2;       // rows around a tile prefetched before its sweep
constexpr int64_t kScatterStreams = 4;  // interleaved pixel ranges of a grad_input scatter

// always_inline: also called inside the ISA clones (input_grad_tile)
[[gnu::always_inline]] inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Everything a kernel needs about one call; pointers to contiguous tensors.
template <typename scalar_t>
struct DeformArgs {
  const scalar_t* input;   // (B, C, H, W)
  const scalar_t* offset;  // (B, G, 2, H, W)
  const scalar_t* mask;    // (B, G, H, W) or nullptr
  int64_t B, C, G, Cg, H, W, HW;
  bool avx2;  // with_cpu_isa may run the AVX2 clone (DeformCpuConfig, read once)
};

// Prefetches (into L2), in address order, the rows of a plane that pixels
// [p0, p1) sample with offsets of up to kHaloRows rows: the gathers of a
// sweep then find their lines in cache instead of missing in random order.
template <bool kWrite = false, typename scalar_t>
[[gnu::always_inline]] inline void prefetch_rows(const scalar_t* plane, int64_t W, int64_t HW, int64_t p0, int64_t p1) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const int64_t lo = p0 - kHaloRows * W > 0 ? p0 - kHaloRows * W : 0;
  const int64_t hi = p1 + kHaloRows * W < HW ? p1 + kHaloRows * W : HW;
  for (int64_t k = lo; k < hi; k += kLine) __builtin_prefetch(plane + k, kWrite ? 1 : 0, 2);
}

// The corners of one tile of pixels [p0, p1) of block (b, g), computed once
// and reused by every channel of the group. Dense arrays over the tile's
// pixels q (structure of arrays, so that the channel sweeps vectorise):
//   base[q]   y0 * W + x0, the plane offset of corner (y0, x0);
//   ly[q], lx[q]  the fractional parts;
//   w[4 q .. 4 q + 3]  the four corner weights (filled when the grad_input
//             scatter will use them: fill<true>);
//   inner[q]  1 when all four corners are inside the plane.
// For an "edge" pixel (inner[q] = 0: a corner outside the map, the sample
// outside it, or a NaN position) base/ly/lx are 0, so that the dense sweeps
// load in-bounds values for it (plane offsets 0, 1, W, W + 1: needs H, W >= 2)
// and select them away; its exact corners (BilinearCorners, with validity) are
// kept in a short side list and swept separately.
template <typename acc_t, typename index_t>
class TilePlan {
 public:
  explicit TilePlan(int64_t len)
      : base_(len), ly_(len), lx_(len), w_(4 * len), inner_(len), edge_q_(len), edge_(len) {}

  // kWeights: also the corner weights (weights(), for the grad_input scatter)
  template <bool kWeights, typename scalar_t>
  [[gnu::always_inline]] void fill(const DeformArgs<scalar_t>& a, int64_t bg, int64_t p0,
                                   int64_t p1) {
    n_ = p1 - p0;
    const scalar_t* __restrict dy = a.offset + 2 * bg * a.HW + p0;
    const scalar_t* __restrict dx = dy + a.HW;
    const index_t H = static_cast<index_t>(a.H), W = static_cast<index_t>(a.W);
    index_t* __restrict base = base_.data();
    acc_t* __restrict ly = ly_.data();
    acc_t* __restrict lx = lx_.data();
    acc_t* __restrict wq = w_.data();
    uint8_t* __restrict inner = inner_.data();
    // row segments (i fixed, j the loop index): a loop without carried state
    for (int64_t p = p0; p < p1;) {
      const index_t i = static_cast<index_t>(p / a.W);
      const int64_t row = static_cast<int64_t>(i) * a.W;
      const index_t j0 = static_cast<index_t>(p - row);
      const index_t j1 = static_cast<index_t>(p1 < row + a.W ? p1 - row : a.W);
      const int64_t q0 = row - p0;
      TOOD_GATHER_LOOP
      for (index_t j = j0; j < j1; ++j) {
        const int64_t q = q0 + j;
        index_t y0, x0;
        acc_t fy, fx;
        bool inside;
        sample_cell(static_cast<acc_t>(i) + static_cast<acc_t>(dy[q]),
                    static_cast<acc_t>(j) + static_cast<acc_t>(dx[q]), H, W, y0, x0, fy, fx,
                    inside);
        const bool in = cell_inner(y0, x0, H, W);
        base[q] = in ? y0 * W + x0 : index_t(0);
        ly[q] = in ? fy : acc_t(0);
        lx[q] = in ? fx : acc_t(0);
        if (kWeights) {
          acc_t w[4];
          bilinear_weights(ly[q], lx[q], w);
          for (int k = 0; k < 4; ++k) wq[4 * q + k] = w[k];
        }
        inner[q] = in;
      }
      p = row + j1;
    }
    n_edge_ = 0;
    for (int64_t q = 0; q < n_; ++q) {
      if (!inner[q]) {
        const int64_t p = p0 + q;
        deform_corners(static_cast<index_t>(p / a.W), static_cast<index_t>(p % a.W),
                       static_cast<acc_t>(dy[q]), static_cast<acc_t>(dx[q]), H, W,
                       edge_[n_edge_]);
        edge_q_[n_edge_++] = static_cast<int32_t>(q);
      }
    }
    // every pixel is an edge pixel when H < 2 or W < 2 (no cell has four
    // corners in the plane): the dense sweeps are skipped, and their loads at
    // offsets W, W + 1 would leave the plane
    dense_ = n_edge_ < n_;
  }

  [[gnu::always_inline]] int64_t size() const { return n_; }
  [[gnu::always_inline]] bool dense() const { return dense_; }
  [[gnu::always_inline]] const index_t* base() const { return base_.data(); }
  [[gnu::always_inline]] const acc_t* ly() const { return ly_.data(); }
  [[gnu::always_inline]] const acc_t* lx() const { return lx_.data(); }
  [[gnu::always_inline]] const acc_t* weights() const { return w_.data(); }
  [[gnu::always_inline]] const uint8_t* inner() const { return inner_.data(); }
  [[gnu::always_inline]] int64_t n_edge() const { return n_edge_; }
  [[gnu::always_inline]] int32_t edge_q(int64_t k) const { return edge_q_[k]; }
  [[gnu::always_inline]] const BilinearCorners<acc_t, index_t>& edge(int64_t k) const { return edge_[k]; }

 private:
  std::vector<index_t> base_;
  std::vector<acc_t> ly_, lx_;
  std::vector<acc_t> w_;  // bilinear_weights(ly[q], lx[q]) at w_[4 q .. 4 q + 3]
  std::vector<uint8_t> inner_;
  std::vector<int32_t> edge_q_;  // tile-relative pixels of the edge list, raster order
  std::vector<BilinearCorners<acc_t, index_t>> edge_;
  int64_t n_ = 0, n_edge_ = 0;
  bool dense_ = false;
};

// The sweep of one channel plane over a tile's plan: when the plan is dense,
// dense(q, o, ly, lx, in) for every pixel q of the tile in one loop that the
// compiler vectorises (o = base[q]: loads gathered through it; an edge pixel
// comes with placeholders and in = false), then edge(q, corners) for each
// pixel of the edge list, in raster order, with its exact corners.
template <typename acc_t, typename index_t, typename Dense, typename Edge>
[[gnu::always_inline]] inline void sweep_tile(const TilePlan<acc_t, index_t>& t, Dense&& dense,
                                              Edge&& edge) {
  if (t.dense()) {
    const int64_t n = t.size();
    const index_t* __restrict base = t.base();
    const acc_t* __restrict ly = t.ly();
    const acc_t* __restrict lx = t.lx();
    const uint8_t* __restrict inner = t.inner();
    TOOD_GATHER_LOOP
    for (int64_t q = 0; q < n; ++q) dense(q, base[q], ly[q], lx[q], inner[q] != 0);
  }
  for (int64_t k = 0; k < t.n_edge(); ++k) edge(t.edge_q(k), t.edge(k));
}

// The four corner values of an inner pixel whose corner (y0, x0) is at plane + o.
// float32: each row's two corners as one 64-bit load, which the vectorised
// sweeps turn into 64-bit gathers (half the gathered elements of four 32-bit
// gathers; 1.4x faster forward at G = C on a Zen 2 core). Same values.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr bool kPairLoads = true;
#else
constexpr bool kPairLoads = false;
#endif

template <typename acc_t, typename index_t, typename scalar_t>
[[gnu::always_inline]] inline void load_cell(const scalar_t* plane, index_t o, index_t W,
                                             acc_t v[4]) {
  if constexpr (kPairLoads && std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    uint64_t top, bottom;
    std::memcpy(&top, plane + o, sizeof(top));
    std::memcpy(&bottom, plane + o + W, sizeof(bottom));
    const uint32_t bits[4] = {static_cast<uint32_t>(top), static_cast<uint32_t>(top >> 32),
                              static_cast<uint32_t>(bottom), static_cast<uint32_t>(bottom >> 32)};
    std::memcpy(v, bits, sizeof(bits));
    return;
  }
  v[0] = static_cast<acc_t>(plane[o]);
  v[1] = static_cast<acc_t>(plane[o + 1]);
  v[2] = static_cast<acc_t>(plane[o + W]);
  v[3] = static_cast<acc_t>(plane[o + W + 1]);
}

// p[0] += a, p[1] += b (two horizontally adjacent corners): for float and
// double one read-modify-write of a two-lane vector, the same two IEEE
// additions as two scalar ones, with half the memory operations.
template <typename scalar_t, typename acc_t>
[[gnu::always_inline]] inline void add_pair(scalar_t* p, acc_t a, acc_t b) {
  if constexpr (std::is_same_v<scalar_t, acc_t> &&
                (std::is_same_v<acc_t, float> || std::is_same_v<acc_t, double>)) {
    typedef acc_t pair_t __attribute__((vector_size(2 * sizeof(acc_t))));
    pair_t x;
    std::memcpy(&x, p, sizeof(x));
    const pair_t d = {a, b};
    x += d;
    std::memcpy(p, &x, sizeof(x));
  } else {
    p[0] = static_cast<scalar_t>(static_cast<acc_t>(p[0]) + a);
    p[1] = static_cast<scalar_t>(static_cast<acc_t>(p[1]) + b);
  }
}

template <typename scalar_t>
struct DeformGrads {
  const scalar_t* grad;   // (B, C, H, W), upstream
  scalar_t* grad_input;   // (B, C, H, W), zeroed by the owner of each plane (tile 0)
  scalar_t* grad_offset;  // (B, G, 2, H, W)
  scalar_t* grad_mask;    // (B, G, H, W) or nullptr
};

// Calls one(q) for q in [q0, q0 + n) in the grad_input scatter's order, shared
// by both paths (the order of the adds into each element, hence the bits): the
// pixels as kScatterStreams interleaved streams, the range cut into that many
// consecutive parts and step k doing pixel k of each part, in part order.
// Consecutive pixels in raster order usually add into overlapping corners, so
// one stream is a chain of dependent read-modify-writes through memory; the
// parts are rows apart and their chains run side by side.
template <typename Fn>
[[gnu::always_inline]] inline void for_each_in_scatter_order(int64_t q0, int64_t n, Fn&& one) {
  constexpr int64_t S = kScatterStreams;
  const int64_t len = ceil_div(n, S);      // pixels per part (the last ones may have fewer)
  const int64_t full = n - (S - 1) * len;  // steps in which every part has a pixel
  int64_t k = 0;
  for (; k < full; ++k) {
    for (int64_t r = 0; r < S; ++r) one(q0 + k + r * len);
  }
  for (; k < len; ++k) {
    for (int64_t r = 0; r < S; ++r) {
      if (k + r * len < n) one(q0 + k + r * len);
    }
  }
}

// grad_offset / grad_mask of the pixels [p0, p1) of block bg from s.acc.
template <typename scalar_t>
[[gnu::always_inline]] inline void write_position_grads(const DeformArgs<scalar_t>& a,
                                                        const DeformGrads<scalar_t>& gr, int64_t bg,
                                                        int64_t p0, int64_t p1,
                                                        const scalar_t* acc) {
  const int64_t n = p1 - p0;
  const scalar_t* m = a.mask ? a.mask + bg * a.HW + p0 : nullptr;
  const scalar_t *acc_y = acc, *acc_x = acc + n, *acc_m = acc + 2 * n;
  scalar_t* gdy = gr.grad_offset + 2 * bg * a.HW + p0;
  scalar_t* gdx = gdy + a.HW;
  for (int64_t q = 0; q < n; ++q) {
    const scalar_t mq = m ? m[q] : scalar_t(1);
    gdy[q] = mq * acc_y[q];
    gdx[q] = mq * acc_x[q];
  }
  if (gr.grad_mask) {
    scalar_t* gm = gr.grad_mask + bg * a.HW + p0;
    for (int64_t q = 0; q < n; ++q) gm[q] = acc_m[q];
  }
}

// ---- the backward's work schedule (both paths) --------------------------------------

// Units of the two-pass schedule, per (b, g) block: pass 1 (grad_offset /
// grad_mask) takes pixel ranges [r * range, min((r + 1) * range, HW)), r <
// ranges; pass 2 (grad_input) takes ranges [k * per, min((k + 1) * per, units))
// of the path's channel units (channels, or chunks of channels), k < parts.
// grain_*: at::parallel_for grains of the fused sweep and of the two passes.
struct BackwardSchedule {
  int64_t blocks;
  int64_t ranges, range;
  int64_t units, parts, per;
  int64_t grain_fused, grain_position, grain_input;
};

// Fused when there are at least 4 (b, g) blocks per thread.
inline bool fuse_backward(int64_t blocks, int64_t threads) { return blocks >= 4 * threads; }

// Runs the backward of one call: fused(scratch, bg) per block, or
// position(scratch, bg, p0, p1) per pass-1 unit and then input(scratch, bg,
// u0, u1) per pass-2 unit. make_scratch() gives each parallel chunk its
// per-thread scratch.
template <typename MakeScratch, typename Fused, typename Position, typename Input>
void run_backward_schedule(const BackwardSchedule& s, int64_t HW, bool fused_sweep,
                           MakeScratch&& make_scratch, Fused&& fused, Position&& position,
                           Input&& input) {
  if (fused_sweep) {
    at::parallel_for(0, s.blocks, s.grain_fused, [&](int64_t begin, int64_t end) {
      auto scratch = make_scratch();
      for (int64_t bg = begin; bg < end; ++bg) fused(scratch, bg);
    });
    return;
  }
  at::parallel_for(0, s.blocks * s.ranges, s.grain_position, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / s.ranges, p0 = (u - bg * s.ranges) * s.range;
      const int64_t p1 = std::min(p0 + s.range, HW);
      if (p0 >= p1) continue;
      position(scratch, bg, p0, p1);
    }
  });
  at::parallel_for(0, s.blocks * s.parts, s.grain_input, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / s.parts, u0 = (u - bg * s.parts) * s.per;
      const int64_t u1 = std::min(u0 + s.per, s.units);
      if (u0 >= u1) continue;
      input(scratch, bg, u0, u1);
    }
  });
}

// ---- the two paths ------------------------------------------------------------------

// Pixel-major path (csrc/cpu/deform_pixel_major.cpp): groups of at least
// kMinPixelMajorGroup channels on planes of up to kPixelMajorMaxPlane pixels
// take it by default (measured faster there); the planar path
// (csrc/cpu/deform_planar.cpp) takes the rest. Both give the same bits.
constexpr int64_t kMinPixelMajorGroup = 4;      // channels per group (fewer: planar faster)
constexpr int64_t kPixelMajorMaxPlane = 65536;  // pixels (scratch planes 2 MiB each for float32)

// Instantiated for scalar_t in {float, double}, index_t in {int32_t, int64_t}.
template <typename scalar_t, typename index_t>
void forward_planar(const DeformArgs<scalar_t>& a, scalar_t* out);
template <typename scalar_t, typename index_t>
void backward_planar(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr);
template <typename scalar_t, typename index_t>
void forward_pixel_major(const DeformArgs<scalar_t>& a, scalar_t* out);
template <typename scalar_t, typename index_t>
void backward_pixel_major(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr);

// Explicit instantiations of a path's entry points (one line per path file).
#define TOOD_DEFORM_CPU_INSTANTIATE(FORWARD, BACKWARD)                                    \
  template void FORWARD<float, int32_t>(const DeformArgs<float>&, float*);              \
  template void FORWARD<float, int64_t>(const DeformArgs<float>&, float*);              \
  template void FORWARD<double, int32_t>(const DeformArgs<double>&, double*);           \
  template void FORWARD<double, int64_t>(const DeformArgs<double>&, double*);           \
  template void BACKWARD<float, int32_t>(const DeformArgs<float>&,                      \
                                         const DeformGrads<float>&);                    \
  template void BACKWARD<float, int64_t>(const DeformArgs<float>&,                      \
                                         const DeformGrads<float>&);                    \
  template void BACKWARD<double, int32_t>(const DeformArgs<double>&,                    \
                                          const DeformGrads<double>&);                  \
  template void BACKWARD<double, int64_t>(const DeformArgs<double>&, const DeformGrads<double>&);

}  // namespace cpu_kernels
}  // namespace deform
}  // namespace tood_ext
