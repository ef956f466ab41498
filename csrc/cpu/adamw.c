/* AdamW over the single parameter buffer, torch.optim.AdamW semantics (decoupled decay:
 * p *= 1 - lr*wd before the Adam update), per optimizer group learning rate and decay. */
#include <math.h>

#include "../polyvit.h"

double pv_grad_norm(const pv_model *m, const pv_group_hp hp[4]) {
    double total = 0.0;
    for (int i = 0; i < m->n_tensors; i++) {
        const pv_tensor *t = &m->tensors[i];
        if (hp[t->group].frozen) continue;
        const float *g = m->grads + t->offset;
        double s = 0.0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (t->size > 65536)
        for (size_t j = 0; j < t->size; j++) s += (double)g[j] * g[j];
        total += s;
    }
    return sqrt(total);
}

void pv_grad_scale(pv_model *m, const pv_group_hp hp[4], float scale) {
    for (int i = 0; i < m->n_tensors; i++) {
        const pv_tensor *t = &m->tensors[i];
        if (hp[t->group].frozen) continue;
        float *g = m->grads + t->offset;
        for (size_t j = 0; j < t->size; j++) g[j] *= scale;
    }
}

void pv_adamw_step(pv_model *m, const pv_group_hp hp[4], float beta1, float beta2, float eps,
                   int step) {
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    float bc2_sqrt = (float)sqrt(bc2);
    for (int i = 0; i < m->n_tensors; i++) {
        const pv_tensor *t = &m->tensors[i];
        const pv_group_hp *h = &hp[t->group];
        if (h->frozen) continue;
        float *p = m->params + t->offset, *g = m->grads + t->offset;
        float *mm = m->m + t->offset, *vv = m->v + t->offset;
        float decay = 1.0f - h->lr * h->weight_decay;
        float step_size = (float)(h->lr / bc1);
#pragma omp parallel for schedule(static) if (t->size > 65536)
        for (size_t j = 0; j < t->size; j++) {
            float gj = g[j];
            float mj = beta1 * mm[j] + (1.0f - beta1) * gj;
            float vj = beta2 * vv[j] + (1.0f - beta2) * gj * gj;
            mm[j] = mj;
            vv[j] = vj;
            p[j] = p[j] * decay - step_size * mj / (sqrtf(vj) / bc2_sqrt + eps);
        }
    }
}
