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
//
// Groups of 4 or more channels take the pixel-major path instead (its section
// below): the same math and the same order of every sum, on chunks of 8
// channels transposed to pixel-major scratch, so that a corner is one vector
// load for 8 channels instead of a gather per channel.
// The pixel-major path passes GCC vectors (up to 64 bytes) to always-inline
// helpers of this file and of the shared header; GCC warns that such calls
// would have another ABI on other ISAs, which never matters for them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
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

// ---- pixel-major path (groups of at least 4 channels) -------------------------------
//
// With several channels per offset group, the planar sweeps (below) spend
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

constexpr int64_t kLanes = 8;                   // channels per chunk
constexpr int64_t kMinPixelMajorGroup = 4;      // channels per group (fewer: planar faster)
constexpr int64_t kPixelMajorMaxPlane = 65536;  // pixels (scratch planes 2 MiB each for float32)

// TOOD_EXT_DEFORM_CPU_PATH=planar / pixel_major forces a path for any shape
// (read at every call; for tests and benchmarks: both give the same bits).
template <typename scalar_t>
bool use_pixel_major(const DeformArgs<scalar_t>& a) {
  const char* path = std::getenv("TOOD_EXT_DEFORM_CPU_PATH");
  if (path != nullptr && std::strcmp(path, "planar") == 0) return false;
  if (path != nullptr && std::strcmp(path, "pixel_major") == 0) return true;
  return a.Cg >= kMinPixelMajorGroup && a.HW <= kPixelMajorMaxPlane;
}

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
                       with_cpu_isa([&]() TOOD_INLINE_BODY {
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

// Schedules as backward_cpu_kernel: fused when there are enough (b, g) blocks,
// else pass 1 (offset/mask gradient) over (block, pixel range) units and pass
// 2 (grad_input) over (block, chunk range) units.
template <typename scalar_t, typename index_t>
void backward_pixel_major(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr) {
  using Scratch = PixelMajorScratch<scalar_t, index_t>;
  const int64_t blocks = a.B * a.G, chunks = ceil_div(a.Cg, kLanes);
  const int64_t threads = at::get_num_threads();
  if (blocks >= 4 * threads) {
    at::parallel_for(0, blocks, grain_for(a.Cg * a.HW), [&](int64_t begin, int64_t end) {
      Scratch s(a.HW, true);
      for (int64_t bg = begin; bg < end; ++bg) {
        with_cpu_isa([&]() TOOD_INLINE_BODY {
          backward_chunks<true, true>(a, gr, bg, 0, a.HW, 0, chunks, s);
        });
      }
    });
    return;
  }
  const int64_t splits = ceil_div(4 * threads, blocks);
  const int64_t ranges = std::min(splits, ceil_div(a.HW, 1024)), range = ceil_div(a.HW, ranges);
  at::parallel_for(0, blocks * ranges, grain_for(a.Cg * range), [&](int64_t begin, int64_t end) {
    Scratch s(a.HW, true);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / ranges, p0 = (u - bg * ranges) * range;
      const int64_t p1 = std::min(p0 + range, a.HW);
      if (p0 >= p1) continue;
      with_cpu_isa([&]() TOOD_INLINE_BODY {
        backward_chunks<false, true>(a, gr, bg, p0, p1, 0, chunks, s);
      });
    }
  });
  const int64_t parts = std::min(chunks, splits), per = ceil_div(chunks, parts);
  at::parallel_for(0, blocks * parts, grain_for(per * kLanes * a.HW),
                   [&](int64_t begin, int64_t end) {
                     Scratch s(a.HW, true);
                     for (int64_t u = begin; u < end; ++u) {
                       const int64_t bg = u / parts, h0 = (u - bg * parts) * per;
                       const int64_t h1 = std::min(h0 + per, chunks);
                       if (h0 >= h1) continue;
                       with_cpu_isa([&]() TOOD_INLINE_BODY {
                         backward_chunks<true, false>(a, gr, bg, 0, a.HW, h0, h1, s);
                       });
                     }
                   });
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
  static_assert(std::is_same_v<acc_t, scalar_t>, "CPU kernels: float32 and float64 only");
  if (use_pixel_major(a)) return forward_pixel_major<scalar_t, index_t>(a, out);
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

template <typename scalar_t, typename index_t>
void backward_cpu_kernel(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr) {
  using acc_t = at::opmath_type<scalar_t>;
  if (use_pixel_major(a)) return backward_pixel_major<scalar_t, index_t>(a, gr);
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
