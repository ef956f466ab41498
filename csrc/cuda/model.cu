/* The CUDA engine's model: device buffers laid out by the shared layout code, forward, backward
 * and the optimizer, op for op the CPU engine's model.c. Every call into the engine selects the
 * model's device first (a caller may switch threads) and reports the first failing CUDA or
 * cuBLAS call by name. Everything is allocated in pvc_model_create (the bf16 mode's operand
 * scratch when that mode is first chosen), so a step never allocates: out-of-memory can only
 * happen there, and then nothing is left behind.
 */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pv_cuda.h"

#define STREAM(cm) ((cudaStream_t)(cm)->stream)
#define BLAS(cm) ((cublasHandle_t)(cm)->blas)
#define TRY(x)                    \
    do {                          \
        int rc_ = (x);            \
        if (rc_) return rc_;      \
    } while (0)

/* ---- optional per-op timing (polyvit._C_cuda.profile): off unless asked for -----------------
 * The stream is synchronised around each timed op, so the figures are each op's own time with
 * the pipeline drained: for finding where a step goes, not for measuring a step. */
static int prof_on = 0;
static double prof_sec[PV_PROF_N];
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
#define PROF(cm, cat, stmt)                                                  \
    do {                                                                     \
        double t0_ = 0.0;                                                    \
        if (prof_on) {                                                       \
            PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));                \
            t0_ = now_s();                                                   \
        }                                                                    \
        stmt;                                                                \
        if (prof_on) {                                                       \
            PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));                \
            prof_sec[cat] += now_s() - t0_;                                  \
        }                                                                    \
    } while (0)

extern "C" void pvc_profile_enable(int on) { prof_on = on; }
extern "C" int pvc_profile_read(const char **names, double *sec, int reset) {
    for (int i = 0; i < PV_PROF_N; i++) {
        names[i] = pv_prof_names[i];
        sec[i] = prof_sec[i];
        if (reset) prof_sec[i] = 0.0;
    }
    return PV_PROF_N;
}

/* ---- devices -------------------------------------------------------------------------------- */
extern "C" int pvc_device_count(int *n) {
    *n = 0;
    int c = 0;
    cudaError_t e = cudaGetDeviceCount(&c);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
        cudaGetLastError(); /* not sticky; clear it */
        int drv = 0;
        if (cudaDriverGetVersion(&drv) != cudaSuccess || drv == 0)
            pv_set_error(PV_ERR_RUNTIME, "no NVIDIA driver is installed on this machine");
        else if (e == cudaErrorNoDevice)
            pv_set_error(PV_ERR_RUNTIME, "the NVIDIA driver sees no CUDA device");
        else
            pv_set_error(PV_ERR_RUNTIME, "the NVIDIA driver (CUDA %d.%d) is older than the CUDA "
                         "runtime polyvit was built with; update the driver",
                         drv / 1000, (drv % 1000) / 10);
        cudaGetLastError();
        return PV_OK;
    }
    if (e != cudaSuccess) return pv_cuda_fail("cudaGetDeviceCount", e, __FILE__, __LINE__);
    *n = c;
    return PV_OK;
}

extern "C" int pvc_device_info(int device, char *name, size_t name_len, int *major, int *minor,
                               size_t *total_mem, int *sm_count) {
    cudaDeviceProp p;
    PV_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    snprintf(name, name_len, "%s", p.name);
    *major = p.major;
    *minor = p.minor;
    *total_mem = p.totalGlobalMem;
    *sm_count = p.multiProcessorCount;
    return PV_OK;
}

extern "C" void pvc_versions(int *runtime, int *driver, int *cublas) {
    *runtime = *driver = *cublas = 0;
    cudaRuntimeGetVersion(runtime);
    if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;
    cudaGetLastError();
    int v = 0;
    if (cublasGetProperty(MAJOR_VERSION, &v) == CUBLAS_STATUS_SUCCESS) *cublas = v * 10000;
    if (cublasGetProperty(MINOR_VERSION, &v) == CUBLAS_STATUS_SUCCESS) *cublas += v * 100;
    if (cublasGetProperty(PATCH_LEVEL, &v) == CUBLAS_STATUS_SUCCESS) *cublas += v;
}

extern "C" int pvc_device_synchronize(void) {
    PV_CUDA_CHECK(cudaDeviceSynchronize());
    return PV_OK;
}

/* ---- create / free ---------------------------------------------------------------------------- */
extern "C" void pvc_model_free(pv_cuda_model *cm) {
    if (!cm) return;
    cudaSetDevice(cm->device);
    if (cm->stream) cudaStreamSynchronize(STREAM(cm));
    if (cm->blas) cublasDestroy(BLAS(cm));
    if (cm->stream) cudaStreamDestroy(STREAM(cm));
    cudaFree(cm->blas_ws);
    cudaFree(cm->dev_params_mem);
    cudaFree(cm->m.act_mem);
    cudaFree(cm->qkvr);
    cudaFree(cm->d_qkvr);
    cudaFree(cm->d_attn);
    cudaFree(cm->vacc);
    cudaFree(cm->scratch);
    cudaFree(cm->dscratch);
    cudaFree(cm->group_of);
    cudaFree(cm->images);
    cudaFree(cm->images_raw);
    cudaFree(cm->norm);
    cudaFree(cm->dlogits);
    cudaFree(cm->bf16_mem);
    cm->m.d_poly = NULL; /* never allocated here: dscratch serves */
    cudaFreeHost(cm->host_pinned);
    cudaGetLastError(); /* frees of a poisoned context report errors we cannot act on */
    free(cm->m.tensors);
    free(cm);
}

/* cudaMalloc of n bytes, zeroed; names the buffer and the size when the device is full */
static int dalloc(pv_cuda_model *cm, void **p, size_t bytes, const char *what) {
    if (bytes == 0) bytes = 16;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        if (e == cudaErrorMemoryAllocation)
            return pv_set_error(PV_ERR_NOMEM,
                                "cudaMalloc: out of memory allocating %s (%.2f GiB requested, "
                                "%.2f GiB free of %.2f GiB); use a smaller max_batch",
                                what, bytes / 1073741824.0, free_b / 1073741824.0,
                                total_b / 1073741824.0);
        return pv_cuda_fail("cudaMalloc", e, __FILE__, __LINE__);
    }
    cm->device_bytes += bytes;
    PV_CUDA_CHECK(cudaMemsetAsync(*p, 0, bytes, STREAM(cm)));
    return PV_OK;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int create(pv_cuda_model *cm, const pv_config *cfg, int max_batch, int device) {
    pv_model *m = &cm->m;
    TRY(pv_layout_init(m, cfg, max_batch));
    int ndev = 0;
    TRY(pvc_device_count(&ndev));
    if (ndev == 0) return PV_ERR_RUNTIME; /* message set by pvc_device_count */
    if (device < 0 || device >= ndev)
        return pv_set_error(PV_ERR_VALUE, "CUDA device %d does not exist (%d device%s present)",
                            device, ndev, ndev == 1 ? "" : "s");
    cm->device = device;
    PV_CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp prop;
    PV_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    cm->cc_major = prop.major;
    /* POLYVIT_CUDA_ATTENTION=fused lets bf16 mode use the fused attention forward. Opt-in:
     * correct on an H100, but there it took 68 ms of ViT-B/16's forward at batch 256 against
     * the unfused path's 22 (bench/results/gpu-h100-2026-11-26); see attention.cu */
    const char *att = getenv("POLYVIT_CUDA_ATTENTION");
    cm->att_fused = att && strcmp(att, "fused") == 0;
    /* POLYVIT_CUDA_ATT_LD=pad: the saved probabilities' rows start 32 bytes apart (T rounded up
     * to 8 floats), so that cuBLAS's batched attention products see aligned rows (T = 197 at
     * 224/16 is not). Opt-in until timed on a GPU: bench/gpu_probe.py measures the premise */
    const char *ld = getenv("POLYVIT_CUDA_ATT_LD");
    if (ld && strcmp(ld, "pad") == 0) {
        m->att_ld = (m->T + 7) / 8 * 8;
        m->act_floats = pv_carve_acts(m, NULL);
    }
    cudaStream_t s;
    PV_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cm->stream = s;
    cublasHandle_t h;
    PV_CUBLAS_CHECK(cublasCreate(&h));
    cm->blas = h;
    PV_CUBLAS_CHECK(cublasSetStream(h, s));
    /* a fixed workspace, so that cuBLAS never allocates inside a step (32 MiB: Hopper's advice) */
    cm->blas_ws_bytes = (size_t)32 << 20;
    TRY(dalloc(cm, &cm->blas_ws, cm->blas_ws_bytes, "the cuBLAS workspace"));
    PV_CUBLAS_CHECK(cublasSetWorkspace(h, cm->blas_ws, cm->blas_ws_bytes));

    size_t P = m->n_params, B = (size_t)max_batch, T = m->T, C = m->C, H = m->H, NH = m->NH;
    TRY(dalloc(cm, (void **)&cm->dev_params_mem, 4 * P * sizeof(float),
               "the parameters, gradients and AdamW moments"));
    m->params = cm->dev_params_mem;
    m->grads = m->params + P;
    m->m = m->grads + P;
    m->v = m->m + P;
    pv_bind_params(&m->P, m->params, m);
    pv_bind_params(&m->G, m->grads, m);
    TRY(dalloc(cm, (void **)&m->act_mem, m->act_floats * sizeof(float), "the activations"));
    pv_carve_acts(m, m->act_mem);
    size_t btc = B * T * C, bhtt = B * NH * T * (size_t)m->att_ld;
    TRY(dalloc(cm, (void **)&cm->qkvr, 3 * btc * sizeof(float), "attention scratch"));
    TRY(dalloc(cm, (void **)&cm->d_qkvr, 3 * btc * sizeof(float), "attention scratch"));
    TRY(dalloc(cm, (void **)&cm->vacc, btc * sizeof(float), "attention scratch"));
    TRY(dalloc(cm, (void **)&cm->d_attn, bhtt * sizeof(float), "attention scratch"));

    /* reduction scratch: the largest any backward op asks for */
    size_t BT = B * T, f = 0;
    f = max_sz(f, cu_bias_backward_scratch((int)BT, (int)max_sz(3 * C, H)));
    f = max_sz(f, cu_bias_backward_scratch((int)(B * m->N), (int)C));
    f = max_sz(f, cu_bias_backward_scratch((int)B, m->K));
    f = max_sz(f, cu_layernorm_backward_scratch((int)BT, (int)C));
    cm->scratch_floats = f;
    TRY(dalloc(cm, (void **)&cm->scratch, f * sizeof(float), "reduction scratch"));
    size_t d = max_sz(cu_poly_backward_scratch(BT, (int)H), cu_sumsq_scratch(P)) + 1;
    cm->dscratch_doubles = d;
    TRY(dalloc(cm, (void **)&cm->dscratch, d * sizeof(double), "reduction scratch"));

    /* the optimizer group of every 16-float chunk of the parameter buffer */
    size_t chunks = (P + 15) / 16;
    uint8_t *g = (uint8_t *)calloc(chunks ? chunks : 1, 1);
    if (!g) return pv_set_error(PV_ERR_NOMEM, "out of host memory for the group map");
    for (int i = 0; i < m->n_tensors; i++) {
        const pv_tensor *t = &m->tensors[i];
        for (size_t c = t->offset / 16; c < (t->offset + t->size + 15) / 16; c++)
            g[c] = (uint8_t)t->group;
    }
    /* on the model's stream, after dalloc's memset there (a non-blocking stream does not
     * order itself with the legacy default stream that a plain cudaMemcpy would use) */
    int rc = dalloc(cm, (void **)&cm->group_of, chunks, "the group map");
    if (!rc) {
        cudaError_t e = cudaMemcpyAsync(cm->group_of, g, chunks, cudaMemcpyHostToDevice, s);
        if (e == cudaSuccess) e = cudaStreamSynchronize(s);
        if (e != cudaSuccess) rc = pv_cuda_fail("cudaMemcpyAsync(group map)", e, __FILE__, __LINE__);
    }
    free(g);
    TRY(rc);

    size_t img = (size_t)cfg->in_chans * cfg->img_size * cfg->img_size;
    TRY(dalloc(cm, (void **)&cm->images, B * img * sizeof(float), "the input images"));
    TRY(dalloc(cm, &cm->images_raw, B * img * sizeof(float), "the input images"));
    TRY(dalloc(cm, (void **)&cm->norm, 2 * cfg->in_chans * sizeof(float), "the normalisation"));
    TRY(dalloc(cm, (void **)&cm->dlogits, B * m->K * sizeof(float), "the logit gradients"));
    PV_CUDA_CHECK(cudaMallocHost((void **)&cm->host_pinned, B * m->K * sizeof(float)));
    PV_CUDA_CHECK(cudaStreamSynchronize(s));
    return PV_OK;
}

extern "C" int pvc_model_create(pv_cuda_model **out, const pv_config *cfg, int max_batch,
                                int device) {
    *out = NULL;
    pv_cuda_model *cm = (pv_cuda_model *)calloc(1, sizeof(pv_cuda_model));
    if (!cm) return pv_set_error(PV_ERR_NOMEM, "out of host memory for the model");
    int rc = create(cm, cfg, max_batch, device);
    if (rc) {
        /* keep the message: freeing may run CUDA calls that would overwrite nothing, but be safe */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", pv_last_error());
        pvc_model_free(cm);
        pv_set_error(rc, "%s", msg);
        return rc;
    }
    *out = cm;
    return PV_OK;
}

/* the bf16 mode's operand scratch (see pv_cuda_model): sized for the largest input, weight and
 * output gradient of any linear layer (patch embedding, qkv, proj, fc1, fc2, head) */
static int bf16_scratch(pv_cuda_model *cm) {
    const pv_model *m = &cm->m;
    size_t B = (size_t)m->max_batch, BT = B * m->T, C = m->C, H = m->H, K = m->K, N = m->N;
    size_t pd = (size_t)m->patch_dim;
    size_t in_n = max_sz(max_sz(B * N * pd, BT * C), max_sz(BT * H, B * C));
    size_t w_n = max_sz(max_sz(pd * C, 3 * C * C), max_sz(C * H, C * K));
    size_t dout_n = max_sz(max_sz(B * N * C, BT * 3 * C), max_sz(BT * H, B * K));
    /* each part starts on a 256-byte boundary (cuBLAS's fastest kernels want 16) */
    size_t a = (in_n + 127) / 128 * 128, b = (w_n + 127) / 128 * 128;
    size_t total = a + b + (dout_n + 127) / 128 * 128;
    TRY(dalloc(cm, &cm->bf16_mem, total * sizeof(uint16_t), "the bf16 GEMM operands"));
    cm->bf16_in = (uint16_t *)cm->bf16_mem;
    cm->bf16_w = cm->bf16_in + a;
    cm->bf16_dout = cm->bf16_w + b;
    cm->bf16_in_n = in_n;
    cm->bf16_w_n = w_n;
    cm->bf16_dout_n = dout_n;
    return PV_OK;
}

extern "C" int pvc_set_precision(pv_cuda_model *cm, int mode) {
    if (mode != PV_PREC_FP32 && mode != PV_PREC_TF32 && mode != PV_PREC_BF16)
        return pv_set_error(PV_ERR_VALUE, "unknown precision mode %d", mode);
    if (mode == PV_PREC_BF16 && !cm->bf16_mem) {
        PV_CUDA_CHECK(cudaSetDevice(cm->device));
        TRY(bf16_scratch(cm)); /* out of memory: MemoryError, the model keeps its mode */
    }
    cm->precision = mode;
    return PV_OK;
}

extern "C" int pvc_synchronize(pv_cuda_model *cm) {
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    return PV_OK;
}

/* ---- transfers -------------------------------------------------------------------------------- */
static float *buffer_of(pv_cuda_model *cm, int which) {
    switch (which) {
    case 0: return cm->m.params;
    case 1: return cm->m.grads;
    case 2: return cm->m.m;
    case 3: return cm->m.v;
    default: return NULL;
    }
}

extern "C" int pvc_upload(pv_cuda_model *cm, int which, const float *host) {
    float *d = buffer_of(cm, which);
    if (!d) return pv_set_error(PV_ERR_VALUE, "unknown buffer %d", which);
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    PV_CUDA_CHECK(cudaMemcpyAsync(d, host, cm->m.n_params * sizeof(float), cudaMemcpyHostToDevice,
                                  STREAM(cm)));
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    return PV_OK;
}

extern "C" int pvc_download(pv_cuda_model *cm, int which, float *host) {
    float *d = buffer_of(cm, which);
    if (!d) return pv_set_error(PV_ERR_VALUE, "unknown buffer %d", which);
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    PV_CUDA_CHECK(cudaMemcpyAsync(host, d, cm->m.n_params * sizeof(float), cudaMemcpyDeviceToHost,
                                  STREAM(cm)));
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    return PV_OK;
}

/* ---- the head: [final norm] -> pool -> [fc_norm] -> linear ---------------------------------- */
static const float *head_input(const pv_model *m) { return m->cfg.fc_norm ? m->fcn : m->pooled; }

static int head_forward(pv_cuda_model *cm, const float *x, int B) {
    pv_model *m = &cm->m;
    const pv_config *c = &m->cfg;
    cudaStream_t s = STREAM(cm);
    int T = m->T, C = m->C;
    if (c->final_norm && c->pool == PV_POOL_TOKEN) {
        TRY(cu_layernorm_forward(m->pooled, m->lnf_mean, m->lnf_rstd, x, m->P.lnf_w, m->P.lnf_b,
                                 B, C, c->ln_eps, (size_t)T * C, s));
    } else if (c->final_norm) {
        TRY(cu_layernorm_forward(m->lnf_all, m->lnf_mean, m->lnf_rstd, x, m->P.lnf_w, m->P.lnf_b,
                                 B * T, C, c->ln_eps, C, s));
        TRY(cu_pool_tokens(m->pooled, m->lnf_all, B, T, C, c->pool, s));
    } else {
        TRY(cu_pool_tokens(m->pooled, x, B, T, C, c->pool, s));
    }
    if (c->fc_norm)
        TRY(cu_layernorm_forward(m->fcn, m->fcn_mean, m->fcn_rstd, m->pooled, m->P.fcn_w,
                                 m->P.fcn_b, B, C, c->ln_eps, C, s));
    return cu_matmul_forward(cm, m->logits, head_input(m), m->P.head_w, m->P.head_b, NULL, B, C,
                             m->K);
}

static int head_backward(pv_cuda_model *cm, const float *dlogits, const float *xL, int B) {
    pv_model *m = &cm->m;
    const pv_config *c = &m->cfg;
    cudaStream_t s = STREAM(cm);
    int T = m->T, C = m->C;
    size_t btc = (size_t)B * T * C;
    float *d_in = m->d_pool, *d_pooled = m->d_pool + (size_t)B * C;
    TRY(cu_matmul_backward(cm, d_in, m->G.head_w, m->G.head_b, dlogits, head_input(m),
                           m->P.head_w, B, C, m->K, 0));
    if (c->fc_norm) {
        PV_CUDA_CHECK(cudaMemsetAsync(d_pooled, 0, sizeof(float) * B * C, s));
        TRY(cu_layernorm_backward(d_pooled, m->G.fcn_w, m->G.fcn_b, d_in, m->pooled, m->P.fcn_w,
                                  m->fcn_mean, m->fcn_rstd, B, C, C, C, cm->scratch, s));
    } else {
        d_pooled = d_in;
    }
    if (c->pool == PV_POOL_TOKEN && c->final_norm) {
        PV_CUDA_CHECK(cudaMemsetAsync(m->d_x, 0, sizeof(float) * btc, s));
        return cu_layernorm_backward(m->d_x, m->G.lnf_w, m->G.lnf_b, d_pooled, xL, m->P.lnf_w,
                                     m->lnf_mean, m->lnf_rstd, B, C, (size_t)T * C,
                                     (size_t)T * C, cm->scratch, s);
    }
    if (!c->final_norm) return cu_pool_backward(m->d_x, d_pooled, B, T, C, c->pool, s);
    /* average pooling after the final norm: gradient per token, then through the norm */
    TRY(cu_pool_backward(m->d_buf, d_pooled, B, T, C, c->pool, s));
    PV_CUDA_CHECK(cudaMemsetAsync(m->d_x, 0, sizeof(float) * btc, s));
    return cu_layernorm_backward(m->d_x, m->G.lnf_w, m->G.lnf_b, m->d_buf, xL, m->P.lnf_w,
                                 m->lnf_mean, m->lnf_rstd, B * T, C, C, C, cm->scratch, s);
}

/* ---- forward ---------------------------------------------------------------------------------- */
extern "C" int pvc_forward(pv_cuda_model *cm, const void *images, int is_u8, int nhwc,
                           const float *scale, const float *shift, int B, float *logits_host) {
    pv_model *m = &cm->m;
    if (B <= 0 || B > m->max_batch)
        return pv_set_error(PV_ERR_VALUE, "batch of %d images does not fit: this model was "
                            "allocated for at most %d (max_batch)", B, m->max_batch);
    const pv_config *c = &m->cfg;
    cudaStream_t s = STREAM(cm);
    int T = m->T, C = m->C, H = m->H, N = m->N, Cin = c->in_chans;
    size_t BT = (size_t)B * T, img = (size_t)Cin * c->img_size * c->img_size;
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    m->last_batch = 0;

    /* upload and normalise on the device */
    PV_CUDA_CHECK(cudaMemcpyAsync(cm->images_raw, images, B * img * (is_u8 ? 1 : sizeof(float)),
                                  cudaMemcpyHostToDevice, s));
    PV_CUDA_CHECK(cudaMemcpyAsync(cm->norm, scale, Cin * sizeof(float), cudaMemcpyHostToDevice, s));
    PV_CUDA_CHECK(
        cudaMemcpyAsync(cm->norm + Cin, shift, Cin * sizeof(float), cudaMemcpyHostToDevice, s));
    if (is_u8)
        TRY(cu_images_u8(cm->images, (const uint8_t *)cm->images_raw, cm->norm, cm->norm + Cin, B,
                         Cin, c->img_size, nhwc, s));
    else
        TRY(cu_images_f32(cm->images, (const float *)cm->images_raw, cm->norm, cm->norm + Cin, B,
                          Cin, c->img_size, s));

    PROF(cm, PV_PROF_EMBED, {
        TRY(cu_patch_im2col(m->patches, cm->images, B, Cin, c->img_size, c->patch_size, s));
        TRY(cu_matmul_forward(cm, m->d_buf, m->patches, m->P.pe_w, m->P.pe_b, NULL, B * N,
                              m->patch_dim, C));
        TRY(cu_tokens_assemble(m->x0, m->d_buf, m->P.cls, m->P.pos, B, T, C, s));
    });

    /* Each residual add is fused into the LayerNorm that reads it: proj's bias + residual into
     * norm2, fc2's into the next block's norm1 (the last fc2's into a plain bias kernel). */
    PROF(cm, PV_PROF_LN, TRY(cu_layernorm_forward(m->blk[0].ln1, m->blk[0].ln1_mean,
                                                  m->blk[0].ln1_rstd, m->x0, m->P.blk[0].ln1_w,
                                                  m->P.blk[0].ln1_b, (int)BT, C, c->ln_eps, C, s)));
    const float *x = m->x0;
    for (int l = 0; l < c->depth; l++) {
        pv_block_acts *a = &m->blk[l];
        pv_block_params *p = &m->P.blk[l];
        PROF(cm, PV_PROF_QKV, TRY(cu_matmul_forward(cm, a->qkv, a->ln1, p->qkv_w, p->qkv_b, NULL,
                                                    (int)BT, C, 3 * C)));
        PROF(cm, PV_PROF_ATT, TRY(cu_attention_forward(cm, a->attn_y, a->att, a->qkv, B)));
        PROF(cm, PV_PROF_PROJ, TRY(cu_matmul_forward(cm, a->x_mid, a->attn_y, p->proj_w, NULL,
                                                     NULL, (int)BT, C, C)));
        PROF(cm, PV_PROF_LN, TRY(cu_residual_layernorm_forward(
                                 a->x_mid, a->ln2, a->ln2_mean, a->ln2_rstd, p->proj_b, x,
                                 p->ln2_w, p->ln2_b, (int)BT, C, c->ln_eps, s)));
        /* fc1 without its bias: the bias is added by the activation kernel (one pass) */
        PROF(cm, PV_PROF_FC1, TRY(cu_matmul_forward(cm, a->h, a->ln2, p->fc1_w, NULL, NULL,
                                                    (int)BT, C, H)));
        PROF(cm, PV_PROF_ACT, {
            if (c->act[l] == PV_ACT_GELU)
                TRY(cu_bias_gelu_forward(a->a, a->h, p->fc1_b, BT, H, c->gelu_tanh, s));
            else
                TRY(cu_bias_poly_forward(a->a, a->h, p->fc1_b, p->pa, p->pb, p->pc, p->ps,
                                         c->poly_width[l], BT, H, s));
        });
        PROF(cm, PV_PROF_FC2, TRY(cu_matmul_forward(cm, a->x_out, a->a, p->fc2_w, NULL, NULL,
                                                    (int)BT, H, C)));
        if (l + 1 < c->depth) {
            pv_block_acts *na = &m->blk[l + 1];
            pv_block_params *np = &m->P.blk[l + 1];
            PROF(cm, PV_PROF_LN, TRY(cu_residual_layernorm_forward(
                                     a->x_out, na->ln1, na->ln1_mean, na->ln1_rstd, p->fc2_b,
                                     a->x_mid, np->ln1_w, np->ln1_b, (int)BT, C, c->ln_eps, s)));
        } else {
            PROF(cm, PV_PROF_FC2, TRY(cu_bias_residual(a->x_out, p->fc2_b, a->x_mid, (int)BT, C,
                                                       s)));
        }
        x = a->x_out;
    }
    PROF(cm, PV_PROF_HEAD, TRY(head_forward(cm, x, B)));
    size_t lb = (size_t)B * m->K * sizeof(float);
    PV_CUDA_CHECK(cudaMemcpyAsync(cm->host_pinned, m->logits, lb, cudaMemcpyDeviceToHost, s));
    PV_CUDA_CHECK(cudaStreamSynchronize(s));
    memcpy(logits_host, cm->host_pinned, lb);
    m->last_batch = B;
    return PV_OK;
}

extern "C" int pvc_preact(pv_cuda_model *cm, int l, float *host) {
    pv_model *m = &cm->m;
    if (l < 0 || l >= m->cfg.depth)
        return pv_set_error(PV_ERR_VALUE, "block %d out of range for depth %d", l, m->cfg.depth);
    if (!m->last_batch)
        return pv_set_error(PV_ERR_RUNTIME, "no forward has run yet, so there is nothing to capture");
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    PV_CUDA_CHECK(cudaMemcpyAsync(host, m->blk[l].h,
                                  sizeof(float) * m->last_batch * m->T * m->H,
                                  cudaMemcpyDeviceToHost, STREAM(cm)));
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    return PV_OK;
}

/* ---- backward --------------------------------------------------------------------------------- */
static int backward(pv_cuda_model *cm, int B) {
    pv_model *m = &cm->m;
    const pv_config *c = &m->cfg;
    cudaStream_t s = STREAM(cm);
    int T = m->T, C = m->C, H = m->H, N = m->N;
    size_t BT = (size_t)B * T;
    const float *xL = m->blk[c->depth - 1].x_out;
    PROF(cm, PV_PROF_HEAD_BWD, TRY(head_backward(cm, cm->dlogits, xL, B)));
    for (int l = c->depth - 1; l >= 0; l--) {
        pv_block_acts *a = &m->blk[l];
        pv_block_params *p = &m->P.blk[l], *g = &m->G.blk[l];
        const float *x_in = l ? m->blk[l - 1].x_out : m->x0;
        PROF(cm, PV_PROF_FC2_BWD, TRY(cu_matmul_backward(cm, m->d_h, g->fc2_w, g->fc2_b, m->d_x,
                                                         a->a, p->fc2_w, (int)BT, H, C, 0)));
        PROF(cm, PV_PROF_ACT_BWD, {
            if (c->act[l] == PV_ACT_GELU)
                TRY(cu_gelu_backward(m->d_h, a->h, m->d_h, BT * H, c->gelu_tanh, s));
            else
                TRY(cu_poly_backward(m->d_h, g->pa, g->pb, g->pc, g->ps, a->h, m->d_h, p->pa,
                                     p->pb, p->pc, p->ps, c->poly_width[l], BT, H, cm->dscratch,
                                     s));
        });
        PROF(cm, PV_PROF_FC1_BWD, TRY(cu_matmul_backward(cm, m->d_buf, g->fc1_w, g->fc1_b, m->d_h,
                                                         a->ln2, p->fc1_w, (int)BT, C, H, 0)));
        PROF(cm, PV_PROF_LN_BWD,
             TRY(cu_layernorm_backward(m->d_x, g->ln2_w, g->ln2_b, m->d_buf, a->x_mid, p->ln2_w,
                                       a->ln2_mean, a->ln2_rstd, (int)BT, C, C, C, cm->scratch,
                                       s)));
        PROF(cm, PV_PROF_PROJ_BWD, TRY(cu_matmul_backward(cm, m->d_buf, g->proj_w, g->proj_b,
                                                          m->d_x, a->attn_y, p->proj_w, (int)BT,
                                                          C, C, 0)));
        PROF(cm, PV_PROF_ATT_BWD,
             TRY(cu_attention_backward(cm, m->d_qkv, m->d_buf, a->att, a->qkv, B)));
        PROF(cm, PV_PROF_QKV_BWD, TRY(cu_matmul_backward(cm, m->d_buf, g->qkv_w, g->qkv_b,
                                                         m->d_qkv, a->ln1, p->qkv_w, (int)BT, C,
                                                         3 * C, 0)));
        PROF(cm, PV_PROF_LN_BWD,
             TRY(cu_layernorm_backward(m->d_x, g->ln1_w, g->ln1_b, m->d_buf, x_in, p->ln1_w,
                                       a->ln1_mean, a->ln1_rstd, (int)BT, C, C, C, cm->scratch,
                                       s)));
    }
    PROF(cm, PV_PROF_EMBED_BWD, {
        TRY(cu_tokens_backward(m->G.cls, m->G.pos, m->d_buf, m->d_x, B, T, C, s));
        TRY(cu_matmul_backward(cm, NULL, m->G.pe_w, m->G.pe_b, m->d_buf, m->patches, m->P.pe_w,
                               B * N, m->patch_dim, C, 0));
    });
    return PV_OK;
}

extern "C" int pvc_backward(pv_cuda_model *cm, const float *dlogits_host, int B) {
    pv_model *m = &cm->m;
    if (m->last_batch == 0)
        return pv_set_error(PV_ERR_RUNTIME, "backward needs a forward on the same batch first "
                            "(the saved activations are not valid)");
    if (B != m->last_batch)
        return pv_set_error(PV_ERR_VALUE, "dlogits has batch %d but the last forward had %d", B,
                            m->last_batch);
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    size_t lb = (size_t)B * m->K * sizeof(float);
    memcpy(cm->host_pinned, dlogits_host, lb);
    PV_CUDA_CHECK(cudaMemcpyAsync(cm->dlogits, cm->host_pinned, lb, cudaMemcpyHostToDevice,
                                  STREAM(cm)));
    TRY(backward(cm, B));
    /* errors of the kernels surface here, before the caller reads or steps on the gradients */
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    return PV_OK;
}

/* ---- optimizer --------------------------------------------------------------------------------- */
static pv_cuda_hp to_cuda_hp(const pv_group_hp hp[4], double bc1) {
    pv_cuda_hp h;
    for (int i = 0; i < 4; i++) {
        /* the CPU engine's step size lr / bc1 is formed in double and rounded once; so here */
        h.lr[i] = (float)(hp[i].lr / bc1);
        h.decay[i] = 1.0f - hp[i].lr * hp[i].weight_decay;
        h.frozen[i] = hp[i].frozen;
    }
    return h;
}

extern "C" int pvc_grad_norm(pv_cuda_model *cm, const pv_group_hp hp[4], double *out) {
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    pv_cuda_hp h = to_cuda_hp(hp, 1.0);
    double *result = cm->dscratch + cm->dscratch_doubles - 1;
    TRY(cu_grad_sumsq(result, cm->m.grads, cm->group_of, cm->m.n_params, h, cm->dscratch,
                      STREAM(cm)));
    double ss = 0.0;
    PV_CUDA_CHECK(cudaMemcpyAsync(&ss, result, sizeof(double), cudaMemcpyDeviceToHost, STREAM(cm)));
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    *out = sqrt(ss);
    return PV_OK;
}

extern "C" int pvc_grad_scale(pv_cuda_model *cm, const pv_group_hp hp[4], float scale) {
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    TRY(cu_grad_scale(cm->m.grads, cm->group_of, cm->m.n_params, to_cuda_hp(hp, 1.0), scale,
                      STREAM(cm)));
    return PV_OK;
}

extern "C" int pvc_adamw_step(pv_cuda_model *cm, const pv_group_hp hp[4], float beta1,
                              float beta2, float eps, int t) {
    PV_CUDA_CHECK(cudaSetDevice(cm->device));
    double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
    pv_model *m = &cm->m;
    /* one fused kernel over the whole buffer; lr already divided by bc1, so bc1 = 1 here */
    TRY(cu_adamw(m->params, m->grads, m->m, m->v, cm->group_of, m->n_params, to_cuda_hp(hp, bc1),
                 beta1, beta2, eps, 1.0f, (float)sqrt(bc2), STREAM(cm)));
    PV_CUDA_CHECK(cudaStreamSynchronize(STREAM(cm)));
    return PV_OK;
}
