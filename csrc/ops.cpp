// The registration file of tood_ext: every op schema (schemas.h), once.
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

#include "schemas.h"

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
  define_op_schemas(m);
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
