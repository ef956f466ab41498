/* Losses over logits (B, K) with the gradient of the batch-mean loss, in double internally
 * (these are tiny next to the network, and double keeps them an exact reference). Semantics
 * follow PyTorch: F.cross_entropy (hard or probability targets, label_smoothing),
 * F.mse_loss (mean over all elements), F.kl_div(log_softmax(s/T), softmax(t/T),
 * reduction="batchmean") * T^2. */
#include <math.h>
#include <stdlib.h>

#include "../polyvit.h"

/* log-softmax of one row (scaled by 1/T) into out (double) */
static void log_softmax_row(double *out, const float *x, int K, double invT) {
    double mx = -INFINITY;
    for (int j = 0; j < K; j++) mx = fmax(mx, x[j] * invT);
    double s = 0.0;
    for (int j = 0; j < K; j++) s += exp(x[j] * invT - mx);
    double lse = mx + log(s);
    for (int j = 0; j < K; j++) out[j] = x[j] * invT - lse;
}

double loss_cross_entropy(float *dlogits, const float *logits, const int64_t *labels,
                          const float *soft, int B, int K, float smoothing) {
    double total = 0.0;
    double *lp = (double *)malloc(sizeof(double) * K);
    if (!lp) return NAN;
    for (int b = 0; b < B; b++) {
        const float *x = logits + (size_t)b * K;
        log_softmax_row(lp, x, K, 1.0);
        double row = 0.0;
        for (int j = 0; j < K; j++) {
            /* target distribution, smoothed: (1-eps)*y + eps/K */
            double y = labels ? (labels[b] == j ? 1.0 : 0.0) : (double)soft[(size_t)b * K + j];
            y = (1.0 - smoothing) * y + smoothing / K;
            row -= y * lp[j];
            /* d/dx of -sum y log p = p * sum(y) - y */
            if (dlogits) dlogits[(size_t)b * K + j] = (float)y; /* stash y, finish below */
        }
        if (dlogits) {
            double ysum = 0.0;
            for (int j = 0; j < K; j++) ysum += dlogits[(size_t)b * K + j];
            for (int j = 0; j < K; j++) {
                float *d = dlogits + (size_t)b * K + j;
                *d = (float)((exp(lp[j]) * ysum - *d) / B);
            }
        }
        total += row;
    }
    free(lp);
    return total / B;
}

double loss_mse(float *dlogits, const float *logits, const float *teacher, int B, int K) {
    double total = 0.0, n = (double)B * K;
    for (size_t i = 0; i < (size_t)B * K; i++) {
        double d = (double)logits[i] - (double)teacher[i];
        total += d * d;
        if (dlogits) dlogits[i] = (float)(2.0 * d / n);
    }
    return total / n;
}

double loss_kl(float *dlogits, const float *logits, const float *teacher, int B, int K, float T) {
    double total = 0.0, invT = 1.0 / T;
    double *ls = (double *)malloc(sizeof(double) * 2 * K);
    if (!ls) return NAN;
    double *lt = ls + K;
    for (int b = 0; b < B; b++) {
        log_softmax_row(ls, logits + (size_t)b * K, K, invT);
        log_softmax_row(lt, teacher + (size_t)b * K, K, invT);
        for (int j = 0; j < K; j++) {
            double pt = exp(lt[j]);
            total += pt * (lt[j] - ls[j]);
            /* d/ds of T^2 * KL / B = T * (p_s - p_t) / B */
            if (dlogits) dlogits[(size_t)b * K + j] = (float)(T * (exp(ls[j]) - pt) / B);
        }
    }
    free(ls);
    return total * T * T / B;
}
