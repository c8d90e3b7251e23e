// Per-element math of deformable bilinear offset sampling: the four corners
// of one sample (indices, bilinear weights, validity), the sampled value, its
// derivative w.r.t. the sample position (offset gradient) and the corner
// weights that scatter a gradient into the input (input gradient).
//
// Written once, called by the CPU kernels (csrc/cpu/deform_sampling_cpu.cpp,
// under at::parallel_for) and the CUDA kernels
// (csrc/cuda/deform_sampling_cuda.cu). No #ifdef __CUDACC__ below this line.
//
// Semantics (documented in tood_ext/ops/deform_ops.py as well), those of
// torchvision's bilinear_interpolate (deform_conv2d) and of grid_sample with
// padding_mode="zeros":
// * output pixel (i, j) samples its channel's H x W plane at
//   (y, x) = (i + dy, j + dx);
// * a sample with y <= -1, y >= H, x <= -1 or x >= W (+-inf included) is 0;
// * otherwise the corners are (floor(y), floor(x)) and their +1 neighbours;
//   a corner outside the plane contributes 0 (to the value, to the offset
//   gradient through the value, and receives no input gradient);
// * derivative w.r.t. (y, x): that of the bilinear polynomial of the cell
//   (floor(y), floor(x)), i.e. one-sided (from above) at integer positions;
// * a NaN sample position gives a NaN value and NaN position derivatives and
//   scatters nothing into the input gradient.
#pragma once

#include "../macros.h"

#include <cmath>
#include <cstdint>
#include <limits>

namespace tood_ext {
namespace deform {

TOOD_HOST_DEVICE_INLINE float floor_(float x) { return floorf(x); }
TOOD_HOST_DEVICE_INLINE double floor_(double x) { return floor(x); }

// The four corners of one bilinear sample, in the order
// (y0, x0), (y0, x1), (y1, x0), (y1, x1) with y1 = y0 + 1, x1 = x0 + 1.
template <typename T, typename index_t>
struct BilinearCorners {
  index_t offset[4];  // y * W + x inside the plane; 0 (a safe address) when invalid
  T weight[4];        // bilinear weights (0 outside the map, NaN for a NaN position)
  T ly, lx;           // fractional parts y - y0, x - x0
  bool valid[4];      // corner inside the plane
};

// Bilinear weights of the corners (y0, x0), (y0, x1), (y1, x0), (y1, x1) of a
// sample with fractional parts (ly, lx).
template <typename T>
TOOD_HOST_DEVICE_INLINE void bilinear_weights(T ly, T lx, T w[4]) {
  const T hy = T(1) - ly, hx = T(1) - lx;
  w[0] = hy * hx;
  w[1] = hy * lx;
  w[2] = ly * hx;
  w[3] = ly * lx;
}

// sum_k w[k] * v[k] (torchvision's order of terms).
// V: the values' type, T by default; the CPU kernels also pass a GCC vector of
// several channels' values of one corner (weights scalar, the same IEEE
// operations lane by lane).
template <typename T, typename V = T>
TOOD_HOST_DEVICE_INLINE V bilinear_combine(const T w[4], const V v[4]) {
  return w[0] * v[0] + w[1] * v[1] + w[2] * v[2] + w[3] * v[3];
}

// d value / d y and d value / d x of a sample with fractional parts (ly, lx)
// and corner values v (the derivative of the cell's bilinear polynomial).
// V as in bilinear_combine.
template <typename T, typename V = T>
TOOD_HOST_DEVICE_INLINE void bilinear_position_grad(T ly, T lx, const V v[4], V& grad_y,
                                                    V& grad_x) {
  const T hy = T(1) - ly, hx = T(1) - lx;
  grad_y = hx * (v[2] - v[0]) + lx * (v[3] - v[1]);
  grad_x = hy * (v[1] - v[0]) + ly * (v[3] - v[2]);
}

// The cell of the sample at (y, x) in a height x width plane: its top-left
// corner (y0, x0), the fractional parts (ly, lx) and whether the sample lies
// inside the map, -1 < y < height and -1 < x < width. Branch-free (selects
// only), so that loops over pixels vectorise and warps do not diverge: a
// position outside the map (or NaN) is moved to (-2, -2), whose corners are
// all outside the plane and whose floor and integer conversion are defined.
template <typename T, typename index_t>
TOOD_HOST_DEVICE_INLINE void sample_cell(T y, T x, index_t height, index_t width, index_t& y0,
                                         index_t& x0, T& ly, T& lx, bool& inside) {
  // NaN fails every comparison: "inside" is false for it (and for +-inf).
  // (& and | rather than && and ||: no short-circuit control flow.)
  inside = (y > T(-1)) & (y < T(height)) & (x > T(-1)) & (x < T(width));
  const T ys = inside ? y : T(-2), xs = inside ? x : T(-2);
  const T yf = floor_(ys), xf = floor_(xs);  // -2, or in [-1, height - 1] / [-1, width - 1]
  y0 = static_cast<index_t>(yf);
  x0 = static_cast<index_t>(xf);
  ly = ys - yf;
  lx = xs - xf;
}

// All four corners of the cell with top-left corner (y0, x0) are inside the
// plane (the common case away from the border; false for a sample outside
// the map, whose cell is at (-2, -2)).
template <typename index_t>
TOOD_HOST_DEVICE_INLINE bool cell_inner(index_t y0, index_t x0, index_t height, index_t width) {
  return (y0 >= 0) & (y0 + 1 < height) & (x0 >= 0) & (x0 + 1 < width);
}

// Corners of the sample at (y, x) in a height x width plane (sample_cell),
// with weights 0 outside the map (NaN for a NaN position).
template <typename T, typename index_t>
TOOD_HOST_DEVICE_INLINE void bilinear_corners(T y, T x, index_t height, index_t width,
                                              BilinearCorners<T, index_t>& c) {
  index_t y0, x0;
  T ly, lx;
  bool inside;
  sample_cell(y, x, height, width, y0, x0, ly, lx, inside);
  const bool nan = (y != y) | (x != x);
  const T fill = nan ? std::numeric_limits<T>::quiet_NaN() : T(0);
  const index_t y1 = y0 + 1, x1 = x0 + 1;
  T w[4];
  bilinear_weights(ly, lx, w);
  c.ly = inside ? ly : fill;
  c.lx = inside ? lx : fill;
  TOOD_UNROLL
  for (int k = 0; k < 4; ++k) c.weight[k] = inside ? w[k] : fill;
  const bool vy0 = (y0 >= 0) & (y0 < height), vy1 = (y1 >= 0) & (y1 < height);
  const bool vx0 = (x0 >= 0) & (x0 < width), vx1 = (x1 >= 0) & (x1 < width);
  c.valid[0] = vy0 & vx0;
  c.valid[1] = vy0 & vx1;
  c.valid[2] = vy1 & vx0;
  c.valid[3] = vy1 & vx1;
  c.offset[0] = c.valid[0] ? y0 * width + x0 : 0;
  c.offset[1] = c.valid[1] ? y0 * width + x1 : 0;
  c.offset[2] = c.valid[2] ? y1 * width + x0 : 0;
  c.offset[3] = c.valid[3] ? y1 * width + x1 : 0;
}

// Corners of output pixel (i, j) displaced by (dy, dx).
template <typename T, typename index_t>
TOOD_HOST_DEVICE_INLINE void deform_corners(index_t i, index_t j, T dy, T dx, index_t height,
                                            index_t width, BilinearCorners<T, index_t>& c) {
  bilinear_corners(static_cast<T>(i) + dy, static_cast<T>(j) + dx, height, width, c);
}

// All four corners inside the plane (the common case away from the border).
template <typename T, typename index_t>
TOOD_HOST_DEVICE_INLINE bool all_corners_valid(const BilinearCorners<T, index_t>& c) {
  return c.valid[0] & c.valid[1] & c.valid[2] & c.valid[3];
}

// Values of the four corners in a plane of any storage type (0 where invalid).
// An invalid corner's offset is 0, so every load is in bounds and the select
// makes its value 0 whatever plane[0] holds (inf and NaN included).
// kAllValid: the caller knows all_corners_valid(c) holds; no select.
template <bool kAllValid = false, typename T, typename index_t, typename scalar_t>
TOOD_HOST_DEVICE_INLINE void load_corners(const scalar_t* plane,
                                          const BilinearCorners<T, index_t>& c, T v[4]) {
  TOOD_UNROLL
  for (int k = 0; k < 4; ++k) {
    const T x = static_cast<T>(plane[c.offset[k]]);
    v[k] = (kAllValid || c.valid[k]) ? x : T(0);
  }
}

// The sample value sum_k weight[k] * v[k] (torchvision's order of terms).
template <typename T, typename index_t>
TOOD_HOST_DEVICE_INLINE T bilinear_value(const BilinearCorners<T, index_t>& c, const T v[4]) {
  return bilinear_combine(c.weight, v);
}

// d value / d y and d value / d x of the sample (0 outside the map, where
// every v[k] is 0; NaN for a NaN position).
template <typename T, typename index_t>
TOOD_HOST_DEVICE_INLINE void bilinear_position_grad(const BilinearCorners<T, index_t>& c,
                                                    const T v[4], T& grad_y, T& grad_x) {
  bilinear_position_grad(c.ly, c.lx, v, grad_y, grad_x);
}

// Scatters g * weight[k] into the valid corners of a gradient plane:
// add(offset, value) is a plain += on the CPU (each plane owned by one
// thread) and an atomic add on CUDA.
// kAllValid as in load_corners.
template <bool kAllValid = false, typename T, typename index_t, typename AddFn>
TOOD_HOST_DEVICE_INLINE void scatter_corners(const BilinearCorners<T, index_t>& c, T g,
                                             AddFn&& add) {
  TOOD_UNROLL
  for (int k = 0; k < 4; ++k) {
    if (kAllValid || c.valid[k]) add(c.offset[k], g * c.weight[k]);
  }
}

}  // namespace deform
}  // namespace tood_ext
