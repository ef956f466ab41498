/* polyvit._C, fixed-point half: bindings of the MPC fixed-point ring kernels
 * (csrc/cpu/fixedpoint.c). module.c adds these functions to the module at import. Same rules as
 * module.c: parse, check, call (GIL released), raise.
 *
 * Ring arrays are int64 NumPy arrays, C-contiguous and aligned; they are checked, never
 * converted (a silent copy or cast of a ring value would hide a caller's mistake). Float inputs
 * (fx_encode, poly coefficients) are the only ones taken as float. polyvit/mpc/fixedpoint.py is
 * the Python face. */
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
#include "bindings.h"
#include "cpu/fixedpoint.h"

/* f: the number of fractional bits, 0..62 (a product needs 2f < 64 bits of fraction room) */
static int check_f(int f) {
    if (f < 0 || f > 62) {
        PyErr_Format(PyExc_ValueError, "f (fractional bits) must be in 0..62, got %d", f);
        return -1;
    }
    return 0;
}

/* an int64 C-contiguous aligned array with at least min_ndim dimensions (borrowed) */
static PyArrayObject *ring_arg(PyObject *obj, const char *what, int min_ndim) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a numpy int64 array (fixed-point ring values), "
                     "got %s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_INT64) {
        PyErr_Format(PyExc_TypeError, "%s must be int64 (fixed-point ring values), got %s; encode "
                     "floats with fx_encode", what, PyArray_DESCR(a)->typeobj->tp_name);
        return NULL;
    }
    if (PyArray_NDIM(a) < min_ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have at least %d dimension(s), got %d", what,
                     min_ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous, aligned and in native byte order "
                     "(np.ascontiguousarray(x, dtype=np.int64))", what);
        return NULL;
    }
    return a;
}

/* an int64 vector of exactly n entries */
static PyArrayObject *ring_vec(PyObject *obj, const char *what, npy_intp n) {
    PyArrayObject *a = ring_arg(obj, what, 1);
    if (!a) return NULL;
    if (PyArray_NDIM(a) != 1 || PyArray_DIM(a, 0) != n) {
        PyErr_Format(PyExc_ValueError, "%s must have shape (%ld,), got %d dimension(s) with %ld "
                     "entries", what, (long)n, PyArray_NDIM(a), (long)PyArray_SIZE(a));
        return NULL;
    }
    return a;
}

/* split an array into rows x last axis; the last axis must be 1..INT_MAX */
static int rows_last(PyArrayObject *a, const char *what, size_t *rows, int *D) {
    int nd = PyArray_NDIM(a);
    npy_intp last = PyArray_DIM(a, nd - 1);
    if (last < 1 || last > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "the last axis of %s must have 1..%d entries, got %ld", what,
                     INT_MAX, (long)last);
        return -1;
    }
    *D = (int)last;
    *rows = (size_t)(PyArray_SIZE(a) / last);
    return 0;
}

static PyObject *new_like(PyArrayObject *a, int type) {
    return PyArray_SimpleNew(PyArray_NDIM(a), PyArray_DIMS(a), type);
}

/* fx_encode(x, f) -> int64: round(x * 2^f) mod 2^64 */
static PyObject *py_encode(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "f", NULL};
    PyObject *xo;
    int f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi", kwlist, &xo, &f)) return NULL;
    if (check_f(f)) return NULL;
    if (!PyArray_Check(xo)) {
        PyErr_Format(PyExc_TypeError, "x must be a numpy float32 or float64 array, got %s",
                     Py_TYPE(xo)->tp_name);
        return NULL;
    }
    PyArrayObject *x = (PyArrayObject *)xo;
    int type = PyArray_TYPE(x);
    if (type != NPY_FLOAT32 && type != NPY_FLOAT64) {
        PyErr_Format(PyExc_TypeError, "x must be float32 or float64, got %s",
                     PyArray_DESCR(x)->typeobj->tp_name);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(x) || !PyArray_ISALIGNED(x) || !PyArray_ISNOTSWAPPED(x)) {
        PyErr_SetString(PyExc_ValueError, "x must be C-contiguous, aligned and in native byte order "
                        "(np.ascontiguousarray)");
        return NULL;
    }
    PyObject *out = new_like(x, NPY_INT64);
    if (!out) return NULL;
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    size_t n = (size_t)PyArray_SIZE(x);
    const void *xp = PyArray_DATA(x);
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = type == NPY_FLOAT64 ? pv_fx_encode_f64(o, (const double *)xp, n, f)
                                                    : pv_fx_encode_f32(o, (const float *)xp, n, f);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return out;
}

/* fx_decode(x, f) -> float64 */
static PyObject *py_decode(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "f", NULL};
    PyObject *xo;
    int f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi", kwlist, &xo, &f)) return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 0);
    if (!x || check_f(f)) return NULL;
    PyObject *out = new_like(x, NPY_FLOAT64);
    if (!out) return NULL;
    double *o = (double *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *xp = (const int64_t *)PyArray_DATA(x);
    size_t n = (size_t)PyArray_SIZE(x);
    Py_BEGIN_ALLOW_THREADS pv_fx_decode(o, xp, n, f);
    Py_END_ALLOW_THREADS return out;
}

/* fx_maxabs(x, f) -> float: max |decoded value| */
static PyObject *py_maxabs(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "f", NULL};
    PyObject *xo;
    int f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi", kwlist, &xo, &f)) return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 0);
    if (!x || check_f(f)) return NULL;
    const int64_t *xp = (const int64_t *)PyArray_DATA(x);
    size_t n = (size_t)PyArray_SIZE(x);
    double m;
    Py_BEGIN_ALLOW_THREADS m = pv_fx_maxabs(xp, n, f);
    Py_END_ALLOW_THREADS return PyFloat_FromDouble(m);
}

/* fx_matmul(x, w, bias, f, *, transpose_b=False, residual=None, kernel="auto") */
static PyObject *py_matmul(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "w", "bias", "f", "transpose_b", "residual", "kernel", NULL};
    PyObject *xo, *wo, *bo, *ro = Py_None;
    int f, tb = 0;
    const char *kname = "auto";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOi|$pOs", kwlist, &xo, &wo, &bo, &f, &tb, &ro,
                                     &kname))
        return NULL;
    if (check_f(f)) return NULL;
    int kernel;
    if (!strcmp(kname, "auto"))
        kernel = PV_FX_KERNEL_AUTO;
    else if (!strcmp(kname, "u64"))
        kernel = PV_FX_KERNEL_U64;
    else if (!strcmp(kname, "i32"))
        kernel = PV_FX_KERNEL_I32;
    else {
        PyErr_Format(PyExc_ValueError, "kernel must be 'auto', 'u64' or 'i32', got '%s'", kname);
        return NULL;
    }
    PyArrayObject *x = ring_arg(xo, "x", 1), *w = x ? ring_arg(wo, "w", 2) : NULL;
    if (!w) return NULL;
    int xn = PyArray_NDIM(x), wn = PyArray_NDIM(w);
    npy_intp *xd = PyArray_DIMS(x), *wd = PyArray_DIMS(w);
    if (wn > 3) {
        PyErr_Format(PyExc_ValueError, "w must be (K, N), or (B, K, N) for a batched product "
                     "(N x K with transpose_b), got %d dimensions", wn);
        return NULL;
    }
    npy_intp K = wd[wn - (tb ? 1 : 2)], N = wd[wn - (tb ? 2 : 1)], nb = 1, M;
    if (xd[xn - 1] != K) {
        PyErr_Format(PyExc_ValueError, "x's last axis (%ld) must match w's inner dimension (%ld%s)",
                     (long)xd[xn - 1], (long)K, tb ? ", w is N x K with transpose_b" : "");
        return NULL;
    }
    if (wn == 3) {
        if (xn != 3 || xd[0] != wd[0]) {
            PyErr_Format(PyExc_ValueError, "a batched w (%ld matrices) needs x of shape (%ld, M, K), "
                         "got %d dimension(s)%s", (long)wd[0], (long)wd[0], xn,
                         xn == 3 ? " with another batch size" : "");
            return NULL;
        }
        nb = xd[0];
        M = xd[1];
    } else {
        M = K > 0 ? PyArray_SIZE(x) / K : 1;
        if (K == 0)
            for (int k = 0; k < xn - 1; k++) M *= xd[k];
    }
    if (M > INT_MAX || K > INT_MAX || N > INT_MAX || nb > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "fx_matmul: a dimension exceeds 2^31 - 1");
        return NULL;
    }
    PyArrayObject *bias = NULL, *res = NULL;
    if (bo != Py_None && !(bias = ring_vec(bo, "bias", N))) return NULL;
    npy_intp od[NPY_MAXDIMS];
    for (int k = 0; k < xn - 1; k++) od[k] = xd[k];
    od[xn - 1] = N;
    if (ro != Py_None) {
        if (!(res = ring_arg(ro, "residual", 0))) return NULL;
        int same = PyArray_NDIM(res) == xn;
        for (int k = 0; same && k < xn; k++) same = PyArray_DIM(res, k) == od[k];
        if (!same) {
            PyErr_SetString(PyExc_ValueError, "residual must have the output's shape "
                            "(x.shape[:-1] + (N,))");
            return NULL;
        }
    }
    PyObject *out = PyArray_ZEROS(xn, od, NPY_INT64, 0);
    if (!out) return NULL;
    int64_t *yp = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *xp = (const int64_t *)PyArray_DATA(x), *wp = (const int64_t *)PyArray_DATA(w);
    const int64_t *bp = bias ? (const int64_t *)PyArray_DATA(bias) : NULL;
    const int64_t *rp = res ? (const int64_t *)PyArray_DATA(res) : NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_fx_matmul(yp, xp, wp, bp, rp, (int)nb, wn == 3, (int)M, (int)K,
                                             (int)N, tb, f, kernel);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return out;
}

/* fx_mul(x, y, f) -> trunc(x * y); y one value, a last-axis vector, or x's shape */
static PyObject *py_mul(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "y", "f", NULL};
    PyObject *xo, *yo;
    int f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi", kwlist, &xo, &yo, &f)) return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 0), *y = x ? ring_arg(yo, "y", 0) : NULL;
    if (!y || check_f(f)) return NULL;
    int xn = PyArray_NDIM(x);
    size_t rows = 1;
    int D = 1;
    if (xn > 0 && PyArray_SIZE(x) > 0 && rows_last(x, "x", &rows, &D)) return NULL;
    int mode;
    if (PyArray_SIZE(y) == 1)
        mode = 0;
    else if (PyArray_NDIM(y) == 1 && xn > 0 && PyArray_DIM(y, 0) == PyArray_DIM(x, xn - 1))
        mode = 1;
    else if (PyArray_NDIM(y) == xn && PyArray_SIZE(y) == PyArray_SIZE(x) &&
             !memcmp(PyArray_DIMS(y), PyArray_DIMS(x), sizeof(npy_intp) * xn))
        mode = 2;
    else {
        PyErr_SetString(PyExc_ValueError, "y must be a single value, a vector over x's last axis, "
                        "or an array of x's shape");
        return NULL;
    }
    PyObject *out = new_like(x, NPY_INT64);
    if (!out) return NULL;
    if (PyArray_SIZE(x) == 0) return out;
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *xp = (const int64_t *)PyArray_DATA(x), *yp = (const int64_t *)PyArray_DATA(y);
    Py_BEGIN_ALLOW_THREADS pv_fx_mul(o, xp, yp, rows, D, mode, f);
    Py_END_ALLOW_THREADS return out;
}

/* fx_layernorm(x, gamma, beta, f, eps=1e-6) */
static PyObject *py_layernorm(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "gamma", "beta", "f", "eps", NULL};
    PyObject *xo, *go, *bo;
    int f;
    double eps = 1e-6;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOi|d", kwlist, &xo, &go, &bo, &f, &eps)) return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 1);
    if (!x || check_f(f)) return NULL;
    size_t rows;
    int D;
    if (rows_last(x, "x", &rows, &D)) return NULL;
    PyArrayObject *g = ring_vec(go, "gamma", D), *b = g ? ring_vec(bo, "beta", D) : NULL;
    if (!b) return NULL;
    if (!(eps > 0) || !isfinite(eps)) {
        PyErr_Format(PyExc_ValueError, "eps must be positive and finite, got %g", eps);
        return NULL;
    }
    PyObject *out = new_like(x, NPY_INT64);
    if (!out) return NULL;
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *xp = PyArray_DATA(x), *gp = PyArray_DATA(g), *bp = PyArray_DATA(b);
    Py_BEGIN_ALLOW_THREADS pv_fx_layernorm(o, xp, gp, bp, rows, D, f, eps);
    Py_END_ALLOW_THREADS return out;
}

/* fx_softmax(x, f) over the last axis */
static PyObject *py_softmax(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "f", NULL};
    PyObject *xo;
    int f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi", kwlist, &xo, &f)) return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 1);
    if (!x || check_f(f)) return NULL;
    size_t rows;
    int T;
    if (rows_last(x, "x", &rows, &T)) return NULL;
    PyObject *out = new_like(x, NPY_INT64);
    if (!out) return NULL;
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *xp = PyArray_DATA(x);
    Py_BEGIN_ALLOW_THREADS pv_fx_softmax(o, xp, rows, T, f);
    Py_END_ALLOW_THREADS return out;
}

/* fx_gelu(x, f, tanh_form=False, *, stats=False) -> y, or (y, max|x|, max|y|) */
static PyObject *py_gelu(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "f", "tanh_form", "stats", NULL};
    PyObject *xo;
    int f, tf = 0, want = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|p$p", kwlist, &xo, &f, &tf, &want)) return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 0);
    if (!x || check_f(f)) return NULL;
    PyObject *out = new_like(x, NPY_INT64);
    if (!out) return NULL;
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *xp = PyArray_DATA(x);
    size_t n = (size_t)PyArray_SIZE(x);
    double mx[2] = {0, 0};
    Py_BEGIN_ALLOW_THREADS pv_fx_gelu(o, xp, n, f, tf, want ? mx : NULL);
    Py_END_ALLOW_THREADS if (!want) return out;
    return Py_BuildValue("Ndd", out, mx[0], mx[1]);
}

/* one poly coefficient as a float64 vector of 1 or D entries (new reference) */
static PyArrayObject *coeff_arg(PyObject *obj, const char *what, int D) {
    PyArrayObject *a = (PyArrayObject *)PyArray_FROM_OTF(obj, NPY_FLOAT64, NPY_ARRAY_IN_ARRAY);
    if (!a) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "poly coefficient %s must be a number or a float array",
                         what);
        }
        return NULL;
    }
    npy_intp n = PyArray_SIZE(a);
    if (!(n == 1 || (n == D && PyArray_NDIM(a) == 1))) {
        PyErr_Format(PyExc_ValueError, "poly coefficient %s must be a scalar or a vector of the "
                     "last axis (%d entries), got %ld entries", what, D, (long)n);
        Py_DECREF(a);
        return NULL;
    }
    const double *p = (const double *)PyArray_DATA(a);
    for (npy_intp i = 0; i < n; i++)
        if (!isfinite(p[i])) {
            PyErr_Format(PyExc_ValueError, "poly coefficient %s is not finite (%g at %ld)", what,
                         p[i], (long)i);
            Py_DECREF(a);
            return NULL;
        }
    return a;
}

/* fx_poly(x, a, b, c, s, f, *, stats=False): y = s*(a x^2 + b x + c) with A = s*a, B = s*b,
 * C = s*c folded in double and encoded, then Horner in the ring: t = trunc(A x) + B;
 * y = trunc(t x) + C. With stats: (y, max|x|, max|y|). */
static PyObject *py_poly(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"x", "a", "b", "c", "s", "f", "stats", NULL};
    PyObject *xo, *co[4];
    int f, want = 0;
    double mx[2] = {0, 0};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOi|$p", kwlist, &xo, &co[0], &co[1], &co[2],
                                     &co[3], &f, &want))
        return NULL;
    PyArrayObject *x = ring_arg(xo, "x", 1);
    if (!x || check_f(f)) return NULL;
    size_t rows;
    int D;
    if (rows_last(x, "x", &rows, &D)) return NULL;
    PyArrayObject *c[4] = {NULL, NULL, NULL, NULL};
    PyObject *out = NULL, *enc = NULL;
    static const char *names[4] = {"a", "b", "c", "s"};
    int width = 1;
    for (int i = 0; i < 4; i++) {
        if (!(c[i] = coeff_arg(co[i], names[i], D))) goto fail;
        if (PyArray_SIZE(c[i]) > 1) width = D;
    }
    npy_intp ed[2] = {3, width};
    enc = PyArray_SimpleNew(2, ed, NPY_INT64);
    if (!enc) goto fail;
    {
        int64_t *e = (int64_t *)PyArray_DATA((PyArrayObject *)enc);
        const double *s = (const double *)PyArray_DATA(c[3]);
        int ss = PyArray_SIZE(c[3]) > 1;
        for (int k = 0; k < 3; k++) {
            const double *v = (const double *)PyArray_DATA(c[k]);
            int vs = PyArray_SIZE(c[k]) > 1;
            double folded[1];
            for (int j = 0; j < width; j++) {
                folded[0] = s[ss ? j : 0] * v[vs ? j : 0];
                int rc = pv_fx_encode_f64(e + (size_t)k * width + j, folded, 1, f);
                if (rc) {
                    pv_raise(rc);
                    goto fail;
                }
            }
        }
        out = new_like(x, NPY_INT64);
        if (!out) goto fail;
        int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
        const int64_t *xp = PyArray_DATA(x);
        Py_BEGIN_ALLOW_THREADS pv_fx_poly(o, xp, e, e + width, e + 2 * width, rows, D, width, f,
                                          want ? mx : NULL);
        Py_END_ALLOW_THREADS
    }
fail:
    for (int i = 0; i < 4; i++) Py_XDECREF(c[i]);
    Py_XDECREF(enc);
    if (!out || !want) return out;
    return Py_BuildValue("Ndd", out, mx[0], mx[1]);
}

/* fx_attention(qkv, num_heads, f, scale=None) -> (y, stats) */
static PyObject *py_attention(PyObject *mod, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"qkv", "num_heads", "f", "scale", NULL};
    PyObject *qo, *so = Py_None;
    int NH, f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oii|O", kwlist, &qo, &NH, &f, &so)) return NULL;
    PyArrayObject *q = ring_arg(qo, "qkv", 3);
    if (!q || check_f(f)) return NULL;
    if (PyArray_NDIM(q) != 3) {
        PyErr_Format(PyExc_ValueError, "qkv must be (B, T, 3C), got %d dimensions", PyArray_NDIM(q));
        return NULL;
    }
    npy_intp B = PyArray_DIM(q, 0), T = PyArray_DIM(q, 1), C3 = PyArray_DIM(q, 2);
    if (NH < 1) {
        PyErr_Format(PyExc_ValueError, "num_heads must be positive, got %d", NH);
        return NULL;
    }
    if (C3 % 3 || (C3 / 3) % NH || C3 == 0) {
        PyErr_Format(PyExc_ValueError, "qkv's last axis (%ld) must be 3C with C a positive multiple "
                     "of num_heads (%d)", (long)C3, NH);
        return NULL;
    }
    if (T < 1 || B > INT_MAX || T > 46340 || C3 > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "qkv must have 1..46340 tokens, got %ld", (long)T);
        return NULL;
    }
    int C = (int)(C3 / 3);
    double sc = 1.0 / sqrt((double)(C / NH));
    if (so != Py_None) {
        sc = PyFloat_AsDouble(so);
        if (sc == -1.0 && PyErr_Occurred()) return NULL;
    }
    if (!isfinite(sc)) {
        PyErr_SetString(PyExc_ValueError, "scale must be finite");
        return NULL;
    }
    int64_t scale;
    int rc = pv_fx_encode_f64(&scale, &sc, 1, f);
    if (rc) return pv_raise(rc);
    npy_intp od[3] = {B, T, C};
    PyObject *out = PyArray_SimpleNew(3, od, NPY_INT64);
    if (!out) return NULL;
    double st[4] = {0, 0, 0, 0};
    int64_t *o = (int64_t *)PyArray_DATA((PyArrayObject *)out);
    const int64_t *qp = PyArray_DATA(q);
    Py_BEGIN_ALLOW_THREADS rc = pv_fx_attention(o, st, qp, (int)B, (int)T, C, NH, scale, f);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return Py_BuildValue("N{sdsdsdsd}", out, "scores_in", st[0], "softmax_in", st[1], "v", st[2],
                         "out", st[3]);
}

PyMethodDef pv_fixed_methods[] = {
    {"fx_encode", (PyCFunction)(void (*)(void))py_encode, METH_VARARGS | METH_KEYWORDS,
     "fx_encode(x, f) -> int64: round(x * 2^f) mod 2^64 (float32/float64 x; ValueError on NaN/inf)"},
    {"fx_decode", (PyCFunction)(void (*)(void))py_decode, METH_VARARGS | METH_KEYWORDS,
     "fx_decode(x, f) -> float64: the signed ring value / 2^f"},
    {"fx_maxabs", (PyCFunction)(void (*)(void))py_maxabs, METH_VARARGS | METH_KEYWORDS,
     "fx_maxabs(x, f) -> float: max |decoded value| (0.0 for an empty array)"},
    {"fx_matmul", (PyCFunction)(void (*)(void))py_matmul, METH_VARARGS | METH_KEYWORDS,
     "fx_matmul(x, w, bias, f, *, transpose_b=False, residual=None, kernel='auto') -> int64: "
     "trunc_f(x @ w) + bias + residual in Z_2^64. x (..., K) with w (K, N), or x (B, M, K) with w "
     "(B, K, N); w is (N, K) / (B, N, K) with transpose_b; bias (N,) or None"},
    {"fx_mul", (PyCFunction)(void (*)(void))py_mul, METH_VARARGS | METH_KEYWORDS,
     "fx_mul(x, y, f) -> int64: trunc_f(x * y); y one value, a last-axis vector or x's shape"},
    {"fx_layernorm", (PyCFunction)(void (*)(void))py_layernorm, METH_VARARGS | METH_KEYWORDS,
     "fx_layernorm(x, gamma, beta, f, eps=1e-6) -> int64: LayerNorm over the last axis in the ring"},
    {"fx_softmax", (PyCFunction)(void (*)(void))py_softmax, METH_VARARGS | METH_KEYWORDS,
     "fx_softmax(x, f) -> int64: softmax over the last axis in the ring"},
    {"fx_gelu", (PyCFunction)(void (*)(void))py_gelu, METH_VARARGS | METH_KEYWORDS,
     "fx_gelu(x, f, tanh_form=False, *, stats=False) -> int64: enc(gelu(dec(x))); with stats, "
     "(y, max|x|, max|y|) decoded"},
    {"fx_poly", (PyCFunction)(void (*)(void))py_poly, METH_VARARGS | METH_KEYWORDS,
     "fx_poly(x, a, b, c, s, f, *, stats=False) -> int64: s*(a x^2 + b x + c), coefficients folded "
     "(A = s*a, ...) and encoded, Horner in the ring; scalars or vectors over the last axis; with "
     "stats, (y, max|x|, max|y|) decoded"},
    {"fx_attention", (PyCFunction)(void (*)(void))py_attention, METH_VARARGS | METH_KEYWORDS,
     "fx_attention(qkv, num_heads, f, scale=None) -> (y, stats): multi-head attention in the ring "
     "on timm's packed qkv (B, T, 3C); scale defaults to head_dim^-0.5"},
    {NULL, NULL, 0, NULL}};
