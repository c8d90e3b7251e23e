// csrc/cuda/probiou_cuda.cu compiled by the host compiler for the CUDA emulator
// (csrc/tools/cuda_emu.h): the same kernels, launch geometry and glue.
#ifndef TOOD_CUDA_EMU
#error "compile with -DTOOD_CUDA_EMU"
#endif
#include "../../cuda/probiou_cuda.cu"
