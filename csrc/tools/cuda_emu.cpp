// The scheduler of the CUDA emulator (cuda_emu.h): blocks one after the other
// in a shuffled order; the threads of a block as fibers, each run
// until it waits at a barrier (block or warp) or exits, then the barriers
// whose threads have all arrived are released, and so on.
#include "cuda_emu.h"

#include <c10/util/Exception.h>

#if !(defined(__x86_64__) && defined(__linux__) && !(defined(__CET__) && (__CET__ & 2)))
#include <ucontext.h>
#endif

// Built with AddressSanitizer (tests/test_cuda_emu.py's memcheck), the stack
// switches are announced to it, and fiber stacks are unpoisoned before reuse.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TOOD_EMU_ASAN 1
#endif

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace tood_ext {
namespace emu {
namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr int kWarp = 32;

enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kExited };

// ---- contexts: a saved stack pointer (x86-64 Linux) or a ucontext_t -----------------
// Switches happen at every barrier and shuffle, millions of times per test:
// swapcontext's signal-mask system call would dominate, so on x86-64 a switch
// saves the callee-saved registers (and MXCSR, the x87 control word) on the
// stack and swaps stack pointers. Not with CET shadow stacks (its `ret` to
// another stack would fault): ucontext there.
#if defined(__x86_64__) && defined(__linux__) && !(defined(__CET__) && (__CET__ & 2))
extern "C" void tood_emu_switch(void** save_sp, void* next_sp);
asm(R"(
  .text
  .p2align 4
  .globl tood_emu_switch
  .hidden tood_emu_switch
  .type tood_emu_switch, @function
tood_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tood_emu_switch, .-tood_emu_switch
)");

struct Context {
  void* sp = nullptr;
  const void* stack = nullptr;  // its stack, for AddressSanitizer
  size_t stack_bytes = 0;
};

void raw_switch(Context& from, Context& to) { tood_emu_switch(&from.sp, to.sp); }

// A context that starts entry() on the stack [base, base + bytes).
void make_context(Context& c, char* base, size_t bytes, void (*entry)()) {
  c.stack = base;
  c.stack_bytes = bytes;
  auto top = reinterpret_cast<uintptr_t>(base + bytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<void**>(top);
  slot[-1] = nullptr;                              // entry's return address (it never returns)
  slot[-2] = reinterpret_cast<void*>(entry);       // popped by tood_emu_switch's ret
  for (int r = 3; r <= 8; ++r) slot[-r] = nullptr;  // rbp rbx r12-r15
  // MXCSR and the x87 control word (callee-saved too): the ABI's defaults
  const uint32_t control[2] = {0x1F80u, 0x037Fu};
  std::memcpy(&slot[-9], control, sizeof(control));
  c.sp = slot - 9;
}
#else
struct Context {
  ucontext_t uc;
  const void* stack = nullptr;
  size_t stack_bytes = 0;
};

void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }

void make_context(Context& c, char* base, size_t bytes, void (*entry)()) {
  c.stack = base;
  c.stack_bytes = bytes;
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = base;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

// From one context to another (returns when `from` is resumed); `leaving`
// when `from` will never be resumed.
void switch_context(Context& from, Context& to, bool leaving = false) {
#ifdef TOOD_EMU_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(leaving ? nullptr : &fake_stack, to.stack, to.stack_bytes);
  raw_switch(from, to);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  (void)leaving;
  raw_switch(from, to);
#endif
}

// First thing a new fiber does: completes the switch that started it and
// learns the scheduler's stack (for the switches back).
void enter_fiber(Context& scheduler) {
#ifdef TOOD_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler.stack, &scheduler.stack_bytes);
#else
  (void)scheduler;
#endif
}

// Fiber stacks are reused by the next block: frames abandoned on them (the
// entry's, or a failed thread's) must not leave AddressSanitizer's poison.
void reset_stack(char* base, size_t bytes) {
#ifdef TOOD_EMU_ASAN
  __asan_unpoison_memory_region(base, bytes);
#else
  (void)base;
  (void)bytes;
#endif
}

struct Fiber {
  Context ctx;
  State state = State::kRunnable;
  unsigned mask = 0;   // of the warp barrier it waits at
  uint64_t slot = 0;   // its value in the current shuffle
  uint3 tid{0, 0, 0};
};

struct Grid {
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  Context scheduler;
  int current = -1;
  std::string error;
  std::string where;  // " (launch n, seed s)", appended to errors
};

Grid* g_grid = nullptr;     // the launch being emulated
std::mutex g_mutex;         // one emulated launch at a time
uint64_t g_launches = 0;    // seeds the shuffles: reproducible run to run
int64_t g_last_blocks = 0;  // blocks of the most recent launch

std::vector<std::unique_ptr<char[]>>& stacks() {
  static std::vector<std::unique_ptr<char[]>> pool;
  return pool;
}

uint64_t next_random(uint64_t& s) {  // xorshift64*
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return s * 0x2545F4914F6CDD1DULL;
}

template <typename T>
void shuffle(std::vector<T>& v, uint64_t& s) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next_random(s) % i]);
}

Fiber& current_fiber() {
  TORCH_CHECK(g_grid != nullptr && g_grid->current >= 0,
              "CUDA emulator: a device intrinsic was called outside an emulated launch");
  return g_grid->fibers[g_grid->current];
}

// Back to the scheduler; returns when the scheduler resumes this thread.
void suspend(Fiber& f) { switch_context(f.ctx, g_grid->scheduler, f.state == State::kExited); }

// Records an error and leaves this thread for good: the launch is abandoned.
[[noreturn]] void fail(const std::string& message) {
  Fiber& f = current_fiber();
  if (g_grid->error.empty()) g_grid->error = message;
  f.state = State::kExited;
  suspend(f);
  std::abort();  // never resumed
}

void trampoline() {
  enter_fiber(g_grid->scheduler);
  (*g_grid->body)();
  Fiber& f = current_fiber();
  f.state = State::kExited;
  suspend(f);
}

std::string describe(dim3 d) {
  std::ostringstream os;
  os << "(" << d.x << ", " << d.y << ", " << d.z << ")";
  return os.str();
}

void check_config(dim3 grid, dim3 block) {
  const char* why = nullptr;
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || threads == 0) {
    why = "a dimension is 0";
  } else if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024) {
    why = "a block has at most 1024 threads (x, y <= 1024, z <= 64)";
  } else if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    why = "grid.x <= 2^31 - 1, grid.y and grid.z <= 65535";
  }
  TORCH_CHECK(why == nullptr, "CUDA emulator: invalid configuration argument: grid ",
              describe(grid), ", block ", describe(block), ": ", why);
}

// Releases the warp barriers all of whose lanes have arrived; true if any.
// Sets g->error for a mask naming a lane that exited or does not exist.
bool release_warps(Grid& g) {
  bool released = false;
  const int n = static_cast<int>(g.fibers.size());
  for (int base = 0; base < n; base += kWarp) {
    const int lanes = std::min(kWarp, n - base);
    for (int l = 0; l < lanes; ++l) {
      const Fiber& f = g.fibers[base + l];
      if (f.state != State::kAtWarpBarrier) continue;
      bool complete = true;
      for (int k = 0; k < kWarp; ++k) {
        if (!((f.mask >> k) & 1u)) continue;
        if (k >= lanes) {
          g.error = "CUDA emulator: a warp-synchronous mask names lane " + std::to_string(k) +
                    ", which does not exist in this block";
          return false;
        }
        const Fiber& o = g.fibers[base + k];
        if (o.state == State::kExited) {
          g.error = "CUDA emulator: a warp-synchronous mask names lane " + std::to_string(k) +
                    ", which has exited (undefined behaviour on a GPU)";
          return false;
        }
        if (o.state != State::kAtWarpBarrier || o.mask != f.mask) complete = false;
      }
      if (!complete) continue;
      for (int k = 0; k < kWarp; ++k) {
        if ((f.mask >> k) & 1u) g.fibers[base + k].state = State::kRunnable;
      }
      released = true;
    }
  }
  return released;
}

void run_block(Grid& g, uint64_t& seed) {
  const int n = static_cast<int>(g.fibers.size());
  for (int t = 0; t < n; ++t) {
    Fiber& f = g.fibers[t];
    f.state = State::kRunnable;
    f.tid = {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)};
    reset_stack(stacks()[t].get(), kStackBytes);
    make_context(f.ctx, stacks()[t].get(), kStackBytes, trampoline);
  }
  std::vector<int> order(n);
  for (int t = 0; t < n; ++t) order[t] = t;
  while (true) {
    shuffle(order, seed);
    for (int t : order) {
      if (g.fibers[t].state != State::kRunnable) continue;
      g.current = t;
      threadIdx = g.fibers[t].tid;
      switch_context(g.scheduler, g.fibers[t].ctx);
      g.current = -1;
      TORCH_CHECK(g.error.empty(), g.error, g.where);
    }
    if (release_warps(g)) continue;
    TORCH_CHECK(g.error.empty(), g.error, g.where);
    int exited = 0, at_block = 0;
    for (const Fiber& f : g.fibers) {
      exited += f.state == State::kExited;
      at_block += f.state == State::kAtBlockBarrier;
    }
    if (exited == n) return;
    TORCH_CHECK(exited + at_block == n,
                "CUDA emulator: deadlock: threads wait at warp barriers that lanes waiting at "
                "__syncthreads (or at other masks) cannot reach", g.where);
    // Threads that have exited do not hold __syncthreads up (Volta and later).
    for (Fiber& f : g.fibers) {
      if (f.state == State::kAtBlockBarrier) f.state = State::kRunnable;
    }
  }
}

}  // namespace

int64_t last_launch_blocks() { return g_last_blocks; }

int64_t launches() { return static_cast<int64_t>(g_launches); }

bool& force_int64_index() {
  static bool force = false;
  return force;
}

int64_t& grid_cap() {
  static int64_t cap = 0;
  return cap;
}

int lane_id() {
  const Fiber& f = current_fiber();
  return static_cast<int>(&f - g_grid->fibers.data()) % kWarp;
}

void check_shuffle_width(int width) {
  if (width < 1 || width > kWarp || (width & (width - 1)) != 0) {
    fail("CUDA emulator: shuffle width " + std::to_string(width) +
         " is not a power of two <= 32");
  }
}

void block_barrier() {
  Fiber& f = current_fiber();
  f.state = State::kAtBlockBarrier;
  suspend(f);
}

void warp_barrier(unsigned mask) {
  Fiber& f = current_fiber();
  if (!((mask >> lane_id()) & 1u)) {
    fail("CUDA emulator: a lane called a warp-synchronous intrinsic with a mask without itself");
  }
  f.state = State::kAtWarpBarrier;
  f.mask = mask;
  suspend(f);
}

uint64_t warp_exchange(unsigned mask, uint64_t bits, int src_lane) {
  Fiber& f = current_fiber();
  f.slot = bits;
  warp_barrier(mask);  // every lane of the mask has published its value
  if (!((mask >> src_lane) & 1u)) {
    fail("CUDA emulator: a shuffle reads lane " + std::to_string(src_lane) +
         ", which is not in its mask (undefined value on a GPU)");
  }
  const int base = static_cast<int>(&f - g_grid->fibers.data()) - lane_id();
  const uint64_t value = g_grid->fibers[base + src_lane].slot;
  warp_barrier(mask);  // every lane has read before any publishes again
  return value;
}

void run(dim3 grid, dim3 block, const std::function<void()>& body) {
  check_config(grid, block);
  const std::lock_guard<std::mutex> lock(g_mutex);
  const int n = static_cast<int>(block.x * block.y * block.z);
  while (static_cast<int>(stacks().size()) < n) {
    stacks().emplace_back(new char[kStackBytes]);
  }
  Grid g;
  g.body = &body;
  g.fibers.resize(n);
  // orders: from the launch count, and TOOD_CUDA_EMU_SEED to draw other ones
  const char* user_seed = std::getenv("TOOD_CUDA_EMU_SEED");
  const uint64_t base = user_seed ? std::strtoull(user_seed, nullptr, 10) : 0;
  uint64_t seed = 0x9E3779B97F4A7C15ULL * (++g_launches) + base * 0xD1B54A32D192ED03ULL;
  if (seed == 0) seed = 1;  // xorshift's fixed point
  g.where = " (launch " + std::to_string(g_launches) + ", TOOD_CUDA_EMU_SEED=" +
            std::to_string(base) + ")";
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  g_last_blocks = static_cast<int64_t>(blocks);
  std::vector<uint64_t> order(blocks);
  for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
  shuffle(order, seed);
  blockDim = block;
  gridDim = grid;
  g_grid = &g;
  try {
    for (const uint64_t i : order) {
      blockIdx = {static_cast<unsigned>(i % grid.x), static_cast<unsigned>((i / grid.x) % grid.y),
                  static_cast<unsigned>(i / (uint64_t(grid.x) * grid.y))};
      run_block(g, seed);
    }
  } catch (...) {
    g_grid = nullptr;
    throw;
  }
  g_grid = nullptr;
}

}  // namespace emu
}  // namespace tood_ext
