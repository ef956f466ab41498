/* pv_cuda.h: the CUDA engine's internal interface.
 *
 * The CUDA engine holds a model exactly as the CPU engine does (polyvit.h): the same parameter
 * table, the same named pointers and the same activation arena, carved by the same layout code
 * (layout.c), only every buffer lives in device memory. Ops have the CPU ops' names with a `cu_`
 * prefix, the same arguments, plus the stream they run on; each returns PV_OK or a status with
 * the message in pv_last_error() (a failed launch or CUDA call names itself). Nothing here
 * exits, aborts or prints.
 *
 * Everything is float32 in memory. The precision mode only changes how cuBLAS multiplies:
 * float32 (the reference), TF32 tensor cores, or bf16 tensor cores with float32 accumulation
 * (bf16 mixed precision: float32 master weights, activations and reductions).
 */
#ifndef POLYVIT_CUDA_H
#define POLYVIT_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "../polyvit.h"
#include "gemm_plan.h"

#ifdef __CUDACC__
#include <cuda_runtime.h>
typedef cudaStream_t pv_stream;
#else
typedef struct CUstream_st *pv_stream;
#endif

/* A kernel launch, written PV_LAUNCH(kernel, grid, block, shared_bytes, stream)(args...): nvcc's
 * <<<>>> here; in the CPU emulation build (tests/cuda_emu/, compiled as plain C++) the
 * emulator's launcher, which runs every thread of every block on the host. */
#ifdef __CUDACC__
#define PV_LAUNCH(k, grid, block, shmem, stream) k<<<grid, block, shmem, stream>>>
#elif defined(PV_CUDA_EMULATION)
#define PV_LAUNCH(k, grid, block, shmem, stream) pv_emu_launch(k, grid, block, shmem, stream)
#endif

/* a kernel's dynamic shared memory (the launch's shared_bytes), 128-byte aligned */
#ifdef __CUDACC__
#define PV_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#elif defined(PV_CUDA_EMULATION)
#define PV_DYNAMIC_SMEM(name) unsigned char *name = (unsigned char *)pv_emu_dynamic_smem()
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------------------------ */
/* Record a failed CUDA runtime call (code = cudaError_t): "cudaMalloc: out of memory (...)".
 * Returns PV_ERR_NOMEM for cudaErrorMemoryAllocation, PV_ERR_RUNTIME otherwise. */
int pv_cuda_fail(const char *call, int code, const char *file, int line);
/* Same for a cuBLAS status. */
int pv_cublas_fail(const char *call, int status, const char *file, int line);

#define PV_CUDA_CHECK(call)                                                       \
    do {                                                                          \
        int pv_e_ = (int)(call);                                                  \
        if (pv_e_ != 0) return pv_cuda_fail(#call, pv_e_, __FILE__, __LINE__);    \
    } while (0)
#define PV_CUBLAS_CHECK(call)                                                     \
    do {                                                                          \
        int pv_s_ = (int)(call);                                                  \
        if (pv_s_ != 0) return pv_cublas_fail(#call, pv_s_, __FILE__, __LINE__);  \
    } while (0)
/* after a kernel launch: a bad configuration shows up here, not at the next sync */
#define PV_LAUNCH_CHECK(name) PV_CUDA_CHECK(pv_cuda_last_launch_error(name))
int pv_cuda_last_launch_error(const char *kernel);

/* ---- precision of the matrix products ---------------------------------------------------- */
enum { PV_PREC_FP32 = 0, PV_PREC_TF32 = 1, PV_PREC_BF16 = 2 };

/* ---- ops (ops.cu): elementwise, normalisation, embedding, reductions, optimizer ---------- */
/* uint8 or float32 images on the device -> normalised float32 NCHW model input:
 * out = x * scale[c] + shift[c], x the pixel value as float (uint8: 0..255, so scale carries
 * the 1/255). nhwc: the input is (B, H, W, C) and is transposed on the way. */
int cu_images_u8(float *out, const uint8_t *in, const float *scale, const float *shift, int B,
                 int Cin, int img, int nhwc, pv_stream s);
int cu_images_f32(float *out, const float *in, const float *scale, const float *shift, int B,
                  int Cin, int img, pv_stream s);
int cu_patch_im2col(float *patches, const float *images, int B, int Cin, int img, int p,
                    pv_stream s);
int cu_tokens_assemble(float *x, const float *patch_out, const float *cls, const float *pos,
                       int B, int T, int C, pv_stream s);
/* dcls, dpos overwritten (sums over the batch); dpatch_out = dx without the class tokens */
int cu_tokens_backward(float *dcls, float *dpos, float *dpatch_out, const float *dx, int B, int T,
                       int C, pv_stream s);

/* dst (n bf16, as uint16) = src (n floats) rounded to nearest even: the bf16 mode's GEMM operands */
int cu_to_bf16(void *dst, const float *src, size_t n, pv_stream s);

/* out(M,N) += bias(N) [+ residual(M,N)]  (bias may be NULL) */
int cu_bias_residual(float *out, const float *bias, const float *residual, int M, int N,
                     pv_stream s);
/* dbias(N) = column sums of dout(M,N), overwritten; deterministic (fixed reduction order) */
int cu_bias_backward(float *dbias, const float *dout, int M, int N, float *scratch,
                     pv_stream s);
size_t cu_bias_backward_scratch(int M, int N); /* floats */

/* the CPU engine's layernorm_forward/_backward semantics (two-pass statistics; strided input
 * rows; dinp += ; dw, db overwritten, deterministic) */
int cu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                         const float *b, int rows, int C, float eps, size_t in_stride,
                         pv_stream s);
/* a GEMM's epilogue fused with the LayerNorm after it: x (rows, C) holds the GEMM output and
 * becomes x + (residual + bias) (the residual stream, kept); out = LayerNorm(x) */
int cu_residual_layernorm_forward(float *x, float *out, float *mean, float *rstd,
                                  const float *bias, const float *residual, const float *w,
                                  const float *b, int rows, int C, float eps, pv_stream s);
int cu_layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const float *mean, const float *rstd, int rows, int C,
                          size_t in_stride, size_t dinp_stride, float *scratch, pv_stream s);
size_t cu_layernorm_backward_scratch(int rows, int C); /* floats */

int cu_gelu_forward(float *out, const float *inp, size_t n, int tanh_form, pv_stream s);
/* fc1's bias fused in: h (rows x H) += bias (kept), out = act(h); one pass instead of two */
int cu_bias_gelu_forward(float *out, float *h, const float *bias, size_t rows, int H,
                         int tanh_form, pv_stream s);
int cu_bias_poly_forward(float *out, float *h, const float *bias, const float *a, const float *b,
                         const float *c, const float *sc, int width, size_t rows, int H,
                         pv_stream s);
/* dinp may == dout */
int cu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int tanh_form,
                     pv_stream s);
/* y = s*(a x^2 + b x + c), per block (width 1) or per channel (width H) */
int cu_poly_forward(float *out, const float *inp, const float *a, const float *b, const float *c,
                    const float *sc, int width, size_t rows, int H, pv_stream s);
/* dinp (may alias dout) = dout * s*(2 a x + b); da, db, dc, ds (width floats) overwritten with
 * s*sum(g x^2), s*sum(g x), s*sum(g), sum(g (a x^2 + b x + c)), the sums in double */
int cu_poly_backward(float *dinp, float *da, float *db, float *dc, float *ds, const float *inp,
                     const float *dout, const float *a, const float *b, const float *c,
                     const float *sc, int width, size_t rows, int H, double *scratch,
                     pv_stream s);
size_t cu_poly_backward_scratch(size_t rows, int H); /* doubles */

/* head input: pool rows of src (B,T,C) (class token, or mean of the patch tokens) */
int cu_pool_tokens(float *out, const float *src, int B, int T, int C, int pool, pv_stream s);
/* backward of the pooling: d_tok (B,T,C) overwritten (zeros where no gradient flows) */
int cu_pool_backward(float *d_tok, const float *d_pooled, int B, int T, int C, int pool,
                     pv_stream s);

/* optimizer over the whole parameter buffer: group_of[i] is the group of floats
 * [16 i, 16 i + 16) (every tensor starts 16-float aligned). hp by value. */
typedef struct {
    float lr[4], decay[4]; /* decay = 1 - lr*weight_decay */
    int frozen[4];
} pv_cuda_hp;
/* out[0] = sum of g^2 over non-frozen groups, in double; scratch: cu_sumsq_scratch doubles */
int cu_grad_sumsq(double *out, const float *g, const uint8_t *group_of, size_t n,
                  pv_cuda_hp hp, double *scratch, pv_stream s);
size_t cu_sumsq_scratch(size_t n);
int cu_grad_scale(float *g, const uint8_t *group_of, size_t n, pv_cuda_hp hp, float scale,
                  pv_stream s);
/* torch.optim.AdamW: p = p*decay - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
int cu_adamw(float *p, const float *g, float *m, float *v, const uint8_t *group_of, size_t n,
             pv_cuda_hp hp, float beta1, float beta2, float eps, float bc1, float bc2_sqrt,
             pv_stream s);

/* ---- attention (attention.cu), timm's packed qkv (B,T,3C) ------------------------------- */
/* qkvr: scratch (3, B, NH, T, hs); att: (B, NH, T, T) softmax probabilities, saved */
struct pv_cuda_model;
int cu_attention_forward(struct pv_cuda_model *cm, float *y, float *att, const float *qkv,
                         int B);
int cu_attention_backward(struct pv_cuda_model *cm, float *dqkv, const float *dy,
                          const float *att, const float *qkv, int B);

/* ---- GEMMs (model.cu), through cuBLAS in the model's precision mode ----------------------- */
/* out(M,N) = inp(M,K) @ w(N,K)^T + bias(N) [+ residual(M,N)] */
int cu_matmul_forward(struct pv_cuda_model *cm, float *out, const float *inp, const float *w,
                      const float *bias, const float *residual, int M, int K, int N);
/* dinp(M,K) = dout @ w (accumulate: +=), dw(N,K) = dout^T @ inp, dbias = column sums */
int cu_matmul_backward(struct pv_cuda_model *cm, float *dinp, float *dw, float *dbias,
                       const float *dout, const float *inp, const float *w, int M, int K, int N,
                       int accumulate);
/* one planned product (gemm_plan.h): C = alpha op(A) op(B) + beta C, batched by the plan */
int cu_gemm(struct pv_cuda_model *cm, const pv_gemm_plan *plan, const float *A, const float *B,
            float *C);

/* ---- the model ---------------------------------------------------------------------------- */
typedef struct pv_cuda_model {
    pv_model m;      /* layout and named pointers; every buffer pointer is device memory */
    int device;      /* CUDA device ordinal */
    int precision;   /* PV_PREC_* */
    void *stream;    /* cudaStream_t: every op of this model runs on it */
    void *blas;      /* cublasHandle_t bound to the stream */
    void *blas_ws;   /* cuBLAS workspace, allocated once (no allocation inside a step) */
    size_t blas_ws_bytes;
    float *dev_params_mem; /* params, grads, m, v: one allocation of 4 * n_params floats */
    float *qkvr;     /* (3, B, NH, T, hs) permuted q, k, v */
    float *d_qkvr;   /* its gradient */
    float *d_attn;   /* (B, NH, T, T) gradient of the probabilities, then of the scores */
    float *vacc;     /* (B, NH, T, hs) attention output per head, and its gradient */
    float *scratch;  /* float scratch for the deterministic reductions */
    size_t scratch_floats;
    double *dscratch;/* double scratch (poly coefficient and gradient-norm reductions) */
    size_t dscratch_doubles;
    uint8_t *group_of; /* (n_params / 16) group of each 16-float chunk */
    float *images;   /* (B, Cin, img, img) normalised input */
    void *images_raw;/* staging for the uploaded images (uint8 or float32) */
    float *norm;     /* (2 * Cin) scale and shift of the input normalisation */
    float *dlogits;  /* (B, K) */
    float *host_pinned; /* pinned host staging: logits and dlogits */
    /* bf16 mode: the linear layers' operands rounded to bf16 before each product (gemm.cu).
     * One allocation, made when the mode is first chosen: the input (M x K), the weight (K x N)
     * and the output gradient (M x N), each sized for the largest linear layer. */
    void *bf16_mem;
    uint16_t *bf16_in, *bf16_w, *bf16_dout;
    size_t bf16_in_n, bf16_w_n, bf16_dout_n; /* capacities in elements */
    int cc_major;    /* the device's compute capability (major) */
    int att_fused;   /* bf16 mode may use the fused attention kernel (POLYVIT_CUDA_ATTENTION) */
    size_t device_bytes; /* everything this model holds on the device */
} pv_cuda_model;

int pvc_device_count(int *n);
/* name, compute capability, memory of a device */
int pvc_device_info(int device, char *name, size_t name_len, int *major, int *minor,
                    size_t *total_mem, int *sm_count);
/* versions: CUDA runtime, driver (0 when no driver) and cuBLAS */
void pvc_versions(int *runtime, int *driver, int *cublas);

int pvc_model_create(pv_cuda_model **out, const pv_config *cfg, int max_batch, int device);
void pvc_model_free(pv_cuda_model *cm);
int pvc_set_precision(pv_cuda_model *cm, int mode);

/* which: 0 params, 1 grads, 2 m, 3 v; whole buffers of n_params floats */
int pvc_upload(pv_cuda_model *cm, int which, const float *host);
int pvc_download(pv_cuda_model *cm, int which, float *host);

/* forward on B images from host memory: u8 (nhwc or nchw) or f32 NCHW; scale/shift (Cin each)
 * normalise on the device (identity: scale 1, shift 0). Logits (B, K) to logits_host. */
int pvc_forward(pv_cuda_model *cm, const void *images, int is_u8, int nhwc, const float *scale,
                const float *shift, int B, float *logits_host);
/* block l's MLP pre-activation (last_batch, T, H) of the last forward, to host */
int pvc_preact(pv_cuda_model *cm, int l, float *host);
int pvc_backward(pv_cuda_model *cm, const float *dlogits_host, int B);
int pvc_grad_norm(pv_cuda_model *cm, const pv_group_hp hp[4], double *out);
int pvc_grad_scale(pv_cuda_model *cm, const pv_group_hp hp[4], float scale);
int pvc_adamw_step(pv_cuda_model *cm, const pv_group_hp hp[4], float beta1, float beta2,
                   float eps, int t);
int pvc_synchronize(pv_cuda_model *cm);
/* per-op timing, the CPU engine's categories (polyvit.h PV_PROF_*) */
void pvc_profile_enable(int on);
int pvc_profile_read(const char **names, double *sec, int reset);
/* every stream of the current device */
int pvc_device_synchronize(void);

#ifdef __cplusplus
}
#endif
#endif
