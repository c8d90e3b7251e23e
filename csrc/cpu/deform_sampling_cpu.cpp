// CPU kernels of deformable bilinear offset sampling: loops under
// at::parallel_for around the per-element math of
// csrc/deform/deform_sampling_utils.h (the same functions the CUDA kernels
// call).
//
// Work is cut into (image b, offset group g) blocks. Within a block, pixels
// are taken in tiles of kTile: the corners of a tile (offsets, weights,
// validity, fractions) are computed once into a per-thread structure-of-arrays
// table and reused by every channel of the group (all C channels for G = 1);
// then each channel plane is swept over the tile. The sweeps that gather
// (forward value, offset/mask gradient) are plain loops over the table that
// the compiler vectorises (selects instead of branches, emulated gathers);
// the grad_input scatter is scalar, over the tile's "inner" pixels (all four
// corners inside the map: no validity tests) and then its "edge" pixels.
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

template <typename Fn>
__attribute__((target("avx2"))) void run_avx2(Fn& fn) {
  fn();  // inlined: the loops in fn are compiled for AVX2 here
}
#endif

// Marks the lambda given to with_cpu_isa: its body is inlined into each
// target's wrapper and compiled once per target.
#define TOOD_INLINE_BODY __attribute__((always_inline))

// Runs fn() (the hot loops of one work unit) with the best code generation.
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

constexpr int64_t kTile = 4096;        // pixels per corner table (~180 KiB for float32)
constexpr int64_t kHaloRows = 2;       // rows around a tile prefetched before its sweep

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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
inline void prefetch_rows(const scalar_t* plane, int64_t W, int64_t HW, int64_t p0, int64_t p1) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const int64_t lo = std::max<int64_t>(0, p0 - kHaloRows * W);
  const int64_t hi = std::min<int64_t>(HW, p1 + kHaloRows * W);
  for (int64_t k = lo; k < hi; k += kLine) __builtin_prefetch(plane + k, kWrite ? 1 : 0, 2);
}

// Read-only view of a tile table: the fields of BilinearCorners, one array
// each (structure of arrays, so that the sweeps vectorise).
template <typename acc_t, typename index_t>
struct TileView {
  const index_t* offset[4];
  const acc_t* weight[4];
  const uint8_t* valid[4];
  const acc_t* ly;
  const acc_t* lx;

  BilinearCorners<acc_t, index_t> operator[](int64_t q) const {
    BilinearCorners<acc_t, index_t> c;
    for (int k = 0; k < 4; ++k) {
      c.offset[k] = offset[k][q];
      c.weight[k] = weight[k][q];
      c.valid[k] = valid[k][q] != 0;
    }
    c.ly = ly[q];
    c.lx = lx[q];
    return c;
  }
};

// Calls fn(q, corners) for the pixels p = p0 + q in [p0, p1) of block (b, g).
template <typename acc_t, typename index_t, typename scalar_t, typename Fn>
[[gnu::always_inline]] inline void compute_corners(const DeformArgs<scalar_t>& a, int64_t bg, int64_t p0, int64_t p1, Fn&& fn) {
  const scalar_t* dy = a.offset + 2 * bg * a.HW;
  const scalar_t* dx = dy + a.HW;
  const index_t H = static_cast<index_t>(a.H), W = static_cast<index_t>(a.W);
  index_t i = static_cast<index_t>(p0 / a.W), j = static_cast<index_t>(p0 % a.W);
  for (int64_t q = 0; q < p1 - p0; ++q) {
    BilinearCorners<acc_t, index_t> c;
    deform_corners(i, j, static_cast<acc_t>(dy[p0 + q]), static_cast<acc_t>(dx[p0 + q]), H, W, c);
    fn(q, c);
    if (++j == W) {
      j = 0;
      ++i;
    }
  }
}

// The corners of one tile as a structure of arrays (forward): per-thread scratch.
template <typename acc_t, typename index_t>
class SoATileTable {
 public:
  explicit SoATileTable(int64_t len) : ly_(len), lx_(len) {
    for (int k = 0; k < 4; ++k) {
      offset_[k].resize(len);
      weight_[k].resize(len);
      valid_[k].resize(len);
    }
  }

  template <typename scalar_t>
  [[gnu::always_inline]] void fill(const DeformArgs<scalar_t>& a, int64_t bg, int64_t p0,
                                   int64_t p1) {
    compute_corners<acc_t, index_t>(a, bg, p0, p1, [&](int64_t q,
                                                       const BilinearCorners<acc_t, index_t>& c) {
      for (int k = 0; k < 4; ++k) {
        offset_[k][q] = c.offset[k];
        weight_[k][q] = c.weight[k];
        valid_[k][q] = c.valid[k];
      }
      ly_[q] = c.ly;
      lx_[q] = c.lx;
    });
  }

  TileView<acc_t, index_t> view() const {
    TileView<acc_t, index_t> v;
    for (int k = 0; k < 4; ++k) {
      v.offset[k] = offset_[k].data();
      v.weight[k] = weight_[k].data();
      v.valid[k] = valid_[k].data();
    }
    v.ly = ly_.data();
    v.lx = lx_.data();
    return v;
  }

 private:
  std::vector<index_t> offset_[4];
  std::vector<acc_t> weight_[4];
  std::vector<uint8_t> valid_[4];
  std::vector<acc_t> ly_, lx_;
};

// The corners of one tile as an array of structures (backward), with the
// tile's pixels sorted into "inner" ones (all four corners inside the map: no
// validity tests, no mispredicted branches) and "edge" ones (the rest).
template <typename acc_t, typename index_t>
class AoSTileTable {
 public:
  explicit AoSTileTable(int64_t len) : corners_(len), inner_(len), edge_(len) {}

  template <typename scalar_t>
  [[gnu::always_inline]] void fill(const DeformArgs<scalar_t>& a, int64_t bg, int64_t p0,
                                   int64_t p1) {
    n_inner_ = n_edge_ = 0;
    compute_corners<acc_t, index_t>(a, bg, p0, p1, [&](int64_t q,
                                                       const BilinearCorners<acc_t, index_t>& c) {
      corners_[q] = c;
      if (all_corners_valid(c)) {
        inner_[n_inner_++] = static_cast<int32_t>(q);
      } else {
        edge_[n_edge_++] = static_cast<int32_t>(q);
      }
    });
  }

  // fn(q, corners, all_valid) over the inner pixels, then the edge ones, each
  // in raster order; all_valid is std::true_type / std::false_type.
  template <typename Fn>
  [[gnu::always_inline]] void for_each_inner_then_edge(Fn&& fn) const {
    for (int64_t k = 0; k < n_inner_; ++k) fn(inner_[k], corners_[inner_[k]], std::true_type{});
    for (int64_t k = 0; k < n_edge_; ++k) fn(edge_[k], corners_[edge_[k]], std::false_type{});
  }

 private:
  std::vector<BilinearCorners<acc_t, index_t>> corners_;
  std::vector<int32_t> inner_, edge_;  // tile-relative pixels, raster order
  int64_t n_inner_ = 0, n_edge_ = 0;
};

// ---- forward ------------------------------------------------------------------------

// dst[q] = (m[q] *) value of pixel q of the tile in plane src.
template <bool kMask, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void sample_tile(const TileView<acc_t, index_t>& t, int64_t n, const scalar_t* src,
                 const scalar_t* m, scalar_t* dst) {
  TOOD_GATHER_LOOP
  for (int64_t q = 0; q < n; ++q) {
    const BilinearCorners<acc_t, index_t> c = t[q];
    acc_t v[4];
    load_corners(src, c, v);
    acc_t value = bilinear_value(c, v);
    if (kMask) value *= static_cast<acc_t>(m[q]);
    dst[q] = static_cast<scalar_t>(value);
  }
}

// One channel per group: corners computed and used at once, no table.
// out[p] = (mask[p] *) value at pixel p in [p0, p1) of block bg.
template <bool kMask, typename acc_t, typename index_t, typename scalar_t>
[[gnu::always_inline]] inline void sample_direct(const DeformArgs<scalar_t>& a, int64_t bg, int64_t p0, int64_t p1,
                   const scalar_t* src, scalar_t* dst) {
  const scalar_t* dy = a.offset + 2 * bg * a.HW;
  const scalar_t* dx = dy + a.HW;
  const scalar_t* m = kMask ? a.mask + bg * a.HW : nullptr;
  const index_t H = static_cast<index_t>(a.H), W = static_cast<index_t>(a.W);
  for (int64_t p = p0; p < p1;) {  // row segments: i fixed, j the loop index
    const index_t i = static_cast<index_t>(p / a.W);
    const int64_t base = static_cast<int64_t>(i) * a.W;
    const index_t j0 = static_cast<index_t>(p - base);
    const index_t j1 = static_cast<index_t>(std::min(p1, base + a.W) - base);
    TOOD_GATHER_LOOP
    for (index_t j = j0; j < j1; ++j) {
      BilinearCorners<acc_t, index_t> c;
      deform_corners(i, j, static_cast<acc_t>(dy[base + j]), static_cast<acc_t>(dx[base + j]), H,
                     W, c);
      acc_t v[4];
      load_corners(src, c, v);
      acc_t value = bilinear_value(c, v);
      if (kMask) value *= static_cast<acc_t>(m[base + j]);
      dst[base + j] = static_cast<scalar_t>(value);
    }
    p = base + j1;
  }
}

template <typename scalar_t, typename index_t>
void forward_cpu_kernel(const DeformArgs<scalar_t>& a, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t tiles = ceil_div(a.HW, kTile);
  const int64_t tile_len = std::min(kTile, a.HW);
  if (a.Cg == 1) {
    at::parallel_for(0, a.B * a.G * tiles, grain_for(tile_len), [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t bg = u / tiles;  // = b * C + c
        const int64_t p0 = (u - bg * tiles) * kTile, p1 = std::min(p0 + kTile, a.HW);
        const scalar_t* src = a.input + bg * a.HW;
        with_cpu_isa([&]() TOOD_INLINE_BODY {
          if (a.mask) {
            sample_direct<true, acc_t, index_t>(a, bg, p0, p1, src, out + bg * a.HW);
          } else {
            sample_direct<false, acc_t, index_t>(a, bg, p0, p1, src, out + bg * a.HW);
          }
        });
      }
    });
    return;
  }
  at::parallel_for(0, a.B * a.G * tiles, grain_for(a.Cg * tile_len), [&](int64_t begin,
                                                                         int64_t end) {
    SoATileTable<acc_t, index_t> table(tile_len);
    for (int64_t u = begin; u < end; ++u) {
      const int64_t bg = u / tiles, b = bg / a.G, g = bg - b * a.G;
      const int64_t p0 = (u - bg * tiles) * kTile, p1 = std::min(p0 + kTile, a.HW);
      with_cpu_isa([&]() TOOD_INLINE_BODY {
        table.fill(a, bg, p0, p1);
        const TileView<acc_t, index_t> view = table.view();
        const scalar_t* m = a.mask ? a.mask + bg * a.HW + p0 : nullptr;
        for (int64_t c = 0; c < a.Cg; ++c) {
          const int64_t plane = (b * a.C + g * a.Cg + c) * a.HW;
          const scalar_t* src = a.input + plane;
          if (c + 1 < a.Cg) prefetch_rows(src + a.HW, a.W, a.HW, p0, p1);
          if (m) {
            sample_tile<true>(view, p1 - p0, src, m, out + plane + p0);
          } else {
            sample_tile<false>(view, p1 - p0, src, m, out + plane + p0);
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
  AoSTileTable<acc_t, index_t> table;
  std::vector<acc_t> acc;

  explicit BackwardScratch(int64_t len) : table(len), acc(3 * len) {}
};

// One tile [p0, p1) of block (b, g), channels [c0, c1) of the group.
// kInput: scatter into the grad_input planes of those channels (owned by the
// calling thread, which zeroes each plane before its first tile: grad_input is
// allocated uninitialised and gets no separate zeroing pass).
// kPosition: grad_offset / grad_mask of the tile's pixels (needs all channels
// of the group, c0 = 0, c1 = Cg).
template <bool kInput, bool kPosition, typename scalar_t, typename acc_t, typename index_t>
[[gnu::always_inline]] inline void backward_tile(const DeformArgs<scalar_t>& a, const DeformGrads<scalar_t>& gr, int64_t bg,
                   int64_t p0, int64_t p1, int64_t c0, int64_t c1,
                   BackwardScratch<acc_t, index_t>& scratch) {
  const int64_t b = bg / a.G, g = bg - b * a.G, n = p1 - p0;
  AoSTileTable<acc_t, index_t>& table = scratch.table;
  table.fill(a, bg, p0, p1);
  const scalar_t* m = a.mask ? a.mask + bg * a.HW + p0 : nullptr;
  acc_t* acc_y = scratch.acc.data();
  acc_t* acc_x = acc_y + n;
  acc_t* acc_m = acc_x + n;
  if (kPosition) std::fill(acc_y, acc_y + 3 * n, acc_t(0));
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t plane = (b * a.C + g * a.Cg + c) * a.HW;
    const scalar_t* src = a.input + plane;
    const scalar_t* go = gr.grad + plane + p0;
    scalar_t* gin = gr.grad_input + plane;
    if (kInput && p0 == 0) std::fill(gin, gin + a.HW, scalar_t(0));  // first touch, by the owner
    if (c + 1 < c1) {
      if (kPosition) prefetch_rows(src + a.HW, a.W, a.HW, p0, p1);
      if (kInput && p0 > 0) prefetch_rows<true>(gin + a.HW, a.W, a.HW, p0, p1);
    }
    table.for_each_inner_then_edge([&](int64_t q, const BilinearCorners<acc_t, index_t>& cn,
                                       auto all_valid) {
      constexpr bool kAllValid = decltype(all_valid)::value;
      const acc_t g_out = static_cast<acc_t>(go[q]);
      if (kPosition) {
        acc_t v[4], gy, gx;
        load_corners<kAllValid>(src, cn, v);
        bilinear_position_grad(cn, v, gy, gx);
        acc_y[q] += g_out * gy;
        acc_x[q] += g_out * gx;
        if (m) acc_m[q] += g_out * bilinear_value(cn, v);
      }
      if (kInput) {
        const acc_t g_val = m ? g_out * static_cast<acc_t>(m[q]) : g_out;
        scatter_corners<kAllValid>(cn, g_val, [gin](index_t off, acc_t add) {
          gin[off] = static_cast<scalar_t>(static_cast<acc_t>(gin[off]) + add);
        });
      }
    });
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

// One channel per group (plane bg = b * C + c): every gradient of the
// block in one sweep with the corners computed and used at once, no table.
template <bool kMask, typename acc_t, typename index_t, typename scalar_t>
[[gnu::always_inline]] inline void backward_direct(const DeformArgs<scalar_t>& a,
                                                   const DeformGrads<scalar_t>& gr, int64_t bg) {
  const scalar_t* dy = a.offset + 2 * bg * a.HW;
  const scalar_t* dx = dy + a.HW;
  const scalar_t* m = kMask ? a.mask + bg * a.HW : nullptr;
  const scalar_t* src = a.input + bg * a.HW;
  const scalar_t* go = gr.grad + bg * a.HW;
  scalar_t* gin = gr.grad_input + bg * a.HW;
  scalar_t* gdy = gr.grad_offset + 2 * bg * a.HW;
  scalar_t* gdx = gdy + a.HW;
  scalar_t* gm = kMask ? gr.grad_mask + bg * a.HW : nullptr;
  std::fill(gin, gin + a.HW, scalar_t(0));  // first touch, by the owner
  const index_t H = static_cast<index_t>(a.H), W = static_cast<index_t>(a.W);
  for (index_t i = 0; i < H; ++i) {
    const int64_t base = static_cast<int64_t>(i) * a.W;
    for (index_t j = 0; j < W; ++j) {
      const int64_t p = base + j;
      BilinearCorners<acc_t, index_t> c;
      deform_corners(i, j, static_cast<acc_t>(dy[p]), static_cast<acc_t>(dx[p]), H, W, c);
      const acc_t g_out = static_cast<acc_t>(go[p]);
      acc_t v[4], gy, gx;
      load_corners(src, c, v);
      bilinear_position_grad(c, v, gy, gx);
      const acc_t mp = kMask ? static_cast<acc_t>(m[p]) : acc_t(1);
      gdy[p] = static_cast<scalar_t>(mp * (g_out * gy));
      gdx[p] = static_cast<scalar_t>(mp * (g_out * gx));
      if (kMask) gm[p] = static_cast<scalar_t>(g_out * bilinear_value(c, v));
      scatter_corners(c, kMask ? g_out * mp : g_out, [gin](index_t off, acc_t add) {
        gin[off] = static_cast<scalar_t>(static_cast<acc_t>(gin[off]) + add);
      });
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
  if (a.Cg == 1) {
    // one channel per group: a (b, g) block per unit, no table
    at::parallel_for(0, blocks, grain_for(a.HW), [&](int64_t begin, int64_t end) {
      for (int64_t bg = begin; bg < end; ++bg) {
        with_cpu_isa([&]() TOOD_INLINE_BODY {
          if (a.mask) {
            backward_direct<true, acc_t, index_t>(a, gr, bg);
          } else {
            backward_direct<false, acc_t, index_t>(a, gr, bg);
          }
        });
      }
    });
    return;
  }
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
