/* The whole model: parameter layout, buffers, forward and backward (the llm.c way). */
#define _POSIX_C_SOURCE 200112L /* posix_memalign, clock_gettime */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../polyvit.h"

#define ALIGN_FLOATS 16 /* 64-byte alignment of every tensor in the buffers */

/* ---- optional per-op timing (polyvit._C.profile): off unless asked for --------------------- */
#include <time.h>
static int prof_on = 0;
static double prof_sec[PV_PROF_N];
static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}
#define PROF(cat, stmt)                                  \
    do {                                                 \
        double t0_ = prof_on ? now() : 0.0;              \
        stmt;                                            \
        if (prof_on) prof_sec[cat] += now() - t0_;       \
    } while (0)

void pv_profile_enable(int on) { prof_on = on; }
int pv_profile_read(const char **names, double *sec, int reset) {
    for (int i = 0; i < PV_PROF_N; i++) {
        names[i] = pv_prof_names[i];
        sec[i] = prof_sec[i];
        if (reset) prof_sec[i] = 0.0;
    }
    return PV_PROF_N;
}

static float *aligned_floats(size_t n) {
    void *p = NULL;
    if (n == 0) n = 1;
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    if (posix_memalign(&p, 64, bytes)) return NULL;
    memset(p, 0, bytes);
    return (float *)p;
}

void pv_model_free(pv_model *m) {
    if (!m) return;
    free(m->tensors);
    free(m->params);
    free(m->grads);
    free(m->m);
    free(m->v);
    free(m->act_mem);
    free(m->d_att);
    free(m->d_poly);
    free(m);
}

static int ensure_att_scratch(pv_model *m) {
    int nt = pv_get_num_threads();
    if (m->d_att && m->d_att_threads >= nt) return PV_OK;
    float *s = aligned_floats((size_t)nt * m->T * m->T);
    if (!s)
        return pv_set_error(PV_ERR_NOMEM, "out of memory for attention scratch (%d threads)", nt);
    free(m->d_att);
    m->d_att = s;
    m->d_att_threads = nt;
    return PV_OK;
}

int pv_model_create(pv_model **out, const pv_config *cfg, int max_batch) {
    *out = NULL;
    pv_model *m = (pv_model *)calloc(1, sizeof(pv_model));
    if (!m) return pv_set_error(PV_ERR_NOMEM, "out of memory allocating the model");
    int rc = pv_layout_init(m, cfg, max_batch);
    if (rc) {
        pv_model_free(m);
        return rc;
    }
    m->params = aligned_floats(m->n_params);
    m->grads = aligned_floats(m->n_params);
    m->m = aligned_floats(m->n_params);
    m->v = aligned_floats(m->n_params);
    if (!m->params || !m->grads || !m->m || !m->v) goto nomem;
    pv_bind_params(&m->P, m->params, m);
    pv_bind_params(&m->G, m->grads, m);

    m->act_mem = aligned_floats(m->act_floats);
    if (!m->act_mem) {
        double gib = m->act_floats * 4.0 / (1 << 30);
        pv_model_free(m);
        return pv_set_error(PV_ERR_NOMEM,
                            "out of memory allocating activations for max_batch %d (%.2f GiB); "
                            "use a smaller max_batch",
                            max_batch, gib);
    }
    pv_carve_acts(m, m->act_mem);
    m->d_poly = (double *)calloc((size_t)3 * m->H, sizeof(double));
    if (!m->d_poly || ensure_att_scratch(m)) goto nomem;
    *out = m;
    return PV_OK;
nomem:
    pv_model_free(m);
    return pv_set_error(PV_ERR_NOMEM, "out of memory allocating the model's buffers");
}

/* ---- the head: [final norm] -> pool -> [fc_norm] -> linear ---------------------------------- */
/* pool rows of src (B,T,C): the class token, or the mean of the patch tokens */
static void pool_tokens(float *out, const float *src, int B, int T, int C, int pool) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *xb = src + (size_t)b * T * C;
        float *o = out + (size_t)b * C;
        if (pool == PV_POOL_TOKEN) {
            memcpy(o, xb, sizeof(float) * C);
            continue;
        }
        memset(o, 0, sizeof(float) * C);
        for (int t = 1; t < T; t++)
            for (int j = 0; j < C; j++) o[j] += xb[(size_t)t * C + j];
        float inv = 1.0f / (T - 1);
        for (int j = 0; j < C; j++) o[j] *= inv;
    }
}

static const float *head_input(const pv_model *m) { return m->cfg.fc_norm ? m->fcn : m->pooled; }

static void head_forward(pv_model *m, const float *x, int B) {
    const pv_config *c = &m->cfg;
    int T = m->T, C = m->C;
    if (c->final_norm && c->pool == PV_POOL_TOKEN) {
        /* only the class tokens are pooled: normalise just those rows (stride T*C) */
        layernorm_forward(m->pooled, m->lnf_mean, m->lnf_rstd, x, m->P.lnf_w, m->P.lnf_b, B, C,
                          c->ln_eps, (size_t)T * C);
    } else if (c->final_norm) {
        layernorm_forward(m->lnf_all, m->lnf_mean, m->lnf_rstd, x, m->P.lnf_w, m->P.lnf_b, B * T,
                          C, c->ln_eps, C);
        pool_tokens(m->pooled, m->lnf_all, B, T, C, c->pool);
    } else {
        pool_tokens(m->pooled, x, B, T, C, c->pool);
    }
    if (c->fc_norm)
        layernorm_forward(m->fcn, m->fcn_mean, m->fcn_rstd, m->pooled, m->P.fcn_w, m->P.fcn_b, B,
                          C, c->ln_eps, C);
    matmul_forward(m->logits, head_input(m), m->P.head_w, m->P.head_b, NULL, B, C, m->K);
}

/* the gradient enters the residual stream d_x (zeroed here) through the pooled tokens */
static void head_backward(pv_model *m, const float *dlogits, const float *xL, int B) {
    const pv_config *c = &m->cfg;
    int T = m->T, C = m->C;
    float *d_in = m->d_pool, *d_pooled = m->d_pool + (size_t)B * C;
    matmul_backward(d_in, m->G.head_w, m->G.head_b, dlogits, head_input(m), m->P.head_w, B, C,
                    m->K, 0);
    if (c->fc_norm) {
        memset(d_pooled, 0, sizeof(float) * B * C);
        layernorm_backward(d_pooled, m->G.fcn_w, m->G.fcn_b, d_in, m->pooled, m->P.fcn_w,
                           m->fcn_mean, m->fcn_rstd, B, C, C, C);
    } else {
        d_pooled = d_in;
    }
    memset(m->d_x, 0, sizeof(float) * (size_t)B * T * C);
    if (c->pool == PV_POOL_TOKEN) {
        if (c->final_norm)
            layernorm_backward(m->d_x, m->G.lnf_w, m->G.lnf_b, d_pooled, xL, m->P.lnf_w,
                               m->lnf_mean, m->lnf_rstd, B, C, (size_t)T * C, (size_t)T * C);
        else
            for (int b = 0; b < B; b++)
                memcpy(m->d_x + (size_t)b * T * C, d_pooled + (size_t)b * C, sizeof(float) * C);
        return;
    }
    /* average pooling: every patch token gets d_pooled / (T-1); the class token nothing */
    float *d_tok = c->final_norm ? m->d_buf : m->d_x;
    float inv = 1.0f / (T - 1);
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        float *db = d_tok + (size_t)b * T * C;
        memset(db, 0, sizeof(float) * C);
        for (int t = 1; t < T; t++)
            for (int j = 0; j < C; j++) db[(size_t)t * C + j] = d_pooled[(size_t)b * C + j] * inv;
    }
    if (c->final_norm)
        layernorm_backward(m->d_x, m->G.lnf_w, m->G.lnf_b, d_tok, xL, m->P.lnf_w, m->lnf_mean,
                           m->lnf_rstd, B * T, C, C, C);
}

/* ---- forward --------------------------------------------------------------------------- */
int pv_model_forward(pv_model *m, const float *images, int B) {
    if (B <= 0 || B > m->max_batch)
        return pv_set_error(PV_ERR_VALUE, "batch of %d images does not fit: this model was "
                            "allocated for at most %d (max_batch)", B, m->max_batch);
    const pv_config *c = &m->cfg;
    int T = m->T, C = m->C, H = m->H, NH = m->NH, N = m->N;
    size_t BT = (size_t)B * T;
    m->last_batch = 0;

    /* patch embedding: im2col + GEMM into d_buf (as scratch), then tokens + pos */
    PROF(PV_PROF_EMBED, {
        patch_im2col(m->patches, images, B, c->in_chans, c->img_size, c->patch_size);
        matmul_forward(m->d_buf, m->patches, m->P.pe_w, m->P.pe_b, NULL, B * N, m->patch_dim, C);
        tokens_assemble(m->x0, m->d_buf, m->P.cls, m->P.pos, B, T, C);
    });

    const float *x = m->x0;
    for (int l = 0; l < c->depth; l++) {
        pv_block_acts *a = &m->blk[l];
        pv_block_params *p = &m->P.blk[l];
        PROF(PV_PROF_LN, layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, x, p->ln1_w, p->ln1_b,
                                           (int)BT, C, c->ln_eps, C));
        PROF(PV_PROF_QKV, matmul_forward(a->qkv, a->ln1, p->qkv_w, p->qkv_b, NULL, (int)BT, C, 3 * C));
        PROF(PV_PROF_ATT, attention_forward(a->attn_y, a->att, a->qkv, B, T, C, NH));
        PROF(PV_PROF_PROJ, matmul_forward(a->x_mid, a->attn_y, p->proj_w, p->proj_b, x, (int)BT, C, C));
        PROF(PV_PROF_LN, layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->x_mid, p->ln2_w,
                                           p->ln2_b, (int)BT, C, c->ln_eps, C));
        PROF(PV_PROF_FC1, matmul_forward(a->h, a->ln2, p->fc1_w, p->fc1_b, NULL, (int)BT, C, H));
        PROF(PV_PROF_ACT, {
            if (c->act[l] == PV_ACT_GELU)
                gelu_forward(a->a, a->h, BT * H, c->gelu_tanh);
            else
                poly_forward(a->a, a->h, p->pa, p->pb, p->pc, p->ps, c->poly_width[l], BT, H);
        });
        PROF(PV_PROF_FC2, matmul_forward(a->x_out, a->a, p->fc2_w, p->fc2_b, a->x_mid, (int)BT, H, C));
        x = a->x_out;
    }
    PROF(PV_PROF_HEAD, head_forward(m, x, B));
    m->last_batch = B;
    return PV_OK;
}

/* ---- backward -------------------------------------------------------------------------- */
int pv_model_backward(pv_model *m, const float *dlogits, int B) {
    if (m->last_batch == 0)
        return pv_set_error(PV_ERR_RUNTIME, "backward needs a forward on the same batch first "
                            "(the saved activations are not valid)");
    if (B != m->last_batch)
        return pv_set_error(PV_ERR_VALUE, "dlogits has batch %d but the last forward had %d", B,
                            m->last_batch);
    int rc = ensure_att_scratch(m);
    if (rc) return rc;
    const pv_config *c = &m->cfg;
    int T = m->T, C = m->C, H = m->H, NH = m->NH, N = m->N;
    size_t BT = (size_t)B * T;
    const float *xL = c->depth ? m->blk[c->depth - 1].x_out : m->x0;

    PROF(PV_PROF_HEAD_BWD, head_backward(m, dlogits, xL, B));

    for (int l = c->depth - 1; l >= 0; l--) {
        pv_block_acts *a = &m->blk[l];
        pv_block_params *p = &m->P.blk[l], *g = &m->G.blk[l];
        const float *x_in = l ? m->blk[l - 1].x_out : m->x0;
        /* MLP: d_x is the gradient at x_out (and, by the residual, at x_mid) */
        PROF(PV_PROF_FC2_BWD,
             matmul_backward(m->d_h, g->fc2_w, g->fc2_b, m->d_x, a->a, p->fc2_w, (int)BT, H, C, 0));
        PROF(PV_PROF_ACT_BWD, {
            if (c->act[l] == PV_ACT_GELU)
                gelu_backward(m->d_h, a->h, m->d_h, BT * H, c->gelu_tanh);
            else
                poly_backward(m->d_h, g->pa, g->pb, g->pc, g->ps, a->h, m->d_h, p->pa, p->pb,
                              p->pc, p->ps, c->poly_width[l], BT, H, m->d_poly);
        });
        PROF(PV_PROF_FC1_BWD,
             matmul_backward(m->d_buf, g->fc1_w, g->fc1_b, m->d_h, a->ln2, p->fc1_w, (int)BT, C, H, 0));
        PROF(PV_PROF_LN_BWD, layernorm_backward(m->d_x, g->ln2_w, g->ln2_b, m->d_buf, a->x_mid,
                                                p->ln2_w, a->ln2_mean, a->ln2_rstd, (int)BT, C,
                                                C, C));
        /* attention: d_x is now the gradient at x_mid (and, by the residual, at x_in) */
        PROF(PV_PROF_PROJ_BWD, matmul_backward(m->d_buf, g->proj_w, g->proj_b, m->d_x, a->attn_y,
                                               p->proj_w, (int)BT, C, C, 0));
        PROF(PV_PROF_ATT_BWD,
             attention_backward(m->d_qkv, m->d_att, m->d_buf, a->att, a->qkv, B, T, C, NH));
        PROF(PV_PROF_QKV_BWD, matmul_backward(m->d_buf, g->qkv_w, g->qkv_b, m->d_qkv, a->ln1,
                                              p->qkv_w, (int)BT, C, 3 * C, 0));
        PROF(PV_PROF_LN_BWD, layernorm_backward(m->d_x, g->ln1_w, g->ln1_b, m->d_buf, x_in,
                                                p->ln1_w, a->ln1_mean, a->ln1_rstd, (int)BT, C,
                                                C, C));
    }
    /* embedding: position/class gradients, then the patch projection (no image gradient) */
    PROF(PV_PROF_EMBED_BWD, {
        tokens_backward(m->G.cls, m->G.pos, m->d_buf, m->d_x, B, T, C);
        matmul_backward(NULL, m->G.pe_w, m->G.pe_b, m->d_buf, m->patches, m->P.pe_w, B * N,
                        m->patch_dim, C, 0);
    });
    return PV_OK;
}
