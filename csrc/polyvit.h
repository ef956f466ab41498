/* polyvit.h: the one internal C interface of the engine.
 *
 * The engine holds a fixed ViT (timm's layout) the llm.c way: one parameter buffer, one
 * gradient buffer, two AdamW moment buffers, and activations allocated once for a maximum
 * batch. Every op is a plain function over float buffers; each forward has its backward.
 * Engine functions return 0 on success and a negative status on failure, leaving a message in
 * pv_last_error(); they never exit, abort or print. module.c turns the status into a Python
 * exception.
 */
#ifndef POLYVIT_H
#define POLYVIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------------------------ */
enum {
    PV_OK = 0,
    PV_ERR_VALUE = -1,   /* bad argument (ValueError) */
    PV_ERR_NOMEM = -2,   /* allocation failed (MemoryError) */
    PV_ERR_RUNTIME = -3, /* engine state problem (RuntimeError) */
};

/* message of the last failure in this thread */
const char *pv_last_error(void);
int pv_set_error(int code, const char *fmt, ...);

/* ---- config ------------------------------------------------------------------------------ */
enum { PV_ACT_GELU = 0, PV_ACT_POLY = 1 };
enum { PV_POOL_TOKEN = 0, PV_POOL_AVG = 1 };

#define PV_MAX_DEPTH 256

typedef struct {
    int img_size, patch_size, in_chans;
    int embed_dim, depth, num_heads, hidden, num_classes;
    float ln_eps;
    int gelu_tanh;  /* GELU blocks use the tanh approximation instead of exact erf */
    int qkv_bias;   /* attention qkv projection has a bias */
    int final_norm; /* LayerNorm on the tokens before pooling (timm's `norm`) */
    int pool;       /* PV_POOL_TOKEN (class token) or PV_POOL_AVG (mean of the patch tokens) */
    int fc_norm;    /* LayerNorm after pooling (timm's `fc_norm`) */
    int act[PV_MAX_DEPTH];        /* PV_ACT_GELU or PV_ACT_POLY */
    int poly_width[PV_MAX_DEPTH]; /* 0 for GELU, 1 (per block) or hidden (per channel) */
} pv_config;

/* ---- parameter layout -------------------------------------------------------------------- */
enum { PV_GROUP_DECAY = 0, PV_GROUP_NO_DECAY = 1, PV_GROUP_EMBED = 2, PV_GROUP_POLY = 3 };

#define PV_NAME_MAX 64
typedef struct {
    char name[PV_NAME_MAX];
    int ndim;
    int shape[4];
    size_t offset; /* in floats, 16-float aligned */
    size_t size;   /* in floats */
    int group;
} pv_tensor;

/* pointers into the parameter (or gradient) buffer, per block */
typedef struct {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b, *ln2_w, *ln2_b;
    float *fc1_w, *fc1_b, *pa, *pb, *pc, *ps, *fc2_w, *fc2_b;
} pv_block_params;

typedef struct {
    float *cls, *pos, *pe_w, *pe_b;
    pv_block_params blk[PV_MAX_DEPTH];
    float *lnf_w, *lnf_b, *fcn_w, *fcn_b, *head_w, *head_b; /* NULL where absent */
} pv_params;

/* saved activations of one block (for a maximum batch) */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd; /* (B,T,C), (B,T), (B,T) */
    float *qkv;                       /* (B,T,3C) */
    float *att;                       /* (B,NH,T,T) softmax probabilities */
    float *attn_y;                    /* (B,T,C) attention output before proj */
    float *x_mid;                     /* (B,T,C) residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *h;                         /* (B,T,H) fc1 output = activation input */
    float *a;                         /* (B,T,H) activation output */
    float *x_out;                     /* (B,T,C) residual after MLP */
} pv_block_acts;

typedef struct {
    pv_config cfg;
    int T, N, C, H, NH, K, patch_dim; /* tokens, patches, width, hidden, heads, classes, Cin*p*p */
    /* parameters and optimizer state: one buffer each */
    int n_tensors;
    pv_tensor *tensors;
    size_t n_params; /* floats in each buffer, including alignment padding */
    float *params, *grads, *m, *v;
    pv_params P, G;
    /* activations */
    int max_batch;
    int att_ld;     /* row stride of the saved attention probabilities: T (the CUDA engine may
                     * pad it, so that cuBLAS sees 16-byte-aligned rows) */
    int last_batch; /* batch of the last forward whose activations are intact; 0 = none */
    float *act_mem;
    size_t act_floats;
    float *patches; /* (B*N, patch_dim) im2col */
    float *x0;      /* (B,T,C) embedded tokens */
    pv_block_acts blk[PV_MAX_DEPTH];
    /* the head's input: [final norm] -> pool -> [fc_norm] */
    float *lnf_all;                   /* (B,T,C) final norm of every token (avg pool + norm only) */
    float *lnf_mean, *lnf_rstd;       /* (B*T) statistics of the final norm */
    float *pooled;                    /* (B,C) pooled features (normed class token for token pool) */
    float *fcn, *fcn_mean, *fcn_rstd; /* (B,C), (B), (B) fc_norm of the pooled features */
    float *logits;                    /* (B,K) */
    /* backward scratch */
    float *d_x, *d_buf, *d_qkv, *d_h, *d_att; /* d_att: per thread (T*T) */
    float *d_pool;                            /* (2*B*C) gradients at the head input and pool */
    double *d_poly;                           /* (3*H) poly coefficient reductions */
    int d_att_threads;
} pv_model;

int pv_config_check(const pv_config *c);
/* layout.c: dimensions, the parameter table and the activation count for cfg (no buffers) */
int pv_layout_init(pv_model *m, const pv_config *cfg, int max_batch);
/* the named pointers of one buffer (params or grads; host or device memory) */
void pv_bind_params(pv_params *P, float *base, const pv_model *m);
/* carve the activation arena at base (NULL: only count); returns its size in floats */
size_t pv_carve_acts(pv_model *m, float *base);
int pv_model_create(pv_model **out, const pv_config *cfg, int max_batch);
void pv_model_free(pv_model *m);
/* forward on B images (B <= max_batch), NCHW float32; logits into m->logits */
int pv_model_forward(pv_model *m, const float *images, int B);
/* backward from dlogits (B,K) of the last forward; overwrites m->grads */
int pv_model_backward(pv_model *m, const float *dlogits, int B);

/* ---- optional per-op timing --------------------------------------------------------------- */
enum {
    PV_PROF_EMBED, PV_PROF_LN, PV_PROF_QKV, PV_PROF_ATT, PV_PROF_PROJ, PV_PROF_FC1, PV_PROF_ACT,
    PV_PROF_FC2, PV_PROF_HEAD, PV_PROF_LN_BWD, PV_PROF_QKV_BWD, PV_PROF_ATT_BWD,
    PV_PROF_PROJ_BWD, PV_PROF_FC1_BWD, PV_PROF_ACT_BWD, PV_PROF_FC2_BWD, PV_PROF_HEAD_BWD,
    PV_PROF_EMBED_BWD, PV_PROF_N
};
extern const char *const pv_prof_names[PV_PROF_N]; /* layout.c */
void pv_profile_enable(int on);
int pv_profile_read(const char **names, double *sec, int reset);

/* ---- threads -------------------------------------------------------------------------- */
void pv_set_num_threads(int n);
int pv_get_num_threads(void);

/* ---- ops (cpu/) ------------------------------------------------------------------------ */
/* GEMMs. out(M,N) = inp(M,K) @ w(N,K)^T + bias(N) [+ residual(M,N)]; parallel over rows. */
void matmul_forward(float *out, const float *inp, const float *w, const float *bias,
                    const float *residual, int M, int K, int N);
/* dinp(M,K) = dout @ w (if dinp; accumulate into dinp when accumulate), dw(N,K) = dout^T @ inp,
 * dbias(N) = column sums of dout (if dbias). */
void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                     const float *w, int M, int K, int N, int accumulate);

void layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *w,
                       const float *b, int rows, int C, float eps, size_t in_stride);
/* dinp += dLN/dinp; dw, db overwritten */
void layernorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, const float *mean, const float *rstd, int rows, int C,
                        size_t in_stride, size_t dinp_stride);

void attention_forward(float *y, float *att, const float *qkv, int B, int T, int C, int NH);
void attention_backward(float *dqkv, float *scratch, const float *dy, const float *att,
                        const float *qkv, int B, int T, int C, int NH);

/* activation over rows of width H (in place allowed for out == inp? no: separate buffers) */
/* GELU, exact erf form, or the tanh approximation when tanh_form */
void gelu_forward(float *out, const float *inp, size_t n, int tanh_form);
void gelu_backward(float *dinp, const float *inp, const float *dout, size_t n, int tanh_form); /* dinp may == dout */
void poly_forward(float *out, const float *inp, const float *a, const float *b, const float *c,
                  const float *s, int width, size_t rows, int H);
/* dinp may alias dout; da, db, dc, ds (width) overwritten */
void poly_backward(float *dinp, float *da, float *db, float *dc, float *ds, const float *inp,
                   const float *dout, const float *a, const float *b, const float *c,
                   const float *s, int width, size_t rows, int H, double *acc);

void patch_im2col(float *patches, const float *images, int B, int Cin, int img, int p);
void tokens_assemble(float *x, const float *patch_out, const float *cls, const float *pos, int B,
                     int T, int C);
void tokens_backward(float *dcls, float *dpos, float *dpatch_out, const float *dx, int B, int T,
                     int C);

/* vectorised math used by the ops */
void pv_softmax_rows(float *x, int rows, int n);
float pv_erf_scalar(float x);

/* ---- losses (logits (B,K)); each writes dlogits of the mean loss, returns the loss ------- */
/* target: labels (int64, B) if labels != NULL, else soft targets (B,K) */
double loss_cross_entropy(float *dlogits, const float *logits, const int64_t *labels,
                          const float *soft, int B, int K, float smoothing);
double loss_mse(float *dlogits, const float *logits, const float *teacher, int B, int K);
double loss_kl(float *dlogits, const float *logits, const float *teacher, int B, int K, float T);

/* ---- optimizer ------------------------------------------------------------------------- */
typedef struct {
    float lr, weight_decay;
    int frozen;
} pv_group_hp;

/* global L2 norm of the gradients of non-frozen groups */
double pv_grad_norm(const pv_model *m, const pv_group_hp hp[4]);
void pv_grad_scale(pv_model *m, const pv_group_hp hp[4], float scale);
/* one AdamW step (t = step number, from 1) */
void pv_adamw_step(pv_model *m, const pv_group_hp hp[4], float beta1, float beta2, float eps,
                   int t);

#ifdef __cplusplus
}
#endif
#endif
