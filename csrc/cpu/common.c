/* Threads shared by every op. */
#include "../polyvit.h"
#include "blas.h"

#ifdef _OPENMP
#include <omp.h>
#endif

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
