// CPU kernels of deformable bilinear offset sampling: loops under
// at::parallel_for around the per-element math of
// csrc/deform/deform_sampling_utils.h (the same functions the CUDA kernels
// call).
//
// Work is cut into (image b, offset group g) blocks. Within a block, pixels
// are taken in tiles of up to kTile (a whole plane at the usual sizes): the
// cell of every pixel of the tile (its top-left corner's plane offset, the
// fractional parts, whether all four corners are inside the plane) is
// computed once into a per-thread structure-of-arrays plan and reused by
// every channel of the group (all C channels for G = 1). Each channel plane
// is then swept over the tile: the sweeps that gather (forward value,
// offset/mask gradient) are dense loops over the plan that the compiler
// vectorises with hardware gathers (edge pixels, with a corner outside the
// plane, get placeholder loads that are selected away), followed by a short
// exact pass over the tile's edge pixels; the grad_input scatter is scalar,
// over the inner pixels and then the edge pixels.
//
// Race-freedom and determinism (bitwise, for any thread count):
// * forward: every output element is written once.
// * grad_offset / grad_mask of pixel (b, g, i, j): summed over the group's
//   channels in channel order by the one thread owning the tile.
// * grad_input: a plane (b, c) is zeroed and then scattered into by the one
//   thread owning channel c of block (b, g), tile after tile, inner pixels
//   then edge pixels. Either all gradients come from one sweep over (b, g)
//   blocks ("fused", when there are enough blocks to feed the threads), or
//   from two passes: grad_offset/grad_mask over (b, g, tile) units, then
//   grad_input over (b, g, channel chunk) units. Both schedules add into each
//   plane and each pixel sum in the same order: the same bits.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../deform/deform_sampling.h"
#include "cpu_utils.h"

// Code called inside the ISA clones (with_cpu_isa below) must be inlined into
// them: [[gnu::always_inline]] on every helper, and no std::min/std::fill &
// co. there (GCC would call their baseline-ISA copies).

// Loops whose only memory dependences are gathers from a read-only plane:
// tells GCC that the gathers do not alias the stores (it cannot prove it).
#if defined(__GNUC__) && !defined(__clang__)
#define TOOD_GATHER_LOOP _Pragma("GCC ivdep")
#else
#define TOOD_GATHER_LOOP
#endif

// x86-64: the hot loops are also compiled for AVX2 (gathers, floor, blends in
// 8-wide vectors) and picked at run time when the CPU has it. No FMA: the AVX2
// code does the same IEEE operations in the same order as the baseline code,
// so both give the same bits. TOOD_EXT_CPU_ISA=generic forces the baseline.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define TOOD_CPU_AVX2_CLONE 1
#endif

namespace tood_ext {
namespace deform {
namespace {

using cpu::grain_for;

#ifdef TOOD_CPU_AVX2_CLONE
inline bool cpu_has_avx2() {
  static const bool avx2 = [] {
    const char* isa = std::getenv("TOOD_EXT_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "generic") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return avx2;
}

// tune=icelake-server: GCC's generic tuning never emits hardware gathers, and
// the emulated ones (a scalar load and a shuffle per lane) are what the
// sweeps then spend their time on. (An AVX-512 clone measured no faster on a
// Sapphire Rapids core: the sweeps are bound by gathered loads, not width.)
template <typename Fn>
__attribute__((target("avx2,tune=icelake-server"))) void run_avx2(Fn& fn) {
  fn();  // inlined: the loops in fn are compiled for AVX2 here
}
#endif

// Marks the lambdas called inside the ISA clones (the one given to
// with_cpu_isa and the scatter adds): their bodies are inlined into each
// clone and compiled for its target. (GCC does not inline a plain function
// into a function with a target attribute: it would be called, compiled for
// the baseline, and mixing its SSE code with the clone's AVX code stalls.)
#define TOOD_INLINE_BODY __attribute__((always_inline))

// Runs fn() (the hot loops of one work unit) with the best code generation.
// Every clone does the same IEEE operations in the same order (the build
// passes -ffp-contract=off: no FMA contraction), so all give the same bits.
template <typename Fn>
inline void with_cpu_isa(Fn&& fn) {
#ifdef TOOD_CPU_AVX2_CLONE
  if (cpu_has_avx2()) {
    run_avx2(fn);
    return;
  }
#endif
  fn();
}

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
};

template <typename scalar_t>
DeformArgs<scalar_t> make_args(const DeformShape& s, const at::Tensor& input,
                               const at::Tensor& offset, const at::Tensor& mask) {
  return {input.const_data_ptr<scalar_t>(), offset.const_data_ptr<scalar_t>(),
          mask.defined() ? mask.const_data_ptr<scalar_t>() : nullptr,
          s.batch, s.channels, s.groups, s.channels_per_group(), s.height, s.width, s.plane()};
}

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

// The four corner values of an inner pixel whose corner (y0, x0) is at plane + o.
template <typename acc_t, typename index_t, typename scalar_t>
[[gnu::always_inline]] inline void load_cell(const scalar_t* plane, index_t o, index_t W,
                                             acc_t v[4]) {
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

// ---- forward ------------------------------------------------------------------------

// dst[q] = (m[q] *) value of pixel q of the tile in plane src: a dense sweep
// over every pixel (edge pixels get a placeholder), then the edge list
// overwrites its pixels with their exact values.
template <bool kMask, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void sample_tile(const TilePlan<acc_t, index_t>& t, index_t W,
                                               const scalar_t* __restrict src,
                                               const scalar_t* __restrict m,
                                               scalar_t* __restrict dst) {
  const int64_t n = t.size();
  if (t.dense()) {
    const index_t* __restrict base = t.base();
    const acc_t* __restrict ly = t.ly();
    const acc_t* __restrict lx = t.lx();
    TOOD_GATHER_LOOP
    for (int64_t q = 0; q < n; ++q) {
      acc_t v[4], w[4];
      load_cell(src, base[q], W, v);
      bilinear_weights(ly[q], lx[q], w);
      acc_t value = bilinear_combine(w, v);
      if (kMask) value *= static_cast<acc_t>(m[q]);
      dst[q] = static_cast<scalar_t>(value);
    }
  }
  for (int64_t k = 0; k < t.n_edge(); ++k) {
    const int64_t q = t.edge_q(k);
    acc_t v[4];
    load_corners(src, t.edge(k), v);
    acc_t value = bilinear_value(t.edge(k), v);
    if (kMask) value *= static_cast<acc_t>(m[q]);
    dst[q] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, typename index_t>
void forward_cpu_kernel(const DeformArgs<scalar_t>& a, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = ceil_div(a.HW, kTile);
  const int64_t tile_len = std::min(kTile, a.HW);
  const index_t W = static_cast<index_t>(a.W);
  at::parallel_for(0, a.B * a.G * tiles, grain_for(a.Cg * tile_len), [&](int64_t begin,
                                                                         int64_t end) {
    TilePlan<acc_t, index_t> plan(tile_len);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / tiles, b = bg / a.G, g = bg - b * a.G;
      const int64_t p0 = (u - bg * tiles) * kTile, p1 = std::min(p0 + kTile, a.HW);
      with_cpu_isa([&]() TOOD_INLINE_BODY {
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

template <typename scalar_t>
struct DeformGrads {
  const scalar_t* grad;   // (B, C, H, W), upstream
  scalar_t* grad_input;   // (B, C, H, W), zeroed by the owner of each plane (tile 0)
  scalar_t* grad_offset;  // (B, G, 2, H, W)
  scalar_t* grad_mask;    // (B, G, H, W) or nullptr
};

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
  const int64_t n = t.size();
  if (t.dense()) {
    const index_t* __restrict base = t.base();
    const acc_t* __restrict ly = t.ly();
    const acc_t* __restrict lx = t.lx();
    const uint8_t* __restrict inner = t.inner();
    TOOD_GATHER_LOOP
    for (int64_t q = 0; q < n; ++q) {
      acc_t v[4], gy, gx;
      load_cell(src, base[q], W, v);
      bilinear_position_grad(ly[q], lx[q], v, gy, gx);
      const acc_t g_out = static_cast<acc_t>(go[q]);
      const bool in = inner[q] != 0;
      acc_y[q] += in ? g_out * gy : acc_t(0);
      acc_x[q] += in ? g_out * gx : acc_t(0);
      if (kMask) {
        acc_t w[4];
        bilinear_weights(ly[q], lx[q], w);
        acc_m[q] += in ? g_out * bilinear_combine(w, v) : acc_t(0);
      }
    }
  }
  for (int64_t k = 0; k < t.n_edge(); ++k) {
    const int64_t q = t.edge_q(k);
    const BilinearCorners<acc_t, index_t>& c = t.edge(k);
    acc_t v[4], gy, gx;
    load_corners(src, c, v);
    bilinear_position_grad(c, v, gy, gx);
    const acc_t g_out = static_cast<acc_t>(go[q]);
    acc_y[q] += g_out * gy;
    acc_x[q] += g_out * gx;
    if (kMask) acc_m[q] += g_out * bilinear_value(c, v);
  }
}

// grad_input plane gin += the tile's upstream gradient go (times m) spread
// over each pixel's corners: inner pixels (no validity tests), then the edge
// list in raster order. Scalar read-modify-writes: neighbouring pixels share
// corners, so the adds must not be reordered into vector scatters.
//
// The inner pixels are taken as kScatterStreams interleaved streams (the
// tile cut into that many consecutive ranges; step k does pixel k of each
// range, in range order): consecutive pixels in raster order usually add into
// overlapping corners, so one stream is a chain of dependent read-modify-
// writes through memory (store-to-load forwarding, or a stall where a pair
// load straddles the previous pair store), while the ranges are rows apart
// and their chains run side by side. The order of the adds into each element
// is still a fixed function of the tile (thread count plays no part).
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
    constexpr int64_t S = kScatterStreams;
    const int64_t len = ceil_div(n, S);  // pixels per range (the last ones may have fewer)
    const int64_t full = n - (S - 1) * len;  // steps in which every range has a pixel
    int64_t k = 0;
    for (; k < full; ++k) {
      for (int64_t r = 0; r < S; ++r) one(k + r * len);
    }
    for (; k < len; ++k) {
      for (int64_t r = 0; r < S; ++r) {
        if (k + r * len < n) one(k + r * len);
      }
    }
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
  if (kPosition) {
    scalar_t* gdy = gr.grad_offset + 2 * bg * a.HW + p0;
    scalar_t* gdx = gdy + a.HW;
    for (int64_t q = 0; q < n; ++q) {
      const acc_t mq = m ? static_cast<acc_t>(m[q]) : acc_t(1);
      gdy[q] = static_cast<scalar_t>(mq * acc_y[q]);
      gdx[q] = static_cast<scalar_t>(mq * acc_x[q]);
    }
    if (gr.grad_mask) {
      scalar_t* gm = gr.grad_mask + bg * a.HW + p0;
      for (int64_t q = 0; q < n; ++q) gm[q] = static_cast<scalar_t>(acc_m[q]);
    }
  }
}

template <typename scalar_t, typename index_t>
void backward_cpu_kernel(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr) {
  using acc_t = at::opmath_type<scalar_t>;
  using Scratch = BackwardScratch<acc_t, index_t>;
  const int64_t tiles = ceil_div(a.HW, kTile);
  const int64_t tile_len = std::min(kTile, a.HW);
  const int64_t blocks = a.B * a.G;
  const int64_t threads = at::get_num_threads();
  if (blocks >= 4 * threads) {
    // fused: a (b, g) block per unit, all gradients in one sweep
    at::parallel_for(0, blocks, grain_for(a.Cg * a.HW), [&](int64_t begin, int64_t end) {
      Scratch scratch(tile_len);
      for (int64_t bg = begin; bg < end; ++bg) {
        for (int64_t t = 0; t < tiles; ++t) {
          const int64_t p0 = t * kTile, p1 = std::min(p0 + kTile, a.HW);
          with_cpu_isa([&]() TOOD_INLINE_BODY {
            backward_tile<true, true>(a, gr, bg, p0, p1, 0, a.Cg, scratch);
          });
        }
      }
    });
    return;
  }
  // pass 1: grad_offset / grad_mask, a (b, g, tile) per unit
  at::parallel_for(0, blocks * tiles, grain_for(a.Cg * tile_len), [&](int64_t begin,
                                                                      int64_t end) {
    Scratch scratch(tile_len);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / tiles, p0 = (u - bg * tiles) * kTile;
      with_cpu_isa([&]() TOOD_INLINE_BODY {
        backward_tile<false, true>(a, gr, bg, p0, std::min(p0 + kTile, a.HW), 0, a.Cg, scratch);
      });
    }
  });
  // pass 2: grad_input, a (b, g, chunk of channels) per unit: each plane has one owner
  const int64_t chunks = std::max<int64_t>(1, std::min(a.Cg, ceil_div(4 * threads, blocks)));
  const int64_t chunk = ceil_div(a.Cg, chunks);
  at::parallel_for(0, blocks * chunks, grain_for(chunk * a.HW), [&](int64_t begin,
                                                                    int64_t end) {
    Scratch scratch(tile_len);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / chunks, c0 = (u - bg * chunks) * chunk;
      const int64_t c1 = std::min(c0 + chunk, a.Cg);
      if (c0 >= c1) continue;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t p0 = t * kTile, p1 = std::min(p0 + kTile, a.HW);
        with_cpu_isa([&]() TOOD_INLINE_BODY {
          backward_tile<true, false>(a, gr, bg, p0, p1, c0, c1, scratch);
        });
      }
    }
  });
}

// ---- ops ----------------------------------------------------------------------------

at::Tensor deform_sampling_cpu(const at::Tensor& input, const at::Tensor& offset,
                               const c10::optional<at::Tensor>& mask) {
  const DeformShape s = check_deform_sampling_args(input, offset, mask);
  const at::Tensor in = input.contiguous(), off = offset.contiguous();
  const at::Tensor m = has_mask(mask) ? mask->contiguous() : at::Tensor();
  at::Tensor out = at::empty(in.sizes(), in.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "deform_sampling_cpu", [&] {
    with_index_type(s.plane(), [&](auto index_c) {
      forward_cpu_kernel<scalar_t, decltype(index_c)>(make_args<scalar_t>(s, in, off, m),
                                                      out.mutable_data_ptr<scalar_t>());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_sampling_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& offset,
    const c10::optional<at::Tensor>& mask) {
  const DeformShape s = check_deform_sampling_args(input, offset, mask);
  check_grad(grad, input);
  const at::Tensor in = input.contiguous(), off = offset.contiguous();
  const bool with_mask = has_mask(mask);
  const at::Tensor m = with_mask ? mask->contiguous() : at::Tensor();
  if (in.numel() == 0) {  // nothing sampled: zero gradients (C = 0 included)
    return {at::zeros(in.sizes(), in.options()), at::zeros(off.sizes(), off.options()),
            with_mask ? at::zeros(m.sizes(), m.options()) : at::zeros({0}, in.options())};
  }
  // every element of each is written by the kernels (grad_input zeroed by its owner)
  at::Tensor grad_input = at::empty(in.sizes(), in.options());
  at::Tensor grad_offset = at::empty(off.sizes(), off.options());
  at::Tensor grad_mask = with_mask ? at::empty(m.sizes(), m.options())
                                   : at::zeros({0}, in.options());
  const at::Tensor g = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "deform_sampling_backward_cpu", [&] {
    const DeformGrads<scalar_t> gr{g.const_data_ptr<scalar_t>(),
                                   grad_input.mutable_data_ptr<scalar_t>(),
                                   grad_offset.mutable_data_ptr<scalar_t>(),
                                   with_mask ? grad_mask.mutable_data_ptr<scalar_t>() : nullptr};
    with_index_type(s.plane(), [&](auto index_c) {
      backward_cpu_kernel<scalar_t, decltype(index_c)>(make_args<scalar_t>(s, in, off, m), gr);
    });
  });
  return {grad_input, grad_offset, grad_mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(tood_ext, CPU, m) {
  m.impl("deform_sampling", &deform_sampling_cpu);
  m.impl("_deform_sampling_backward", &deform_sampling_backward_cpu);
}

}  // namespace deform
}  // namespace tood_ext
