/* polyvit._C, mixing half: bindings of Mixup and CutMix (csrc/cpu/mix.c).
 * module.c adds these functions to the module at import. Same rules as module.c: parse,
 * check, call (GIL released), raise. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL polyvit_ARRAY_API
#define NO_IMPORT_ARRAY
#include <numpy/arrayobject.h>

#include <limits.h>
#include <math.h>
#include <string.h>

#include "polyvit.h"
#include "cpu/mix.h"

/* a C-contiguous, aligned array of the given type and shape (dim -1: any); borrowed check,
 * no conversion: the Python layer (polyvit/mixup.py) hands over exactly this */
static int check_array(PyObject *obj, int type, const char *tname, int ndim, const npy_intp *shape,
                       const char *what) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy array, got %s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != type) {
        PyErr_Format(PyExc_TypeError, "%s must be %s", what, tname);
        return -1;
    }
    if (PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimension(s), got %d", what, ndim, PyArray_NDIM(a));
        return -1;
    }
    for (int k = 0; k < ndim; k++)
        if (shape[k] >= 0 && PyArray_DIM(a, k) != shape[k]) {
            PyErr_Format(PyExc_ValueError, "%s must have %ld entries along axis %d (one per image), got %ld",
                         what, (long)shape[k], k, (long)PyArray_DIM(a, k));
            return -1;
        }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous and aligned", what);
        return -1;
    }
    return 0;
}

/* mix(x, layout, partner, kind, weights, box) -> new array like x.
 *   x        float32 or uint8, 4-D: (B, C, H, W) for layout "NCHW", (B, H, W, C) for "NHWC"
 *   partner  int64 (B,): the image each one mixes with
 *   kind     uint8 (B,): 0 copy, 1 blend, 2 paste the box from the partner
 *   weights  float32 (B, 2): a blend is x[i] * weights[i, 0] + x[partner[i]] * weights[i, 1]
 *   box      int64 (B, 4): (y0, y1, x0, x1), half-open, inside the image */
static PyObject *py_mix(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "layout", "partner", "kind", "weights", "box", NULL};
    PyObject *xo, *po, *ko, *lo, *bo;
    const char *layout_s;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OsOOOO", kwlist, &xo, &layout_s, &po, &ko, &lo, &bo))
        return NULL;
    if (!PyArray_Check(xo)) {
        PyErr_Format(PyExc_TypeError, "images must be a numpy array, got %s", Py_TYPE(xo)->tp_name);
        return NULL;
    }
    PyArrayObject *x = (PyArrayObject *)xo;
    int type = PyArray_TYPE(x);
    if (type != NPY_FLOAT32 && type != NPY_UINT8) {
        PyErr_SetString(PyExc_TypeError, "images must be float32 or uint8");
        return NULL;
    }
    int layout;
    if (!strcmp(layout_s, "NCHW"))
        layout = PV_MIX_NCHW;
    else if (!strcmp(layout_s, "NHWC"))
        layout = PV_MIX_NHWC;
    else {
        PyErr_Format(PyExc_ValueError, "layout must be 'NCHW' or 'NHWC', got '%s'", layout_s);
        return NULL;
    }
    npy_intp any4[4] = {-1, -1, -1, -1};
    if (check_array(xo, type, type == NPY_UINT8 ? "uint8" : "float32", 4, any4, "images")) return NULL;
    npy_intp *d = PyArray_DIMS(x);
    for (int k = 0; k < 4; k++)
        if (d[k] < 1 || d[k] > INT_MAX) {
            PyErr_Format(PyExc_ValueError, "images must have a non-empty shape, got (%ld, %ld, %ld, %ld)",
                         (long)d[0], (long)d[1], (long)d[2], (long)d[3]);
            return NULL;
        }
    int B = (int)d[0];
    int C = (int)(layout == PV_MIX_NCHW ? d[1] : d[3]);
    int H = (int)(layout == PV_MIX_NCHW ? d[2] : d[1]);
    int W = (int)(layout == PV_MIX_NCHW ? d[3] : d[2]);
    npy_intp vb[1] = {B}, bb[2] = {B, 4}, bb2[2] = {B, 2};
    if (check_array(po, NPY_INT64, "int64", 1, vb, "partner") ||
        check_array(ko, NPY_UINT8, "uint8", 1, vb, "kind") ||
        check_array(lo, NPY_FLOAT32, "float32", 2, bb2, "weights") ||
        check_array(bo, NPY_INT64, "int64", 2, bb, "box"))
        return NULL;
    const int64_t *partner = (const int64_t *)PyArray_DATA((PyArrayObject *)po);
    const uint8_t *kind = (const uint8_t *)PyArray_DATA((PyArrayObject *)ko);
    const float *w = (const float *)PyArray_DATA((PyArrayObject *)lo);
    const int64_t *box = (const int64_t *)PyArray_DATA((PyArrayObject *)bo);
    for (int i = 0; i < B; i++) {
        if (partner[i] < 0 || partner[i] >= B) {
            PyErr_Format(PyExc_ValueError, "partner %lld of image %d is outside 0..%d",
                         (long long)partner[i], i, B - 1);
            return NULL;
        }
        if (kind[i] > PV_MIX_BOX) {
            PyErr_Format(PyExc_ValueError, "kind %d of image %d is not 0 (copy), 1 (blend) or 2 (box)",
                         (int)kind[i], i);
            return NULL;
        }
        if (kind[i] == PV_MIX_BLEND &&
            !(w[2 * i] >= 0.f && w[2 * i] <= 1.f && w[2 * i + 1] >= 0.f && w[2 * i + 1] <= 1.f)) {
            PyErr_Format(PyExc_ValueError, "the blend weights (%g, %g) of image %d must lie in [0, 1]",
                         (double)w[2 * i], (double)w[2 * i + 1], i);
            return NULL;
        }
        const int64_t *b = box + 4 * i;
        if (kind[i] == PV_MIX_BOX &&
            !(0 <= b[0] && b[0] <= b[1] && b[1] <= H && 0 <= b[2] && b[2] <= b[3] && b[3] <= W)) {
            PyErr_Format(PyExc_ValueError, "box (y %lld:%lld, x %lld:%lld) of image %d does not lie "
                         "inside its %dx%d image", (long long)b[0], (long long)b[1], (long long)b[2],
                         (long long)b[3], i, H, W);
            return NULL;
        }
    }
    PyObject *out = PyArray_SimpleNew(4, d, type);
    if (!out) return NULL;
    void *op = PyArray_DATA((PyArrayObject *)out);
    const void *xp = PyArray_DATA(x);
    int dt = type == NPY_UINT8 ? PV_MIX_U8 : PV_MIX_F32, rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_mix_images(op, xp, dt, layout, B, C, H, W, partner, kind, w, box);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_RuntimeError, pv_last_error());
        return NULL;
    }
    return out;
}

PyMethodDef pv_mix_methods[] = {
    {"mix", (PyCFunction)(void (*)(void))py_mix, METH_VARARGS | METH_KEYWORDS,
     "mix(x, layout, partner, kind, weights, box) -> new array: each image copied, blended with its "
     "partner, or with a box pasted from it (Mixup / CutMix)"},
    {NULL, NULL, 0, NULL}};
