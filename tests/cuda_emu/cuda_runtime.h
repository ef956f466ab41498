/* A CPU stand-in for the parts of the CUDA runtime polyvit's engine uses, so that the engine's
 * own .cu files compile as plain C++ and run on the host (tests/test_cuda_emulated.py).
 *
 * Kernels run for real: every block, every thread, one coroutine per thread (ucontext), switched
 * only at __syncthreads (the block's threads) and at warp shuffles (the warp's 32 lanes), so
 * barriers, shared memory and shuffles behave as the CUDA programming model says. A barrier
 * that cannot complete (divergent __syncthreads, a shuffle whose warp lost lanes) or a launch
 * configuration CUDA would refuse becomes a launch error, returned by cudaGetLastError.
 * Memory is host memory; streams run in order, synchronously. This checks the engine's logic:
 * indexing, launch shapes, reductions, orchestration. It cannot check timing, the memory model
 * of a real GPU, or cuBLAS itself (cublas_v2.h here computes the same products on the host).
 * Blind spot: __shared__ variables are statics that keep their values from block to block, so
 * a missing __syncthreads may read the previous block's value and go unnoticed (seen: a block
 * sum whose stale and missing parts cancelled across blocks); compute-sanitizer's racecheck on
 * a GPU is the tool for that.
 */
#ifndef PV_EMU_CUDA_RUNTIME_H
#define PV_EMU_CUDA_RUNTIME_H

#ifndef __cplusplus
#error "the CUDA emulation headers are C++"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PV_CUDA_EMULATION 1

/* ---- language: qualifiers vanish, shared memory is one static per kernel (the block's) ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __grid_constant__

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
static inline float4 make_float4(float x, float y, float z, float w) {
    float4 v = {x, y, z, w};
    return v;
}

/* the running thread's coordinates (set by the scheduler before each switch into a thread) */
extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

void pv_emu_syncthreads(void);
void pv_emu_syncwarp(void);
void pv_emu_warp_exchange(const void *mine, void *lane_values, size_t size);
#define __syncthreads() pv_emu_syncthreads()
/* a warp barrier: every live lane of the warp (full mask only) */
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    pv_emu_syncwarp();
}
/* the launch's dynamic shared memory (extern __shared__): one buffer per launch, filled with
 * NaN bytes at the launch, shared by the block's threads (blocks run one after another) */
void *pv_emu_dynamic_smem(void);

/* lane ^ laneMask's value, every lane of the warp taking part (full mask only) */
template <class T> T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32) {
    (void)mask;
    (void)width;
    T all[32];
    pv_emu_warp_exchange(&v, all, sizeof(T));
    unsigned lane = (threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) & 31u;
    return all[lane ^ (unsigned)laneMask];
}
template <class T> T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    (void)mask;
    (void)width;
    T all[32];
    pv_emu_warp_exchange(&v, all, sizeof(T));
    unsigned lane = (threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) & 31u;
    return lane + delta < 32 ? all[lane + delta] : v;
}

/* ---- the runtime API subset ---------------------------------------------------------------- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorLaunchFailure = 719,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorInsufficientDriver = 35,
    cudaErrorIllegalAddress = 700,
    cudaErrorIllegalInstruction = 715,
    cudaErrorMisalignedAddress = 716,
} cudaError_t;

typedef struct CUstream_st *cudaStream_t;
enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};
#define cudaStreamNonBlocking 0x01

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    int major, minor, multiProcessorCount;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaMalloc(void **p, size_t bytes);
template <class T> cudaError_t cudaMalloc(T **p, size_t bytes) { return cudaMalloc((void **)p, bytes); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s = 0);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);

/* ---- launches -------------------------------------------------------------------------------- */
typedef void (*pv_emu_body)(void *closure);
/* runs body(closure) as every thread of every block; records a launch error on failure.
 * kernel: the kernel's address, for its dynamic shared memory limit (cudaFuncSetAttribute);
 * shmem: the launch's dynamic shared memory in bytes (over 48 KiB only after the limit was
 * raised, never over sm_90's 227 KiB, as on a GPU) */
void pv_emu_run(dim3 grid, dim3 block, pv_emu_body body, void *closure, const void *kernel,
                size_t shmem);

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
cudaError_t pv_emu_func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value);
template <class T> cudaError_t cudaFuncSetAttribute(T *kernel, cudaFuncAttribute attr, int value) {
    return pv_emu_func_set_attribute((const void *)kernel, attr, value);
}

template <class K> struct PvEmuLaunch {
    K k;
    dim3 grid, block;
    size_t shmem;
    /* the arguments are taken by value, as a launch copies its parameters */
    template <class... A> void operator()(A... args) {
        auto call = [&]() { k(args...); };
        pv_emu_run(grid, block, [](void *c) { (*static_cast<decltype(call) *>(c))(); }, &call,
                   (const void *)k, shmem);
    }
};
template <class K> PvEmuLaunch<K> pv_emu_launch(K k, dim3 grid, dim3 block, size_t shmem,
                                                 cudaStream_t s) {
    (void)s;
    PvEmuLaunch<K> l;
    l.k = k;
    l.grid = grid;
    l.block = block;
    l.shmem = shmem;
    return l;
}

#endif
