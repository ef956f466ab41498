/* polyvit._C, data half: bindings of the image operations (csrc/cpu/image*.c, augment*.c).
 * module.c adds these functions to the module at import. Same rules as module.c: parse,
 * check, call (GIL released), raise.
 *
 * polyvit/augment.py converts what users hand in (array-likes, sizes, names) and calls these
 * with exact types; the checks here are the engine's own guard: nothing that passes them can
 * make the C code read or write out of bounds. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL polyvit_ARRAY_API
#define NO_IMPORT_ARRAY
#include <numpy/arrayobject.h>

#include <math.h>

#include "polyvit.h"
#include "bindings.h"
#include "cpu/image.h"

/* largest side accepted, in pixels (keeps every per-image index within int) */
#define PV_IMG_MAX_SIDE 32768

/* a uint8 (B, H, W, C) C-contiguous batch with C in {1, 3} and B, H, W >= 1 */
static PyArrayObject *get_images(PyObject *obj, int dims[4]) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "images must be a numpy array, got %s", Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_UINT8) {
        PyErr_SetString(PyExc_TypeError, "images must be uint8");
        return NULL;
    }
    if (PyArray_NDIM(a) != 4) {
        PyErr_Format(PyExc_ValueError, "images must have 4 dimensions (B, H, W, C), got %d", PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_SetString(PyExc_ValueError, "images must be C-contiguous");
        return NULL;
    }
    npy_intp *d = PyArray_DIMS(a);
    if (d[0] < 1 || d[0] > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "images must hold at least one image, got a batch of %ld", (long)d[0]);
        return NULL;
    }
    if (d[1] < 1 || d[2] < 1 || d[1] > PV_IMG_MAX_SIDE || d[2] > PV_IMG_MAX_SIDE) {
        PyErr_Format(PyExc_ValueError, "image height and width must be in 1..%d, got %ld x %ld",
                     PV_IMG_MAX_SIDE, (long)d[1], (long)d[2]);
        return NULL;
    }
    if (d[3] != 1 && d[3] != 3) {
        PyErr_Format(PyExc_ValueError, "images must have 1 or 3 channels (last axis), got %ld", (long)d[3]);
        return NULL;
    }
    for (int i = 0; i < 4; i++) dims[i] = (int)d[i];
    return a;
}

static int get_seeds(PyObject *obj, int B, const uint64_t **out) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "seeds must be a numpy array, got %s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != NPY_UINT64 || PyArray_NDIM(a) != 1 || !PyArray_IS_C_CONTIGUOUS(a)) {
        PyErr_SetString(PyExc_TypeError, "seeds must be a 1-D contiguous uint64 array");
        return -1;
    }
    if (PyArray_DIM(a, 0) != B) {
        PyErr_Format(PyExc_ValueError, "seeds must have one entry per image: %d images, %ld seeds", B,
                     (long)PyArray_DIM(a, 0));
        return -1;
    }
    *out = (const uint64_t *)PyArray_DATA(a);
    return 0;
}

static int check_interp(int interp) {
    if (interp < PV_INTERP_NEAREST || interp > PV_INTERP_BICUBIC) {
        PyErr_Format(PyExc_ValueError, "interpolation code %d is not 0 (nearest), 1 (bilinear) or 2 (bicubic)", interp);
        return -1;
    }
    return 0;
}

static int check_size(int oh, int ow) {
    if (oh < 1 || ow < 1 || oh > PV_IMG_MAX_SIDE || ow > PV_IMG_MAX_SIDE) {
        PyErr_Format(PyExc_ValueError, "output height and width must be in 1..%d, got %d x %d", PV_IMG_MAX_SIDE, oh, ow);
        return -1;
    }
    return 0;
}

/* fill: bytes of length C */
static int get_fill(PyObject *obj, int C, uint8_t fill[3]) {
    if (!PyBytes_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "fill must be bytes (one value per channel)");
        return -1;
    }
    if (PyBytes_GET_SIZE(obj) != C) {
        PyErr_Format(PyExc_ValueError, "fill must have one value per channel (%d), got %ld", C,
                     (long)PyBytes_GET_SIZE(obj));
        return -1;
    }
    memcpy(fill, PyBytes_AS_STRING(obj), C);
    return 0;
}

static PyArrayObject *new_u8(int B, int H, int W, int C) {
    npy_intp d[4] = {B, H, W, C};
    return (PyArrayObject *)PyArray_SimpleNew(4, d, NPY_UINT8);
}

/* resize(images, oh, ow, interp) -> (B, oh, ow, C) */
static PyObject *py_resize(PyObject *m, PyObject *args) {
    PyObject *io;
    int oh, ow, interp, d[4];
    if (!PyArg_ParseTuple(args, "Oiii", &io, &oh, &ow, &interp)) return NULL;
    PyArrayObject *im = get_images(io, d);
    if (!im || check_size(oh, ow) || check_interp(interp)) return NULL;
    PyArrayObject *out = new_u8(d[0], oh, ow, d[3]);
    if (!out) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_img_resize(PyArray_DATA(out), PyArray_DATA(im), d[0], d[1], d[2], d[3], oh, ow, interp);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return (PyObject *)out;
}

/* crop(images, top, left, oh, ow) -> (B, oh, ow, C), zero outside the image */
static PyObject *py_crop(PyObject *m, PyObject *args) {
    PyObject *io;
    int top, left, oh, ow, d[4];
    if (!PyArg_ParseTuple(args, "Oiiii", &io, &top, &left, &oh, &ow)) return NULL;
    PyArrayObject *im = get_images(io, d);
    if (!im || check_size(oh, ow)) return NULL;
    if (top < -PV_IMG_MAX_SIDE || top > PV_IMG_MAX_SIDE || left < -PV_IMG_MAX_SIDE || left > PV_IMG_MAX_SIDE) {
        PyErr_Format(PyExc_ValueError, "crop offset (%d, %d) is out of range", top, left);
        return NULL;
    }
    PyArrayObject *out = new_u8(d[0], oh, ow, d[3]);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS pv_img_crop(PyArray_DATA(out), PyArray_DATA(im), d[0], d[1], d[2], d[3], top, left, oh, ow);
    Py_END_ALLOW_THREADS return (PyObject *)out;
}

static PyObject *py_hflip(PyObject *m, PyObject *args) {
    PyObject *io;
    int d[4];
    if (!PyArg_ParseTuple(args, "O", &io)) return NULL;
    PyArrayObject *im = get_images(io, d);
    if (!im) return NULL;
    PyArrayObject *out = new_u8(d[0], d[1], d[2], d[3]);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS pv_img_hflip(PyArray_DATA(out), PyArray_DATA(im), d[0], d[1], d[2], d[3]);
    Py_END_ALLOW_THREADS return (PyObject *)out;
}

/* random_resized_crop(images, seeds, oh, ow, smin, smax, rmin, rmax, interp) -> (out, boxes) */
static PyObject *py_random_resized_crop(PyObject *m, PyObject *args) {
    PyObject *io, *so;
    int oh, ow, interp, d[4];
    double smin, smax, rmin, rmax;
    if (!PyArg_ParseTuple(args, "OOiiddddi", &io, &so, &oh, &ow, &smin, &smax, &rmin, &rmax, &interp)) return NULL;
    PyArrayObject *im = get_images(io, d);
    const uint64_t *seeds;
    if (!im || get_seeds(so, d[0], &seeds) || check_size(oh, ow) || check_interp(interp)) return NULL;
    if (!(smin > 0 && smin <= smax && isfinite(smax))) {
        PyErr_Format(PyExc_ValueError, "scale must satisfy 0 < min <= max, got (%g, %g)", smin, smax);
        return NULL;
    }
    if (!(rmin > 0 && rmin <= rmax && isfinite(rmax))) {
        PyErr_Format(PyExc_ValueError, "ratio must satisfy 0 < min <= max, got (%g, %g)", rmin, rmax);
        return NULL;
    }
    PyArrayObject *out = new_u8(d[0], oh, ow, d[3]);
    if (!out) return NULL;
    npy_intp bd[2] = {d[0], 4};
    PyArrayObject *boxes = (PyArrayObject *)PyArray_SimpleNew(2, bd, NPY_INT32);
    if (!boxes) {
        Py_DECREF(out);
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_img_random_resized_crop(PyArray_DATA(out), PyArray_DATA(boxes), PyArray_DATA(im),
                                                           seeds, d[0], d[1], d[2], d[3], oh, ow, smin, smax,
                                                           rmin, rmax, interp);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        Py_DECREF(boxes);
        return pv_raise(rc);
    }
    return Py_BuildValue("(NN)", out, boxes);
}

/* normalize(images, mean (tuple of C floats), std (tuple), scale) -> float32 (B, C, H, W) */
static PyObject *py_normalize(PyObject *m, PyObject *args) {
    PyObject *io, *mo, *so;
    double scale, mean[3], std[3];
    int d[4];
    if (!PyArg_ParseTuple(args, "OO!O!d", &io, &PyTuple_Type, &mo, &PyTuple_Type, &so, &scale)) return NULL;
    PyArrayObject *im = get_images(io, d);
    if (!im) return NULL;
    if (PyTuple_GET_SIZE(mo) != d[3] || PyTuple_GET_SIZE(so) != d[3]) {
        PyErr_Format(PyExc_ValueError, "mean and std must have one value per channel (%d)", d[3]);
        return NULL;
    }
    for (int c = 0; c < d[3]; c++) {
        mean[c] = PyFloat_AsDouble(PyTuple_GET_ITEM(mo, c));
        std[c] = PyFloat_AsDouble(PyTuple_GET_ITEM(so, c));
        if (PyErr_Occurred()) return NULL;
        if (!isfinite(mean[c]) || !isfinite(std[c]) || std[c] == 0.0) {
            PyErr_SetString(PyExc_ValueError, "mean and std must be finite and std non-zero");
            return NULL;
        }
    }
    if (!isfinite(scale)) {
        PyErr_SetString(PyExc_ValueError, "scale must be finite");
        return NULL;
    }
    npy_intp od[4] = {d[0], d[3], d[1], d[2]};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(4, od, NPY_FLOAT32);
    if (!out) return NULL;
    Py_BEGIN_ALLOW_THREADS pv_img_normalize(PyArray_DATA(out), PyArray_DATA(im), d[0], d[1], d[2], d[3], mean, std, scale);
    Py_END_ALLOW_THREADS return (PyObject *)out;
}

static int check_op_magnitude(int op, double mag) {
    if (op < 0 || op >= PV_OP_COUNT) {
        PyErr_Format(PyExc_ValueError, "op index %d is not in 0..%d", op, PV_OP_COUNT - 1);
        return -1;
    }
    if (!isfinite(mag) || fabs(mag) > 1e6) {
        PyErr_Format(PyExc_ValueError, "magnitude must be finite and at most 1e6 in size, got %g", mag);
        return -1;
    }
    if (op == PV_OP_POSTERIZE && (mag < 0 || mag >= 9)) {
        PyErr_Format(PyExc_ValueError, "Posterize keeps int(magnitude) bits, which must be in 0..8, got %g", mag);
        return -1;
    }
    return 0;
}

/* apply_op(images, op, magnitude, fill bytes, interp) */
static PyObject *py_apply_op(PyObject *m, PyObject *args) {
    PyObject *io, *fo;
    int op, interp, d[4];
    double mag;
    uint8_t fill[3];
    if (!PyArg_ParseTuple(args, "OidOi", &io, &op, &mag, &fo, &interp)) return NULL;
    PyArrayObject *im = get_images(io, d);
    if (!im || check_op_magnitude(op, mag) || get_fill(fo, d[3], fill) || check_interp(interp)) return NULL;
    PyArrayObject *out = new_u8(d[0], d[1], d[2], d[3]);
    if (!out) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_aug_apply(PyArray_DATA(out), PyArray_DATA(im), d[0], d[1], d[2], d[3], op, mag, fill, interp);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return (PyObject *)out;
}

static int check_ra(int num_ops, int magnitude, int bins) {
    if (num_ops < 0 || num_ops > 1000) {
        PyErr_Format(PyExc_ValueError, "num_ops must be in 0..1000, got %d", num_ops);
        return -1;
    }
    if (bins < 2 || bins > 1000000) {
        PyErr_Format(PyExc_ValueError, "num_magnitude_bins must be in 2..1000000, got %d", bins);
        return -1;
    }
    if (magnitude < 0 || magnitude >= bins) {
        PyErr_Format(PyExc_ValueError, "magnitude is a bin index and must be in 0..%d, got %d", bins - 1, magnitude);
        return -1;
    }
    return 0;
}

/* rand_augment(images, seeds, num_ops, magnitude, bins, fill bytes, interp) */
static PyObject *py_rand_augment(PyObject *m, PyObject *args) {
    PyObject *io, *so, *fo;
    int num_ops, magnitude, bins, interp, d[4];
    uint8_t fill[3];
    if (!PyArg_ParseTuple(args, "OOiiiOi", &io, &so, &num_ops, &magnitude, &bins, &fo, &interp)) return NULL;
    PyArrayObject *im = get_images(io, d);
    const uint64_t *seeds;
    if (!im || get_seeds(so, d[0], &seeds) || check_ra(num_ops, magnitude, bins) || get_fill(fo, d[3], fill) ||
        check_interp(interp))
        return NULL;
    PyArrayObject *out = new_u8(d[0], d[1], d[2], d[3]);
    if (!out) return NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS rc = pv_aug_rand_augment(PyArray_DATA(out), PyArray_DATA(im), seeds, d[0], d[1], d[2], d[3],
                                                    num_ops, magnitude, bins, fill, interp);
    Py_END_ALLOW_THREADS if (rc) {
        Py_DECREF(out);
        return pv_raise(rc);
    }
    return (PyObject *)out;
}

/* rand_augment_plan(seeds, H, W, num_ops, magnitude, bins) -> (ops int32 (B, n), mags f64 (B, n)) */
static PyObject *py_rand_augment_plan(PyObject *m, PyObject *args) {
    PyObject *so;
    int H, W, num_ops, magnitude, bins;
    if (!PyArg_ParseTuple(args, "Oiiiii", &so, &H, &W, &num_ops, &magnitude, &bins)) return NULL;
    if (!PyArray_Check(so) || PyArray_NDIM((PyArrayObject *)so) != 1) {
        PyErr_SetString(PyExc_TypeError, "seeds must be a 1-D contiguous uint64 array");
        return NULL;
    }
    npy_intp B = PyArray_DIM((PyArrayObject *)so, 0);
    const uint64_t *seeds;
    if (B > INT32_MAX || get_seeds(so, (int)B, &seeds) || check_ra(num_ops, magnitude, bins) || check_size(H, W))
        return NULL;
    npy_intp od[2] = {B, num_ops};
    PyObject *ops = PyArray_SimpleNew(2, od, NPY_INT32), *mags = PyArray_SimpleNew(2, od, NPY_FLOAT64);
    if (!ops || !mags) {
        Py_XDECREF(ops);
        Py_XDECREF(mags);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS pv_aug_plan(PyArray_DATA((PyArrayObject *)ops), PyArray_DATA((PyArrayObject *)mags), seeds,
                                       (int)B, H, W, num_ops, magnitude, bins);
    Py_END_ALLOW_THREADS return Py_BuildValue("(NN)", ops, mags);
}

/* aug_magnitude(op, magnitude, bins, H, W) -> RandAugment's unsigned magnitude of that bin */
static PyObject *py_aug_magnitude(PyObject *m, PyObject *args) {
    int op, magnitude, bins, H, W;
    if (!PyArg_ParseTuple(args, "iiiii", &op, &magnitude, &bins, &H, &W)) return NULL;
    if (op < 0 || op >= PV_OP_COUNT) {
        PyErr_Format(PyExc_ValueError, "op index %d is not in 0..%d", op, PV_OP_COUNT - 1);
        return NULL;
    }
    if (check_ra(0, magnitude, bins) || check_size(H, W)) return NULL;
    return PyFloat_FromDouble(pv_aug_magnitude(op, magnitude, bins, H, W));
}

PyMethodDef pv_data_methods[] = {
    {"img_resize", py_resize, METH_VARARGS, "img_resize(images u8 (B,H,W,C), oh, ow, interp) -> resized (Pillow's resampling)"},
    {"img_crop", py_crop, METH_VARARGS, "img_crop(images, top, left, oh, ow) -> window, zero outside"},
    {"img_hflip", py_hflip, METH_VARARGS, "img_hflip(images) -> mirrored left-right"},
    {"img_random_resized_crop", py_random_resized_crop, METH_VARARGS,
     "img_random_resized_crop(images, seeds u64, oh, ow, smin, smax, rmin, rmax, interp) -> (out, boxes (B,4) i,j,h,w)"},
    {"img_normalize", py_normalize, METH_VARARGS, "img_normalize(images, mean tuple, std tuple, scale) -> float32 NCHW"},
    {"aug_apply_op", py_apply_op, METH_VARARGS, "aug_apply_op(images, op, magnitude, fill bytes, interp) -> new images"},
    {"aug_rand_augment", py_rand_augment, METH_VARARGS,
     "aug_rand_augment(images, seeds u64, num_ops, magnitude, bins, fill bytes, interp) -> new images"},
    {"aug_rand_augment_plan", py_rand_augment_plan, METH_VARARGS,
     "aug_rand_augment_plan(seeds, H, W, num_ops, magnitude, bins) -> (ops int32, magnitudes float64)"},
    {"aug_magnitude", py_aug_magnitude, METH_VARARGS, "aug_magnitude(op, magnitude, bins, H, W) -> float"},
    {NULL, NULL, 0, NULL}};
