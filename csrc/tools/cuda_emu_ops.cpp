// The test library tood_ext_emu: tood_ext's op schemas (csrc/schemas.h) with
// the CUDA implementations of csrc/cuda/*.cu, compiled for the emulator of
// cuda_emu.h and registered for CPU tensors (csrc/tools/emu/*.cpp), plus
// self-tests of the emulator: kernels that use each emulated intrinsic, and
// kernels with the bugs it must report.
#include <torch/library.h>

#include "../cuda/cuda_utils.cuh"
#include "../schemas.h"

namespace tood_ext {
namespace emu_selftest {
namespace {

constexpr int kWarps = 4;

// out[block] = sum of the block's 128 values: a butterfly (xor shuffles) in
// each warp of a (32, 4) block, then the warps' sums through shared memory.
__global__ void block_sum_kernel(const float* x, float* out) {
  __shared__ float warp_sums[kWarps];
  const int lane = threadIdx.x, warp = threadIdx.y;
  float v = x[(blockIdx.x * kWarps + warp) * 32 + lane];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < kWarps ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_down_sync(0xffffffffu, s, offset);
    if (lane == 0) out[blockIdx.x] = s;
  }
}

// out[lane] = the lane a shuffle `op` (0 sync, 1 xor, 2 down, 3 up) with
// argument `arg` and `width` reads from (each lane offers its own index).
__global__ void shuffle_kernel(int op, int arg, int width, int64_t* out) {
  const int lane = threadIdx.x;
  int from = 0;
  if (op == 0) from = __shfl_sync(0xffffffffu, lane, arg, width);
  if (op == 1) from = __shfl_xor_sync(0xffffffffu, lane, arg, width);
  if (op == 2) from = __shfl_down_sync(0xffffffffu, lane, static_cast<unsigned>(arg), width);
  if (op == 3) from = __shfl_up_sync(0xffffffffu, lane, static_cast<unsigned>(arg), width);
  out[lane] = from;
}

// out[i] = the value thread (i + 1) % 128 of the block stored, read through
// shared memory with or without the __syncthreads that makes it correct.
__global__ void neighbour_kernel(const float* x, float* out, bool barrier) {
  __shared__ float tile[128];
  const int t = threadIdx.x, base = blockIdx.x * 128;
  tile[t] = x[base + t];
  if (barrier) __syncthreads();
  out[base + t] = tile[(t + 1) % 128];
}

// out[0] = blockIdx.x of the block that wrote last.
__global__ void last_writer_kernel(int64_t* out) {
  if (threadIdx.x == 0) out[0] = blockIdx.x;
}

__global__ void exited_lane_kernel(float* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void outside_mask_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 20);
}

__global__ void deadlock_kernel(float* out) {
  if (threadIdx.x == 5) {
    __syncthreads();
  } else {
    __syncwarp();
  }
  out[threadIdx.x] = 1.0f;
}

// reads one value past the end of x (caught only with AddressSanitizer)
__global__ void oob_read_kernel(const float* x, int n, float* out) {
  out[threadIdx.x] = x[n - 32 + threadIdx.x + 1];
}

__global__ void noop_kernel(float* out) { out[0] = 1.0f; }

at::Tensor block_sum(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() % 128 == 0,
              "x must be a contiguous float32 tensor of 128 * n values");
  const int64_t blocks = x.numel() / 128;
  at::Tensor out = at::empty({blocks}, x.options());
  launch_kernel(block_sum_kernel, blocks, dim3(32, kWarps), nullptr, x.const_data_ptr<float>(),
                out.mutable_data_ptr<float>());
  return out;
}

at::Tensor neighbour(const at::Tensor& x, bool barrier) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() % 128 == 0,
              "x must be a contiguous float32 tensor of 128 * n values");
  at::Tensor out = at::empty_like(x);
  launch_kernel(neighbour_kernel, x.numel() / 128, 128, nullptr, x.const_data_ptr<float>(),
                out.mutable_data_ptr<float>(), barrier);
  return out;
}

at::Tensor shuffle_sources(int64_t op, int64_t arg, int64_t width) {
  TORCH_CHECK(op >= 0 && op <= 3, "op must be 0 (sync), 1 (xor), 2 (down) or 3 (up)");
  at::Tensor out = at::full({32}, -1, at::kLong);
  launch_kernel(shuffle_kernel, 1, 32, nullptr, static_cast<int>(op), static_cast<int>(arg),
                static_cast<int>(width), out.mutable_data_ptr<int64_t>());
  return out;
}

int64_t last_writer(int64_t blocks) {
  at::Tensor out = at::full({1}, -1, at::kLong);
  launch_kernel(last_writer_kernel, blocks, 32, nullptr, out.mutable_data_ptr<int64_t>());
  return out.item<int64_t>();
}

// Launches the kernel with the named bug (the emulator must raise).
void bug(c10::string_view which) {
  at::Tensor out = at::zeros({64}, at::kFloat);
  float* p = out.mutable_data_ptr<float>();
  if (which == "exited_lane") {
    launch_kernel(exited_lane_kernel, 1, 32, nullptr, p);
  } else if (which == "outside_mask") {
    launch_kernel(outside_mask_kernel, 1, 32, nullptr, p);
  } else if (which == "deadlock") {
    launch_kernel(deadlock_kernel, 1, 64, nullptr, p);
  } else if (which == "oob_read") {
    const at::Tensor x = at::zeros({64}, at::kFloat);
    launch_kernel(oob_read_kernel, 1, 32, nullptr, x.const_data_ptr<float>(), 64, p);
  } else if (which == "shuffle_width") {
    launch_kernel(shuffle_kernel, 1, 32, nullptr, 1, 1, 12, static_cast<int64_t*>(nullptr));
  } else if (which == "grid_y") {
    launch_kernel(noop_kernel, dim3(1, 70000), 32, nullptr, p);
  } else if (which == "block_size") {
    launch_kernel(noop_kernel, 1, 2048, nullptr, p);
  } else {
    TORCH_CHECK(false, "unknown bug ", which);
  }
}

void set_grid_cap(int64_t cap) {
  TORCH_CHECK(cap >= 0, "cap must be >= 0 (0: no cap), got ", cap);
  emu::grid_cap() = cap;
}

void set_force_int64_index(bool force) { emu::force_int64_index() = force; }

}  // namespace
}  // namespace emu_selftest
}  // namespace tood_ext

TORCH_LIBRARY(tood_ext_emu, m) {
  tood_ext::define_op_schemas(m);
  m.def("_selftest_block_sum(Tensor x) -> Tensor");
  m.def("_selftest_neighbour(Tensor x, bool barrier) -> Tensor");
  m.def("_selftest_last_writer(int blocks) -> int", &tood_ext::emu_selftest::last_writer);
  m.def("_selftest_shuffle(int op, int arg, int width) -> Tensor",
        &tood_ext::emu_selftest::shuffle_sources);
  m.def("_selftest_bug(str which) -> ()", &tood_ext::emu_selftest::bug);
  m.def("_set_grid_cap(int cap) -> ()", &tood_ext::emu_selftest::set_grid_cap);
  m.def("_set_force_int64_index(bool force) -> ()",
        &tood_ext::emu_selftest::set_force_int64_index);
  m.def("_last_launch_blocks() -> int", &tood_ext::emu::last_launch_blocks);
  m.def("_launches() -> int", &tood_ext::emu::launches);
}

TORCH_LIBRARY_IMPL(tood_ext_emu, CPU, m) {
  m.impl("_selftest_block_sum", &tood_ext::emu_selftest::block_sum);
  m.impl("_selftest_neighbour", &tood_ext::emu_selftest::neighbour);
}
