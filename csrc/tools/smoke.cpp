// Smoke test of the C++ library (CMakeLists.txt target tood_ext_smoke): a libtorch
// program that links libtood_ext_ops, finds tood_ext::box_iou in the dispatcher (put
// there by the library's load-time registrations) and checks it on boxes whose IoU
// is known by hand. Prints "tood_ext smoke: OK" and returns 0 on success, 1 otherwise.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdio>
#include <exception>
#include <string>

namespace {

using BoxIouFn = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, bool, double);

int failures = 0;

void expect_close(const char* what, double got, double want) {
  const bool ok = std::abs(got - want) <= 1e-6 * (1.0 + std::abs(want));
  std::printf("  %-34s got % .7f  want % .7f  %s\n", what, got, want, ok ? "ok" : "MISMATCH");
  if (!ok) ++failures;
}

}  // namespace

int main() {
  try {
    const auto& schema = c10::Dispatcher::singleton().findSchemaOrThrow("tood_ext::box_iou", "");
    const auto box_iou = schema.typed<BoxIouFn>();
    std::printf("found %s\n", c10::toString(schema.schema()).c_str());
    const int64_t cuda_version = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("tood_ext::_cuda_version", "")
                                     .typed<int64_t()>()
                                     .call();
    const std::string cuda_archs = c10::Dispatcher::singleton()
                                       .findSchemaOrThrow("tood_ext::_cuda_archs", "")
                                       .typed<std::string()>()
                                       .call();
    if (cuda_version < 0) {
      std::printf("built with CUDA: no\n");
    } else {
      std::printf("built with CUDA: %lld (archs \"%s\")\n", static_cast<long long>(cuda_version),
                  cuda_archs.c_str());
    }

    const auto opts = at::TensorOptions().dtype(at::kFloat);
    // boxes (x1, y1, x2, y2)
    const at::Tensor a = at::tensor({0.f, 0.f, 2.f, 2.f, 0.f, 0.f, 1.f, 1.f}, opts).view({2, 4});
    const at::Tensor b = at::tensor({1.f, 1.f, 3.f, 3.f, 0.f, 0.f, 2.f, 2.f}, opts).view({2, 4});

    // pairwise IoU, (2, 2)
    const at::Tensor iou = box_iou.call(a, b, "iou", false, 1e-7);
    if (iou.sizes() != at::IntArrayRef({2, 2})) {
      std::printf("  box_iou(a, b): unexpected shape %s\n", c10::str(iou.sizes()).c_str());
      return 1;
    }
    expect_close("iou([0,0,2,2], [1,1,3,3])", iou[0][0].item<double>(), 1.0 / 7.0);
    expect_close("iou([0,0,2,2], [0,0,2,2])", iou[0][1].item<double>(), 1.0);
    expect_close("iou([0,0,1,1], [1,1,3,3])", iou[1][0].item<double>(), 0.0);
    expect_close("iou([0,0,1,1], [0,0,2,2])", iou[1][1].item<double>(), 1.0 / 4.0);

    // aligned GIoU, (2,): enclosing box of the first pair is [0,0,3,3] (area 9,
    // union 7): 1/7 - (9 - 7)/9 = -5/63
    const at::Tensor giou = box_iou.call(a, b, "giou", true, 1e-7);
    expect_close("giou aligned([0,0,2,2], [1,1,3,3])", giou[0].item<double>(), -5.0 / 63.0);
    expect_close("giou aligned([0,0,1,1], [0,0,2,2])", giou[1].item<double>(), 1.0 / 4.0);
  } catch (const std::exception& e) {
    std::printf("tood_ext smoke: FAILED with an exception: %s\n", e.what());
    return 1;
  }
  if (failures != 0) {
    std::printf("tood_ext smoke: FAILED (%d mismatches)\n", failures);
    return 1;
  }
  std::printf("tood_ext smoke: OK\n");
  return 0;
}
