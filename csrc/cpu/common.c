/* Errors and threads shared by every op. */
#include <stdarg.h>
#include <stdio.h>

#include "../polyvit.h"
#include "blas.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static _Thread_local char pv_err_msg[512];

const char *pv_last_error(void) { return pv_err_msg[0] ? pv_err_msg : "unknown engine error"; }

int pv_set_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pv_err_msg, sizeof pv_err_msg, fmt, ap);
    va_end(ap);
    return code;
}

/* One thread pool: OpenMP's. OpenBLAS always runs single-threaded inside our parallel
 * regions (we partition every GEMM ourselves), so the two never oversubscribe the cores. */
void pv_set_num_threads(int n) {
    if (n < 1) n = 1;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    pv_blas_set_num_threads(1);
}

int pv_get_num_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
