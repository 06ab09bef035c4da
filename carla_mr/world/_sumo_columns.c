/*
 * carla_mr.world._sumo_columns: the embedded world's per-tick conversion in one pass (optional).
 *
 * fill(results, p_key, a_key, s_key, invalid_below, ox, oy, rsu_x, rsu_y, rsu_r2, uniform,
 *      cols, rsu) -> bool
 *
 * results   libsumo's getAllSubscriptionResults(): {vehicle id: {var: value}}, where
 *           value[p_key] is the 3-D position (x, y, z) tuple, value[a_key] the SUMO angle
 *           (degrees, clockwise from north) and value[s_key] the speed (m/s).
 * cols      a writable C-contiguous float64 buffer of 5 * n values, n = len(results), filled
 *           as rows x, y, z, yaw, speed in CARLA's frame:
 *             x = px * 1 + (-ox), y = py * -1 + oy, z = pz * 1 + 0,
 *             yaw = remainder(angle * 1 + 90, 360) - 180 (numpy's remainder: sign of 360),
 *             speed = s * 1 + 0
 *           (the same IEEE operations, in the same order, as EmbeddedWorld's numpy path, so
 *           the values are bitwise equal; built with -ffp-contract=off so no multiply-add is
 *           fused).
 * rsu       a writable int32 buffer of n values: the index of the nearest RSU (squared 2-D
 *           distance dx * dx + dy * dy, ties to the lower index) whose range covers the
 *           vehicle (d2 <= r2), else -1; ``uniform`` (all ranges equal) follows
 *           RsuAssociator: the nearest RSU, -1 when it is out of range.
 *
 * Returns False, with the buffers partly written, when a row is not a clean 3-D position
 * and a speed above ``invalid_below`` (a teleporting vehicle): the caller then takes its
 * slow path over the same results. Raises TypeError/ValueError on malformed input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

static int get_double(PyObject *obj, double *out)
{
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    *out = PyFloat_AsDouble(obj);
    if (*out == -1.0 && PyErr_Occurred())
        return -1;
    return 0;
}

/* numpy's float64 remainder(a, b) for b = 360 (npy_divmod): fmod, moved to the sign of b,
   +0.0 for a zero result */
static double remainder_360(double a)
{
    double mod = fmod(a, 360.0);
    if (mod) {
        if ((360.0 < 0) != (mod < 0))
            mod += 360.0;
    }
    else {
        mod = copysign(0.0, 360.0);
    }
    return mod;
}

static PyObject *fill(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 13) {
        PyErr_Format(PyExc_TypeError, "fill() takes 13 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *results = args[0], *p_key = args[1], *a_key = args[2], *s_key = args[3];
    double invalid_below, ox, oy;
    if (!PyDict_Check(results)) {
        PyErr_SetString(PyExc_TypeError, "fill(): results must be a dict");
        return NULL;
    }
    if (get_double(args[4], &invalid_below) || get_double(args[5], &ox) || get_double(args[6], &oy))
        return NULL;
    int uniform = PyObject_IsTrue(args[10]);
    if (uniform < 0)
        return NULL;

    Py_buffer rx = {0}, ry = {0}, r2 = {0}, cols = {0}, rsu = {0};
    PyObject *ret = NULL;
    if (PyObject_GetBuffer(args[7], &rx, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    if (PyObject_GetBuffer(args[8], &ry, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    if (PyObject_GetBuffer(args[9], &r2, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        goto done;
    if (PyObject_GetBuffer(args[11], &cols, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        goto done;
    if (PyObject_GetBuffer(args[12], &rsu, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0)
        goto done;

    Py_ssize_t n = PyDict_GET_SIZE(results);
    Py_ssize_t nr = rx.len / (Py_ssize_t)sizeof(double);
    if (strcmp(rx.format, "d") || strcmp(ry.format, "d") || strcmp(r2.format, "d") || ry.len != rx.len ||
        r2.len != rx.len) {
        PyErr_SetString(PyExc_ValueError, "fill(): rsu_x, rsu_y, rsu_r2 must be float64 arrays of one length");
        goto done;
    }
    if (strcmp(cols.format, "d") || cols.len != 5 * n * (Py_ssize_t)sizeof(double)) {
        PyErr_Format(PyExc_ValueError, "fill(): cols must be a float64 array of 5 * %zd values", n);
        goto done;
    }
    if ((strcmp(rsu.format, "i") && strcmp(rsu.format, "l")) || rsu.itemsize != 4 || rsu.len != n * 4) {
        PyErr_Format(PyExc_ValueError, "fill(): rsu must be an int32 array of %zd values", n);
        goto done;
    }
    const double *RX = rx.buf, *RY = ry.buf, *R2 = r2.buf;
    double *X = cols.buf, *Y = X + n, *Z = Y + n, *YAW = Z + n, *SPEED = YAW + n;
    int *OUT = rsu.buf;

    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    int ok = 1;
    while (PyDict_Next(results, &pos, &key, &value)) {
        if (!PyDict_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "fill(): every result must be a dict of subscribed variables");
            goto done;
        }
        PyObject *p = PyDict_GetItemWithError(value, p_key);
        PyObject *a = p ? PyDict_GetItemWithError(value, a_key) : NULL;
        PyObject *s = a ? PyDict_GetItemWithError(value, s_key) : NULL;
        if (!s) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_KeyError, "fill(): a result lacks a subscribed variable");
            goto done;
        }
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 3) {
            ok = 0;  /* a 2-D INVALID position: teleporting */
            break;
        }
        double px, py, pz, ang, sp;
        if (get_double(PyTuple_GET_ITEM(p, 0), &px) || get_double(PyTuple_GET_ITEM(p, 1), &py) ||
            get_double(PyTuple_GET_ITEM(p, 2), &pz) || get_double(a, &ang) || get_double(s, &sp))
            goto done;
        if (!(sp > invalid_below)) {
            ok = 0;
            break;
        }
        double x = px * 1.0 + (-ox);
        double y = py * -1.0 + oy;
        X[i] = x;
        Y[i] = y;
        Z[i] = pz * 1.0 + 0.0;
        YAW[i] = remainder_360(ang * 1.0 + 90.0) - 180.0;
        SPEED[i] = sp * 1.0 + 0.0;
        int best = -1;
        double best_d2 = 0.0;
        if (uniform) {
            for (Py_ssize_t j = 0; j < nr; j++) {
                double dx = x - RX[j], dy = y - RY[j];
                double d2 = dx * dx + dy * dy;
                if (best < 0 || d2 < best_d2) {
                    best = (int)j;
                    best_d2 = d2;
                }
            }
            if (best >= 0 && best_d2 > R2[0])
                best = -1;
        }
        else {
            for (Py_ssize_t j = 0; j < nr; j++) {
                double dx = x - RX[j], dy = y - RY[j];
                double d2 = dx * dx + dy * dy;
                if (d2 > R2[j])
                    continue;
                if (best < 0 || d2 < best_d2) {
                    best = (int)j;
                    best_d2 = d2;
                }
            }
        }
        OUT[i] = best;
        i++;
    }
    ret = PyBool_FromLong(ok);
done:
    if (rx.obj) PyBuffer_Release(&rx);
    if (ry.obj) PyBuffer_Release(&ry);
    if (r2.obj) PyBuffer_Release(&r2);
    if (cols.obj) PyBuffer_Release(&cols);
    if (rsu.obj) PyBuffer_Release(&rsu);
    return ret;
}

static PyMethodDef methods[] = {
    {"fill", (PyCFunction)(void (*)(void))fill, METH_FASTCALL,
     "fill(results, p_key, a_key, s_key, invalid_below, ox, oy, rsu_x, rsu_y, rsu_r2, uniform, cols, rsu) -> bool\n"
     "The embedded world's Snapshot columns and RSU indices from libsumo's subscription results\n"
     "(see the module source for the exact arithmetic); False for a tick with a teleporting vehicle."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sumo_columns",
    "The embedded world's per-tick SUMO -> CARLA conversion and RSU association in C (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__sumo_columns(void)
{
    PyObject *m = PyModule_Create(&module);
    /* bumped whenever fill()'s arguments or meaning change: sumo_columns.py ignores a stale build */
    if (m && PyModule_AddIntConstant(m, "ABI", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
