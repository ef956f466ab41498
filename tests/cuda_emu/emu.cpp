/* The CPU emulator behind tests/cuda_emu/cuda_runtime.h and cublas_v2.h.
 *
 * A launch runs its blocks one after another; inside a block every thread is a coroutine
 * (ucontext) that runs until it finishes or reaches a barrier: __syncthreads waits for every
 * live thread of the block, a warp shuffle for every lane of its warp. When no thread can run
 * and no barrier can complete, the launch fails (as divergent barriers would hang or corrupt a
 * real GPU). Device memory is host memory, filled with NaN bytes when allocated, so a kernel
 * that reads memory nobody wrote shows NaNs; a total cap (PV_EMU_MEMORY_GIB, default 4) makes
 * out-of-memory reachable. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>

#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime.h"

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

enum State { RUN, WAIT_BLOCK, WAIT_WARP, DONE };

/* Switching coroutines: on x86-64 a few instructions that save the callee-saved registers and
 * the stack pointer (ucontext's swapcontext makes a system call per switch, which made the
 * emulator ten times slower); elsewhere ucontext. */
#if defined(__x86_64__) && defined(__linux__)
#define PV_EMU_FAST_SWITCH 1
extern "C" void pv_emu_switch(void **save_sp, void *load_sp);
asm(R"(
    .text
    .globl pv_emu_switch
    .type pv_emu_switch, @function
pv_emu_switch:
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
    .size pv_emu_switch, .-pv_emu_switch
)");
#endif

struct Thread {
#ifdef PV_EMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    State st;
    char *stack;
};

const size_t STACK_BYTES = 256 * 1024;
std::vector<Thread> threads;
#ifdef PV_EMU_FAST_SWITCH
void *scheduler_sp;
#else
ucontext_t scheduler;
#endif
int current = -1;
pv_emu_body g_body;
void *g_closure;
std::vector<unsigned char> warp_slots; /* (warps, 32 lanes, 16 bytes) */

cudaError_t last_error = cudaSuccess;
char detail[512];

cudaError_t fail(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    if (last_error == cudaSuccess) last_error = e;
    return e;
}

#ifdef PV_EMU_FAST_SWITCH
void trampoline() {
    g_body(g_closure);
    threads[current].st = DONE;
    pv_emu_switch(&threads[current].sp, scheduler_sp); /* never resumed */
    abort();
}

/* a fresh stack that pv_emu_switch "returns" into trampoline() from */
void start(Thread &th) {
    uintptr_t top = ((uintptr_t)(th.stack + STACK_BYTES)) & ~(uintptr_t)15;
    uint64_t *p = (uint64_t *)top;
    *--p = 0;                        /* trampoline's return address slot: entry rsp = 8 mod 16 */
    *--p = (uint64_t)(uintptr_t)&trampoline;
    for (int r = 0; r < 6; r++) *--p = 0; /* rbp rbx r12 r13 r14 r15 */
    *--p = 0x037F00001F80ull;        /* mxcsr (low 4 bytes), x87 control word (next 2) */
    th.sp = p;
}

void resume(int t) { pv_emu_switch(&scheduler_sp, threads[t].sp); }

void wait(State s) {
    threads[current].st = s;
    pv_emu_switch(&threads[current].sp, scheduler_sp);
}
#else
void trampoline() {
    g_body(g_closure);
    threads[current].st = DONE; /* then uc_link returns to the scheduler */
}

void start(Thread &th) {
    getcontext(&th.ctx);
    th.ctx.uc_stack.ss_sp = th.stack;
    th.ctx.uc_stack.ss_size = STACK_BYTES;
    th.ctx.uc_link = &scheduler;
    makecontext(&th.ctx, trampoline, 0);
}

void resume(int t) { swapcontext(&scheduler, &threads[t].ctx); }

void wait(State s) {
    threads[current].st = s;
    swapcontext(&threads[current].ctx, &scheduler);
}
#endif

void set_thread_index(int t) {
    threadIdx.x = t % blockDim.x;
    threadIdx.y = (t / blockDim.x) % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

/* one block; false when its barriers cannot complete */
bool run_block(int n) {
    for (int t = 0; t < n; t++) {
        start(threads[t]);
        threads[t].st = RUN;
    }
    for (;;) {
        for (int t = 0; t < n; t++)
            if (threads[t].st == RUN) {
                current = t;
                set_thread_index(t);
                resume(t);
            }
        int live = 0, at_block = 0;
        for (int t = 0; t < n; t++) {
            live += threads[t].st != DONE;
            at_block += threads[t].st == WAIT_BLOCK;
        }
        if (!live) return true;
        bool released = false;
        for (int w0 = 0; w0 < n; w0 += 32) {
            int w1 = w0 + 32 < n ? w0 + 32 : n, waiting = 0, done = 0;
            for (int t = w0; t < w1; t++) {
                waiting += threads[t].st == WAIT_WARP;
                done += threads[t].st == DONE;
            }
            if (!waiting) continue;
            if (waiting + done != w1 - w0) continue; /* some lanes elsewhere: maybe later */
            if (done) {
                fail(cudaErrorLaunchFailure, "a warp shuffle in block (%u,%u,%u) ran after lanes "
                     "%d..%d of its warp had exited", blockIdx.x, blockIdx.y, blockIdx.z, w0, w1 - 1);
                return false;
            }
            for (int t = w0; t < w1; t++) threads[t].st = RUN;
            released = true;
        }
        if (released) continue;
        if (at_block == live) { /* exited threads no longer take part in __syncthreads */
            for (int t = 0; t < n; t++)
                if (threads[t].st == WAIT_BLOCK) threads[t].st = RUN;
            continue;
        }
        fail(cudaErrorLaunchFailure, "block (%u,%u,%u): barriers cannot complete (%d threads at "
             "__syncthreads, the rest at warp shuffles: divergent barrier)", blockIdx.x,
             blockIdx.y, blockIdx.z, at_block);
        return false;
    }
}

/* ---- memory ---------------------------------------------------------------------------------- */
size_t mem_used = 0;
size_t mem_cap() {
    const char *e = getenv("PV_EMU_MEMORY_GIB");
    double gib = e ? atof(e) : 4.0;
    return (size_t)(gib * 1073741824.0);
}
struct Header {
    size_t bytes;
    size_t pad;
};

}  // namespace

/* ---- kernels ----------------------------------------------------------------------------------- */
void pv_emu_syncthreads(void) { wait(WAIT_BLOCK); }

void pv_emu_syncwarp(void) { wait(WAIT_WARP); }

/* a device-side fault seen by a stand-in (mma.h): reported as the launch's error */
void pv_emu_kernel_fail(const char *what) {
    fail(cudaErrorMisalignedAddress, "block (%u,%u,%u) thread %u: %s", blockIdx.x, blockIdx.y,
         blockIdx.z, threadIdx.x, what);
}

namespace {
std::vector<unsigned char> dyn_smem;          /* the running launch's dynamic shared memory */
unsigned char *dyn_base = nullptr;             /* ... its 128-byte-aligned start */
std::vector<std::pair<const void *, size_t>> dyn_limits; /* raised per kernel */
const size_t DYN_DEFAULT = 48 * 1024, DYN_MAX = 227 * 1024; /* sm_90 */
}  // namespace

void *pv_emu_dynamic_smem(void) { return dyn_base; }

cudaError_t pv_emu_func_set_attribute(const void *kernel, cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
        (size_t)value > DYN_MAX)
        return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute(%d, %d)", (int)attr, value);
    for (auto &l : dyn_limits)
        if (l.first == kernel) {
            l.second = (size_t)value;
            return cudaSuccess;
        }
    dyn_limits.push_back({kernel, (size_t)value});
    return cudaSuccess;
}

void pv_emu_warp_exchange(const void *mine, void *lane_values, size_t size) {
    int w = current / 32, lane = current % 32, n = (int)threads.size();
    unsigned char *slot = &warp_slots[((size_t)w * 32) * 16];
    memcpy(slot + lane * 16, mine, size);
    wait(WAIT_WARP); /* every lane has written */
    int nb = (int)(blockDim.x * blockDim.y * blockDim.z);
    for (int l = 0; l < 32; l++) {
        if (w * 32 + l < nb)
            memcpy((char *)lane_values + l * size, slot + l * 16, size);
        else
            memset((char *)lane_values + l * size, 0, size);
    }
    (void)n;
    wait(WAIT_WARP); /* every lane has read: the slots may be reused */
}

void pv_emu_run(dim3 grid, dim3 block, pv_emu_body body, void *closure, const void *kernel,
                size_t shmem) {
    size_t limit = DYN_DEFAULT;
    for (auto &l : dyn_limits)
        if (l.first == kernel) limit = l.second;
    if (shmem > limit) {
        fail(cudaErrorInvalidValue, "launch with %zu bytes of dynamic shared memory; the "
             "kernel's limit is %zu (cudaFuncSetAttribute raises it, up to %zu)", shmem, limit,
             DYN_MAX);
        return;
    }
    dyn_smem.assign(shmem + 128, 0xff); /* NaN floats, as device memory */
    dyn_base = (unsigned char *)(((uintptr_t)dyn_smem.data() + 127) & ~(uintptr_t)127);
    unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (nt == 0 || nt > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
        grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        fail(cudaErrorInvalidConfiguration, "launch with grid (%u,%u,%u) and block (%u,%u,%u)",
             grid.x, grid.y, grid.z, block.x, block.y, block.z);
        return;
    }
    int n = (int)nt;
    if (threads.size() < (size_t)n) {
        size_t old = threads.size();
        threads.resize(n);
        for (size_t t = old; t < (size_t)n; t++) threads[t].stack = (char *)malloc(STACK_BYTES);
    }
    warp_slots.assign((size_t)((n + 31) / 32) * 32 * 16, 0);
    gridDim = grid;
    blockDim = block;
    g_body = body;
    g_closure = closure;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx.x = x;
                blockIdx.y = y;
                blockIdx.z = z;
                if (!run_block(n)) return;
            }
}

/* ---- runtime API ------------------------------------------------------------------------------- */
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    default: return "cudaErrorUnknown";
    }
}
const char *cudaGetErrorString(cudaError_t e) {
    static char buf[700];
    if (e == cudaSuccess) return "no error";
    if (e == cudaErrorMemoryAllocation) return "out of memory";
    snprintf(buf, sizeof buf, "emulator: %s", detail[0] ? detail : cudaGetErrorName(e));
    return buf;
}
cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }
cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    if (device != 0) return fail(cudaErrorInvalidDevice, "device %d", device);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "polyvit CPU emulator (not a GPU)");
    p->totalGlobalMem = mem_cap();
    p->major = 9;
    p->multiProcessorCount = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice, "device %d", device);
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = NULL;
    if (bytes > mem_cap() - mem_used) return cudaErrorMemoryAllocation; /* not sticky */
    /* exactly header + bytes, so that a sanitizer build sees any access past the end */
    void *raw = NULL;
    if (posix_memalign(&raw, 256, 256 + (bytes ? bytes : 1))) return cudaErrorMemoryAllocation;
    Header *h = (Header *)raw;
    h->bytes = bytes;
    mem_used += bytes;
    *p = (char *)h + 256;
    memset(*p, 0xff, bytes); /* NaN floats: reading what nobody wrote shows */
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    Header *h = (Header *)((char *)p - 256);
    mem_used -= h->bytes;
    free(h);
    return cudaSuccess;
}
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    *total_b = mem_cap();
    *free_b = mem_cap() - mem_used;
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind) {
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind, cudaStream_t) {
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    static int dummy;
    *s = (cudaStream_t)&dummy;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

/* ---- cuBLAS ------------------------------------------------------------------------------------- */
struct pv_emu_cublas {
    int unused;
};
cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new pv_emu_cublas();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasGetProperty(libraryPropertyType t, int *v) {
    *v = t == MAJOR_VERSION ? 13 : 0;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "success" : "emulated cuBLAS failure";
}
const char *cublasGetStatusName(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}

/* what the tensor cores see of a float32 operand: round to nearest even at `keep` mantissa bits */
static float round_mantissa(float x, int keep) {
    if (keep >= 23 || !isfinite(x)) return x;
    uint32_t u;
    memcpy(&u, &x, 4);
    uint32_t drop = 23 - keep, half = 1u << (drop - 1), mask = (1u << drop) - 1;
    uint32_t rest = u & mask;
    u &= ~mask;
    if (rest > half || (rest == half && (u >> drop) & 1u)) u += 1u << drop;
    memcpy(&x, &u, 4);
    return x;
}

static cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                           float alpha, const float *A, int lda, const float *B, int ldb,
                           float beta, float *C, int ldc, int keep) {
    if (m < 0 || n < 0 || k < 0 || lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m)
        return CUBLAS_STATUS_INVALID_VALUE;
    std::vector<float> a((size_t)m * k), b((size_t)n * k); /* op(A) rows, op(B) columns */
    for (int i = 0; i < m; i++)
        for (int l = 0; l < k; l++)
            a[(size_t)i * k + l] =
                round_mantissa(ta ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda], keep);
    for (int j = 0; j < n; j++)
        for (int l = 0; l < k; l++)
            b[(size_t)j * k + l] =
                round_mantissa(tb ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb], keep);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            const float *x = &a[(size_t)i * k], *y = &b[(size_t)j * k];
            float s = 0.0f;
            for (int l = 0; l < k; l++) s += x[l] * y[l];
            float *c = &C[i + (size_t)j * ldc];
            *c = beta == 0.0f ? alpha * s : alpha * s + beta * *c;
        }
    return CUBLAS_STATUS_SUCCESS;
}

static int mantissa_bits(cublasComputeType_t t) {
    return t == CUBLAS_COMPUTE_32F_FAST_TF32 ? 10 : t == CUBLAS_COMPUTE_32F_FAST_16BF ? 7 : 23;
}

/* a bf16 operand (uint16 bits) widened to float32, exactly: count = ld * stored columns */
static std::vector<float> widen_bf16(const void *p, size_t count) {
    std::vector<float> out(count);
    const uint16_t *h = (const uint16_t *)p;
    for (size_t i = 0; i < count; i++) {
        uint32_t u = (uint32_t)h[i] << 16;
        memcpy(&out[i], &u, 4);
    }
    return out;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct_, int ldc, cublasComputeType_t ct,
                            cublasGemmAlgo_t) {
    if (ct_ != CUDA_R_32F || at != bt || (at != CUDA_R_32F && at != CUDA_R_16BF) ||
        (at == CUDA_R_16BF && ct != CUBLAS_COMPUTE_32F))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    std::vector<float> a16, b16;
    if (at == CUDA_R_16BF) { /* the stored matrices: lda x (ta ? m : k), ldb x (tb ? k : n) */
        a16 = widen_bf16(A, (size_t)lda * (ta ? m : k));
        b16 = widen_bf16(B, (size_t)ldb * (tb ? k : n));
        A = a16.data();
        B = b16.data();
    }
    return gemm(ta, tb, m, n, k, *(const float *)alpha, (const float *)A, lda, (const float *)B,
                ldb, *(const float *)beta, (float *)C, ldc, mantissa_bits(ct));
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType, int lda,
                                          long long sA, const void *B, cudaDataType, int ldb,
                                          long long sB, const void *beta, void *C, cudaDataType,
                                          int ldc, long long sC, int batch,
                                          cublasComputeType_t ct, cublasGemmAlgo_t) {
    for (int i = 0; i < batch; i++) {
        cublasStatus_t s = gemm(ta, tb, m, n, k, *(const float *)alpha, (const float *)A + i * sA,
                                lda, (const float *)B + i * sB, ldb, *(const float *)beta,
                                (float *)C + i * sC, ldc, mantissa_bits(ct));
        if (s) return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}
