/* The BLAS we link: scipy-openblas32, the OpenBLAS build NumPy and SciPy ship. Its header
 * declares every symbol with the scipy_ prefix already applied. */
#ifndef POLYVIT_BLAS_H
#define POLYVIT_BLAS_H
#include <cblas.h>

#define PV_SGEMM scipy_cblas_sgemm
#define pv_blas_set_num_threads scipy_openblas_set_num_threads
#define pv_blas_get_config scipy_openblas_get_config

#endif
