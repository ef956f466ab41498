/* OpenMP thread helpers that also compile without OpenMP. */
#ifndef POLYVIT_THREADS_H
#define POLYVIT_THREADS_H
#ifdef _OPENMP
#include <omp.h>
#endif

static inline int pv_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static inline int pv_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
#endif
