/* The model's layout, shared by the CPU and CUDA engines: config checks, the parameter table
 * (names, shapes, offsets into the one buffer), the named pointers into a buffer and the carving
 * of the activation arena. Only host arithmetic here, so the same code lays out device memory. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "polyvit.h"

#define ALIGN_FLOATS 16 /* 64-byte alignment of every tensor in the buffers */

int pv_config_check(const pv_config *c) {
    if (c->img_size <= 0 || c->patch_size <= 0 || c->in_chans <= 0 || c->embed_dim <= 0 ||
        c->depth <= 0 || c->num_heads <= 0 || c->hidden <= 0 || c->num_classes <= 0)
        return pv_set_error(PV_ERR_VALUE, "every size in the config must be positive");
    if (c->depth > PV_MAX_DEPTH)
        return pv_set_error(PV_ERR_VALUE, "depth %d exceeds the engine's maximum of %d", c->depth,
                            PV_MAX_DEPTH);
    if (c->img_size % c->patch_size)
        return pv_set_error(PV_ERR_VALUE, "img_size %d is not a multiple of patch_size %d",
                            c->img_size, c->patch_size);
    if (c->embed_dim % c->num_heads)
        return pv_set_error(PV_ERR_VALUE, "embed_dim %d is not divisible by num_heads %d",
                            c->embed_dim, c->num_heads);
    if (!(c->ln_eps > 0.0f)) return pv_set_error(PV_ERR_VALUE, "ln_eps must be positive");
    if (c->pool != PV_POOL_TOKEN && c->pool != PV_POOL_AVG)
        return pv_set_error(PV_ERR_VALUE, "unknown pooling code %d", c->pool);
    if (c->pool == PV_POOL_AVG && c->img_size / c->patch_size < 1)
        return pv_set_error(PV_ERR_VALUE, "average pooling needs at least one patch");
    long long T = (long long)(c->img_size / c->patch_size) * (c->img_size / c->patch_size) + 1;
    if (T > 100000) return pv_set_error(PV_ERR_VALUE, "too many tokens (%lld)", T);
    for (int i = 0; i < c->depth; i++) {
        if (c->act[i] != PV_ACT_GELU && c->act[i] != PV_ACT_POLY)
            return pv_set_error(PV_ERR_VALUE, "block %d: unknown activation code %d", i, c->act[i]);
        int w = c->poly_width[i];
        if (c->act[i] == PV_ACT_GELU ? w != 0 : (w != 1 && w != c->hidden))
            return pv_set_error(PV_ERR_VALUE, "block %d: poly width %d must be 1 or %d", i, w,
                                c->hidden);
    }
    return PV_OK;
}

/* ---- layout ---------------------------------------------------------------------------- */
typedef struct {
    pv_tensor *t;
    int n, cap;
    size_t off;
} layout;

static void add(layout *L, int group, int ndim, int d0, int d1, int d2, int d3, const char *fmt,
                ...) {
    if (L->t && L->n < L->cap) {
        pv_tensor *t = &L->t[L->n];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->name, PV_NAME_MAX, fmt, ap);
        va_end(ap);
        int d[4] = {d0, d1, d2, d3};
        t->ndim = ndim;
        t->size = 1;
        for (int i = 0; i < 4; i++) {
            t->shape[i] = i < ndim ? d[i] : 1;
            if (i < ndim) t->size *= (size_t)d[i];
        }
        t->offset = L->off;
        t->group = group;
        L->off += (t->size + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS;
    }
    L->n++;
}

/* Same order and names as ViTConfig.param_specs() in polyvit/config.py. */
static void build_layout(layout *L, const pv_config *c) {
    int C = c->embed_dim, H = c->hidden, p = c->patch_size, K = c->num_classes;
    int T = (c->img_size / p) * (c->img_size / p) + 1;
    add(L, PV_GROUP_EMBED, 3, 1, 1, C, 0, "cls_token");
    add(L, PV_GROUP_EMBED, 3, 1, T, C, 0, "pos_embed");
    add(L, PV_GROUP_DECAY, 4, C, c->in_chans, p, p, "patch_embed.proj.weight");
    add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "patch_embed.proj.bias");
    for (int i = 0; i < c->depth; i++) {
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "blocks.%d.norm1.weight", i);
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "blocks.%d.norm1.bias", i);
        add(L, PV_GROUP_DECAY, 2, 3 * C, C, 0, 0, "blocks.%d.attn.qkv.weight", i);
        if (c->qkv_bias) add(L, PV_GROUP_NO_DECAY, 1, 3 * C, 0, 0, 0, "blocks.%d.attn.qkv.bias", i);
        add(L, PV_GROUP_DECAY, 2, C, C, 0, 0, "blocks.%d.attn.proj.weight", i);
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "blocks.%d.attn.proj.bias", i);
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "blocks.%d.norm2.weight", i);
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "blocks.%d.norm2.bias", i);
        add(L, PV_GROUP_DECAY, 2, H, C, 0, 0, "blocks.%d.mlp.fc1.weight", i);
        add(L, PV_GROUP_NO_DECAY, 1, H, 0, 0, 0, "blocks.%d.mlp.fc1.bias", i);
        if (c->act[i] == PV_ACT_POLY) {
            int w = c->poly_width[i];
            add(L, PV_GROUP_POLY, 1, w, 0, 0, 0, "blocks.%d.mlp.act.a", i);
            add(L, PV_GROUP_POLY, 1, w, 0, 0, 0, "blocks.%d.mlp.act.b", i);
            add(L, PV_GROUP_POLY, 1, w, 0, 0, 0, "blocks.%d.mlp.act.c", i);
            add(L, PV_GROUP_POLY, 1, w, 0, 0, 0, "blocks.%d.mlp.act.s", i);
        }
        add(L, PV_GROUP_DECAY, 2, C, H, 0, 0, "blocks.%d.mlp.fc2.weight", i);
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "blocks.%d.mlp.fc2.bias", i);
    }
    if (c->final_norm) {
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "norm.weight");
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "norm.bias");
    }
    if (c->fc_norm) {
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "fc_norm.weight");
        add(L, PV_GROUP_NO_DECAY, 1, C, 0, 0, 0, "fc_norm.bias");
    }
    add(L, PV_GROUP_DECAY, 2, K, C, 0, 0, "head.weight");
    add(L, PV_GROUP_NO_DECAY, 1, K, 0, 0, 0, "head.bias");
}

/* bind the named pointers of a buffer (params or grads) in layout order */
void pv_bind_params(pv_params *P, float *base, const pv_model *m) {
    const pv_tensor *t = m->tensors;
    int k = 0;
#define NEXT (base + t[k++].offset)
    P->cls = NEXT;
    P->pos = NEXT;
    P->pe_w = NEXT;
    P->pe_b = NEXT;
    for (int i = 0; i < m->cfg.depth; i++) {
        pv_block_params *b = &P->blk[i];
        b->ln1_w = NEXT; b->ln1_b = NEXT; b->qkv_w = NEXT;
        b->qkv_b = m->cfg.qkv_bias ? NEXT : NULL;
        b->proj_w = NEXT; b->proj_b = NEXT; b->ln2_w = NEXT; b->ln2_b = NEXT;
        b->fc1_w = NEXT; b->fc1_b = NEXT;
        if (m->cfg.act[i] == PV_ACT_POLY) {
            b->pa = NEXT; b->pb = NEXT; b->pc = NEXT; b->ps = NEXT;
        } else {
            b->pa = b->pb = b->pc = b->ps = NULL;
        }
        b->fc2_w = NEXT; b->fc2_b = NEXT;
    }
    P->lnf_w = m->cfg.final_norm ? NEXT : NULL;
    P->lnf_b = m->cfg.final_norm ? NEXT : NULL;
    P->fcn_w = m->cfg.fc_norm ? NEXT : NULL;
    P->fcn_b = m->cfg.fc_norm ? NEXT : NULL;
    P->head_w = NEXT;
    P->head_b = NEXT;
#undef NEXT
}


/* carve the activation arena; with base == NULL only counts. Pure pointer arithmetic, so the
 * CUDA engine carves its device arena with it too. */
size_t pv_carve_acts(pv_model *m, float *base) {
    size_t off = 0;
    size_t B = (size_t)m->max_batch, T = m->T, C = m->C, H = m->H, NH = m->NH;
#define TAKE(ptr, n)                                                   \
    do {                                                               \
        if (base) (ptr) = base + off;                                  \
        off += ((size_t)(n) + ALIGN_FLOATS - 1) / ALIGN_FLOATS * ALIGN_FLOATS; \
    } while (0)
    TAKE(m->patches, B * m->N * m->patch_dim);
    TAKE(m->x0, B * T * C);
    for (int i = 0; i < m->cfg.depth; i++) {
        pv_block_acts *a = &m->blk[i];
        TAKE(a->ln1, B * T * C);
        TAKE(a->ln1_mean, B * T);
        TAKE(a->ln1_rstd, B * T);
        TAKE(a->qkv, B * T * 3 * C);
        TAKE(a->att, B * NH * T * (size_t)m->att_ld);
        TAKE(a->attn_y, B * T * C);
        TAKE(a->x_mid, B * T * C);
        TAKE(a->ln2, B * T * C);
        TAKE(a->ln2_mean, B * T);
        TAKE(a->ln2_rstd, B * T);
        TAKE(a->h, B * T * H);
        TAKE(a->a, B * T * H);
        TAKE(a->x_out, B * T * C);
    }
    if (m->cfg.final_norm && m->cfg.pool == PV_POOL_AVG) TAKE(m->lnf_all, B * T * C);
    TAKE(m->lnf_mean, B * T);
    TAKE(m->lnf_rstd, B * T);
    TAKE(m->pooled, B * C);
    TAKE(m->fcn, B * C);
    TAKE(m->fcn_mean, B);
    TAKE(m->fcn_rstd, B);
    TAKE(m->logits, B * m->K);
    TAKE(m->d_pool, 2 * B * C);
    TAKE(m->d_x, B * T * C);
    TAKE(m->d_buf, B * T * C);
    TAKE(m->d_qkv, B * T * 3 * C);
    TAKE(m->d_h, B * T * H);
#undef TAKE
    return off;
}


/* dimensions and the parameter table (host memory) of a model for cfg; no buffers */
int pv_layout_init(pv_model *m, const pv_config *cfg, int max_batch) {
    int rc = pv_config_check(cfg);
    if (rc) return rc;
    if (max_batch <= 0)
        return pv_set_error(PV_ERR_VALUE, "max_batch must be positive, got %d", max_batch);
    m->cfg = *cfg;
    m->N = (cfg->img_size / cfg->patch_size) * (cfg->img_size / cfg->patch_size);
    m->T = m->N + 1;
    m->C = cfg->embed_dim;
    m->H = cfg->hidden;
    m->NH = cfg->num_heads;
    m->K = cfg->num_classes;
    m->patch_dim = cfg->in_chans * cfg->patch_size * cfg->patch_size;
    m->max_batch = max_batch;
    m->att_ld = m->T;
    layout L = {0};
    build_layout(&L, cfg); /* count */
    L.t = (pv_tensor *)calloc((size_t)L.n, sizeof(pv_tensor));
    if (!L.t) return pv_set_error(PV_ERR_NOMEM, "out of memory for the parameter table");
    L.cap = L.n;
    L.n = 0;
    L.off = 0;
    build_layout(&L, cfg);
    m->tensors = L.t;
    m->n_tensors = L.n;
    m->n_params = L.off;
    m->act_floats = pv_carve_acts(m, NULL);
    return PV_OK;
}

/* the per-op timing categories of both engines (PV_PROF_*), as polyvit._C.profile names them */
const char *const pv_prof_names[PV_PROF_N] = {
    "patch_embed", "layernorm", "matmul_qkv", "attention", "matmul_proj", "matmul_fc1",
    "activation", "matmul_fc2", "head", "layernorm_bwd", "matmul_qkv_bwd", "attention_bwd",
    "matmul_proj_bwd", "matmul_fc1_bwd", "activation_bwd", "matmul_fc2_bwd", "head_bwd",
    "embed_bwd"};
