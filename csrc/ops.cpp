// The one registration file of tood_ext: every op schema, once.
//
// Backends add their kernels with TORCH_LIBRARY_IMPL in their own files
// (csrc/cpu/*.cpp, csrc/cuda/*.cu); fake (meta) kernels and autograd are
// registered from Python (tood_ext/ops/). Loading the shared library is all
// it takes to register: there are no pybind functions to call.
#ifndef TOOD_EXT_NO_PYTHON
#include <Python.h>
#endif
#include <torch/library.h>

#include <string>

#ifdef TOOD_EXT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef TOOD_EXT_CUDA_ARCHS
#define TOOD_EXT_CUDA_ARCHS ""
#endif

namespace tood_ext {
namespace {

// CUDA_VERSION of the toolkit the kernels were compiled with, or -1 when
// this build has no CUDA kernels (TOOD_EXT_WITH_CUDA is set by setup.py and
// CMakeLists.txt only when csrc/cuda/*.cu are compiled in).
int64_t cuda_version() {
#ifdef TOOD_EXT_WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

std::string cuda_archs() { return TOOD_EXT_CUDA_ARCHS; }

}  // namespace

TORCH_LIBRARY(tood_ext, m) {
  // --- box metrics (csrc/box_ops) ---
  m.def("box_iou(Tensor boxes1, Tensor boxes2, str mode=\"iou\", bool aligned=False, "
        "float eps=1e-07) -> Tensor");
  m.def("_box_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str mode, bool aligned, "
        "float eps) -> (Tensor, Tensor)");
  m.def("iou_loss(Tensor pred, Tensor target, Tensor? weight=None, str mode=\"giou\", "
        "float eps=1e-07) -> Tensor");
  m.def("_iou_loss_backward(Tensor grad, Tensor pred, Tensor target, Tensor? weight, str mode, "
        "float eps) -> (Tensor, Tensor, Tensor)");
  m.def("alignment_metric(Tensor pred_scores, Tensor pred_boxes, Tensor anchor_points, "
        "Tensor gt_labels, Tensor gt_boxes, Tensor gt_mask, float alpha=1.0, float beta=6.0, "
        "str iou_mode=\"iou\", float inside_eps=0.01, float eps=1e-07) "
        "-> (Tensor, Tensor, Tensor)");
  // --- deformable sampling (csrc/deform) ---
  m.def("deform_sampling(Tensor input, Tensor offset, Tensor? mask=None) -> Tensor");
  m.def("_deform_sampling_backward(Tensor grad, Tensor input, Tensor offset, Tensor? mask) "
        "-> (Tensor, Tensor, Tensor)");
  // --- task-aligned assignment (csrc/tal) ---
  m.def("task_aligned_assign(Tensor pred_scores, Tensor pred_boxes, Tensor anchor_points, "
        "Tensor gt_labels, Tensor gt_boxes, Tensor gt_mask, int topk=13, float alpha=1.0, "
        "float beta=6.0, str candidates=\"topk_then_inside\", str iou_mode=\"iou\", "
        "float inside_eps=0.01, float norm_eps=1e-07, str conflict=\"candidates\", "
        "float min_inside_size=0.0) "
        "-> (Tensor assigned_gt, Tensor fg_mask, Tensor labels, Tensor boxes, Tensor iou, "
        "Tensor metric, Tensor soft_target)");
  // --- build information ---
  m.def("_cuda_version() -> int", &cuda_version);
  m.def("_cuda_archs() -> str", &cuda_archs);
}

}  // namespace tood_ext

#ifndef TOOD_EXT_NO_PYTHON
// An empty Python module: `import tood_ext._C` loads this library, which
// runs the static registrations above (pytorch/extension-cpp's pattern).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "tood_ext kernels (ops live in torch.ops.tood_ext)", -1,
      nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif  // TOOD_EXT_NO_PYTHON
