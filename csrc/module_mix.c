/* polyvit._C, mixing half: bindings of Mixup and CutMix (csrc/cpu/mix.c).
 * module.c adds these functions to the module at import. Same rules as module.c: parse,
 * check, call (GIL released), raise. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL polyvit_ARRAY_API
#define NO_IMPORT_ARRAY
#include <numpy/arrayobject.h>

#include "polyvit.h"

PyMethodDef pv_mix_methods[] = {
    {NULL, NULL, 0, NULL}};
