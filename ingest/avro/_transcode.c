/*
 * Avro binary -> JSON document bytes in one pass, with no Python objects in between.
 *
 * Why: decoding into dicts and serialising them again costs ~15 us a record in Python; the
 * pipeline's target is 100k records/s on one core. This walks a program compiled from the
 * writer schema (by ingest/avro/transcode.py, which also decides which schemas qualify) and
 * writes the JSON the Python path would write (ingest.pipeline.transform: timestamps as ISO-8601 UTC,
 * dates as YYYY-MM-DD, decimals and floats as JSON numbers, bytes as base64).
 *
 * It never reports errors. Whenever the input is anything but plainly valid (truncated,
 * bad UTF-8, an index out of range, an int beyond 32 bits, a value the Python path would
 * render differently or refuse, a duplicate map key, more array and map items than a record
 * may hold, a document over its size limit, or memory running out), it returns None and
 * the caller runs the Python path on that record, which then produces the exact
 * dead-letter reason. So the two paths agree by construction on every failure, and tests
 * compare their successes.
 *
 * Hostile input must not cost more than a valid record of its size: lengths and counts are
 * checked against the bytes that remain, the items of all arrays and maps of one record
 * are counted against one budget (items that take no bytes, like nulls, could otherwise
 * expand a few bytes into gigabytes), and the output stops growing at the document limit.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum Kind {
    K_NULL, K_BOOLEAN, K_INT, K_LONG, K_FLOAT, K_DOUBLE, K_STRING, K_BYTES, K_FIXED, K_ENUM,
    K_RECORD, K_ARRAY, K_MAP, K_UNION, K_TS_MILLIS, K_TS_MICROS, K_DATE, K_DECIMAL
};

static const char *const KIND_NAMES[] = {
    "null", "boolean", "int", "long", "float", "double", "string", "bytes", "fixed", "enum",
    "record", "array", "map", "union", "timestamp-millis", "timestamp-micros", "date",
    "decimal", NULL
};

typedef struct Node {
    int kind;
    Py_ssize_t size;         /* fixed: byte size; decimal: scale */
    Py_ssize_t min_size;     /* fewest bytes one value takes: bounds block counts */
    Py_ssize_t n;            /* children (record, union) or symbols (enum) */
    struct Node **children;  /* record fields, union branches, array items, map values */
    char **texts;            /* record: ',"name":' ; enum: '"SYMBOL"' */
    Py_ssize_t *text_lens;
} Node;

/* ---------------------------------------------------------------- output buffer ---- */

typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
    Py_ssize_t limit;  /* the document's size limit; checked exactly once it is written */
    int on_heap;
} Out;

/* Writers reserve a little more than they write (a timestamp reserves 32 bytes): growth may
 * pass the limit by this much, so the exact check at the end decides, not a reservation. */
#define LIMIT_SLACK 64

static int grow(Out *o, Py_ssize_t need) {
    if (need > o->limit + LIMIT_SLACK - o->len) return -1; /* over the limit: not an error */
    Py_ssize_t cap = o->cap * 2;
    while (cap < o->len + need) cap *= 2;
    char *data;
    if (o->on_heap) {
        data = PyMem_Realloc(o->data, cap);
    } else {
        data = PyMem_Malloc(cap);
        if (data) memcpy(data, o->data, o->len);
    }
    if (!data) return -1;
    o->data = data;
    o->cap = cap;
    o->on_heap = 1;
    return 0;
}

#define RESERVE(o, n) \
    do { if ((o)->len + (n) > (o)->cap && grow((o), (n)) < 0) return -1; } while (0)

static inline int emit(Out *o, const char *s, Py_ssize_t n) {
    RESERVE(o, n);
    memcpy(o->data + o->len, s, n);
    o->len += n;
    return 0;
}

static inline int emit_char(Out *o, char c) {
    RESERVE(o, 1);
    o->data[o->len++] = c;
    return 0;
}

/* ------------------------------------------------------------------- reading ---- */

typedef struct {
    const unsigned char *p;
    const unsigned char *end;
    int64_t items_left;  /* array and map items the rest of the record may still hold */
} In;

/* A zigzag varint, exactly as the Python reader reads one; -1 where Python would give an
 * int beyond 64 bits or fail. */
static inline int read_long(In *in, int64_t *out) {
    if (in->p >= in->end) return -1;
    uint64_t b = *in->p++;
    if (b < 128) {
        *out = (int64_t)((b >> 1) ^ (0 - (b & 1)));
        return 0;
    }
    uint64_t n = b & 127;
    int shift = 7;
    for (;;) {
        if (in->p >= in->end) return -1;
        b = *in->p++;
        if (shift == 63 && (b & 127) > 1) return -1;
        n |= (b & 127) << shift;
        if (b < 128) break;
        shift += 7;
        if (shift > 63) return -1;
    }
    *out = (int64_t)((n >> 1) ^ (0 - (n & 1)));
    return 0;
}

/* Avro floats are little-endian whatever the host; compilers make this one load on x86. */
static inline uint64_t le_uint(const unsigned char *p, int n) {
    uint64_t u = 0;
    for (int i = n - 1; i >= 0; i--) u = (u << 8) | p[i];
    return u;
}

/* A length prefix that fits in what remains. */
static inline int read_len(In *in, Py_ssize_t *len) {
    int64_t n;
    if (read_long(in, &n) < 0 || n < 0 || n > in->end - in->p) return -1;
    *len = (Py_ssize_t)n;
    return 0;
}

/* Strict UTF-8, as bytes.decode() checks it: no overlongs, surrogates or > U+10FFFF. */
static int utf8_valid(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int extra;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) extra = 1;
        else if (c == 0xE0) { extra = 2; lo = 0xA0; }
        else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) extra = 2;
        else if (c == 0xED) { extra = 2; hi = 0x9F; }
        else if (c == 0xF0) { extra = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) extra = 3;
        else if (c == 0xF4) { extra = 3; hi = 0x8F; }
        else return 0;
        if (i + extra >= n) return 0; /* truncated sequence */
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k <= extra; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return 0;
        i += extra + 1;
    }
    return 1;
}

/* ------------------------------------------------------------------ rendering ---- */

static const char HEX[] = "0123456789abcdef";

/* A JSON string literal of valid UTF-8, escaped as orjson escapes. */
static int emit_json_string(Out *o, const unsigned char *s, Py_ssize_t n) {
    RESERVE(o, n + 2);
    char *w = o->data + o->len;
    *w++ = '"';
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (c < 0x20 || c == '"' || c == '\\') break;
        *w++ = (char)c;
    }
    o->len = w - o->data;
    if (i == n) {
        o->data[o->len++] = '"';
        return 0;
    }
    for (; i < n; i++) {
        unsigned char c = s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            if (emit_char(o, (char)c) < 0) return -1;
            continue;
        }
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        Py_ssize_t len = 2;
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\n': esc[1] = 'n'; break;
            case '\r': esc[1] = 'r'; break;
            case '\t': esc[1] = 't'; break;
            case '\b': esc[1] = 'b'; break;
            case '\f': esc[1] = 'f'; break;
            default:
                esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
                esc[4] = HEX[c >> 4]; esc[5] = HEX[c & 15];
                len = 6;
        }
        if (emit(o, esc, len) < 0) return -1;
    }
    return emit_char(o, '"');
}

static int emit_int(Out *o, int64_t v) {
    char tmp[24];
    char *w = tmp + sizeof tmp;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        *--w = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--w = '-';
    return emit(o, w, tmp + sizeof tmp - w);
}

static const double P10[] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22
};
#define TWO_53 9007199254740992.0

/* A double as a JSON number that parses back to exactly the same double.
 *
 * Short decimals (prices, rates) are found directly: if m / 10^k == d for an integer m
 * below 2^53, the string "m with k decimals" is correctly rounded to d by any parser,
 * because m and 10^k are exact doubles and IEEE division rounds correctly. Everything else
 * uses CPython's shortest repr. Non-finite values become null, as orjson writes them. */
static int emit_double(Out *o, double d) {
    if (!isfinite(d)) return emit(o, "null", 4);
    if (d == 0.0) return signbit(d) ? emit(o, "-0.0", 4) : emit(o, "0.0", 3);
    double a = fabs(d);
    if (a < 1e15 && a >= 1e-6) {
        for (int k = 0; k <= 9; k++) {
            double m = nearbyint(d * P10[k]);
            if (fabs(m) >= TWO_53 || m / P10[k] != d) continue;
            char tmp[40];
            char *w = tmp + sizeof tmp;
            uint64_t u = (uint64_t)fabs(m);
            int digits = 0;
            if (k == 0) {
                *--w = '0';
                *--w = '.';
            }
            do {
                *--w = (char)('0' + u % 10);
                u /= 10;
                if (++digits == k) *--w = '.';
            } while (u || digits <= k);
            if (*w == '.') *--w = '0';
            if (m < 0) *--w = '-';
            return emit(o, w, tmp + sizeof tmp - w);
        }
    }
    char *repr = PyOS_double_to_string(d, 'r', 0, 0, NULL);
    if (!repr) return -1;
    int rc = emit(o, repr, (Py_ssize_t)strlen(repr));
    PyMem_Free(repr);
    return rc;
}

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int emit_base64(Out *o, const unsigned char *s, Py_ssize_t n) {
    RESERVE(o, (n + 2) / 3 * 4 + 2);
    char *w = o->data + o->len;
    *w++ = '"';
    Py_ssize_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
        *w++ = B64[v >> 18];
        *w++ = B64[(v >> 12) & 63];
        *w++ = B64[(v >> 6) & 63];
        *w++ = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16;
        if (i + 1 < n) v |= (uint32_t)s[i + 1] << 8;
        *w++ = B64[v >> 18];
        *w++ = B64[(v >> 12) & 63];
        *w++ = i + 1 < n ? B64[(v >> 6) & 63] : '=';
        *w++ = '=';
    }
    *w++ = '"';
    o->len = w - o->data;
    return 0;
}

/* Days since 1970-01-01 -> civil date (H. Hinnant's algorithm), proleptic Gregorian. */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* Python's date and datetime reach from 0001-01-01 to 9999-12-31. */
#define MIN_DAY (-719162)
#define MAX_DAY 2932896

static inline void put2(char *w, int v) {
    w[0] = (char)('0' + v / 10);
    w[1] = (char)('0' + v % 10);
}

static inline void put_date(char *w, int64_t days) {
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    w[0] = (char)('0' + y / 1000);
    w[1] = (char)('0' + y / 100 % 10);
    w[2] = (char)('0' + y / 10 % 10);
    w[3] = (char)('0' + y % 10);
    w[4] = '-';
    put2(w + 5, m);
    w[7] = '-';
    put2(w + 8, d);
}

static int floor_divmod(int64_t a, int64_t b, int64_t *q, int64_t *r) {
    *q = a / b;
    *r = a % b;
    if (*r < 0) {
        *r += b;
        *q -= 1;
    }
    return 0;
}

/* "YYYY-MM-DDTHH:MM:SS[.ffffff]Z" for microseconds since the epoch; orjson's form. */
static int emit_timestamp_us(Out *o, int64_t us) {
    int64_t days, rem;
    floor_divmod(us, 86400000000LL, &days, &rem);
    if (days < MIN_DAY || days > MAX_DAY) return -1;
    RESERVE(o, 32);
    char *w = o->data + o->len;
    *w++ = '"';
    put_date(w, days);
    w += 10;
    int64_t secs = rem / 1000000;
    int frac = (int)(rem % 1000000);
    *w++ = 'T';
    put2(w, (int)(secs / 3600));
    w[2] = ':';
    put2(w + 3, (int)(secs / 60 % 60));
    w[5] = ':';
    put2(w + 6, (int)(secs % 60));
    w += 8;
    if (frac) {
        *w++ = '.';
        for (int div = 100000; div; div /= 10) *w++ = (char)('0' + frac / div % 10);
    }
    *w++ = 'Z';
    *w++ = '"';
    o->len = w - o->data;
    return 0;
}

/* ---------------------------------------------------------------- transcoding ---- */

typedef struct {
    const unsigned char *p;
    Py_ssize_t n;
} Key;

static int key_cmp(const void *a, const void *b) {
    const Key *x = a, *y = b;
    Py_ssize_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    if (c) return c;
    return (x->n > y->n) - (x->n < y->n);
}

/* A Python dict keeps one entry per key; JSON would keep both, so refuse duplicates. */
static int keys_distinct(Key *keys, Py_ssize_t n) {
    if (n <= 16) {
        for (Py_ssize_t i = 1; i < n; i++)
            for (Py_ssize_t j = 0; j < i; j++)
                if (keys[i].n == keys[j].n && memcmp(keys[i].p, keys[j].p, keys[i].n) == 0)
                    return 0;
        return 1;
    }
    qsort(keys, n, sizeof(Key), key_cmp);
    for (Py_ssize_t i = 1; i < n; i++)
        if (key_cmp(&keys[i - 1], &keys[i]) == 0) return 0;
    return 1;
}

static int transcode(const Node *nd, In *in, Out *o);

/* The count of the next block of an array or map; 0 ends it. Mirrors the Python reader.
 * A negative count is followed by the block's size in bytes; INT64_MIN has no positive
 * counterpart (negating it is undefined behaviour), and no block can hold that many
 * items anyway, so it is refused like any count beyond what remains. */
static int block_count(Py_ssize_t per_item, In *in, int64_t *count) {
    if (read_long(in, count) < 0) return -1;
    if (*count == 0) return 0;
    if (*count < 0) {
        int64_t ignored;
        if (*count == INT64_MIN) return -1;
        *count = -*count;
        if (read_long(in, &ignored) < 0) return -1;
    }
    if (per_item && *count > in->end - in->p) return -1;
    if (*count > in->items_left) return -1;
    in->items_left -= *count;
    return 0;
}

static int transcode_map(const Node *nd, In *in, Out *o) {
    Key small[16];
    Key *keys = small;
    Py_ssize_t nkeys = 0, cap = 16;
    int rc = -1;
    if (emit_char(o, '{') < 0) return -1;
    for (;;) {
        int64_t count;
        if (block_count(1 + nd->children[0]->min_size, in, &count) < 0)
            goto done;
        if (count == 0) break;
        for (int64_t i = 0; i < count; i++) {
            Py_ssize_t len;
            if (read_len(in, &len) < 0 || !utf8_valid(in->p, len)) goto done;
            if (nkeys == cap) {
                Key *bigger = PyMem_Malloc(sizeof(Key) * cap * 2);
                if (!bigger) goto done;
                memcpy(bigger, keys, sizeof(Key) * nkeys);
                if (keys != small) PyMem_Free(keys);
                keys = bigger;
                cap *= 2;
            }
            keys[nkeys].p = in->p;
            keys[nkeys].n = len;
            if ((nkeys++ && emit_char(o, ',') < 0) || emit_json_string(o, in->p, len) < 0 ||
                emit_char(o, ':') < 0)
                goto done;
            in->p += len;
            if (transcode(nd->children[0], in, o) < 0) goto done;
        }
    }
    if (keys_distinct(keys, nkeys)) rc = emit_char(o, '}');
done:
    if (keys != small) PyMem_Free(keys);
    return rc;
}

static int transcode(const Node *nd, In *in, Out *o) {
    int64_t v;
    Py_ssize_t len;
    switch (nd->kind) {
        case K_NULL:
            return emit(o, "null", 4);
        case K_BOOLEAN:
            if (in->p >= in->end) return -1;
            return *in->p++ == 1 ? emit(o, "true", 4) : emit(o, "false", 5);
        case K_INT: /* a varint beyond 32 bits is malformed Avro, not a bigger int */
            if (read_long(in, &v) < 0 || v < INT32_MIN || v > INT32_MAX) return -1;
            return emit_int(o, v);
        case K_LONG:
            if (read_long(in, &v) < 0) return -1;
            return emit_int(o, v);
        case K_FLOAT: {
            float f;
            uint32_t bits;
            if (in->end - in->p < 4) return -1;
            bits = (uint32_t)le_uint(in->p, 4);
            memcpy(&f, &bits, 4);
            in->p += 4;
            return emit_double(o, (double)f);
        }
        case K_DOUBLE: {
            double d;
            uint64_t bits;
            if (in->end - in->p < 8) return -1;
            bits = le_uint(in->p, 8);
            memcpy(&d, &bits, 8);
            in->p += 8;
            return emit_double(o, d);
        }
        case K_STRING:
            if (read_len(in, &len) < 0 || !utf8_valid(in->p, len)) return -1;
            in->p += len;
            return emit_json_string(o, in->p - len, len);
        case K_BYTES:
            if (read_len(in, &len) < 0) return -1;
            in->p += len;
            return emit_base64(o, in->p - len, len);
        case K_FIXED:
            if (in->end - in->p < nd->size) return -1;
            in->p += nd->size;
            return emit_base64(o, in->p - nd->size, nd->size);
        case K_ENUM:
            if (read_long(in, &v) < 0 || v < 0 || v >= nd->n) return -1;
            return emit(o, nd->texts[v], nd->text_lens[v]);
        case K_RECORD:
            if (nd->n == 0) return emit(o, "{}", 2);
            for (Py_ssize_t i = 0; i < nd->n; i++) {
                if (emit(o, nd->texts[i], nd->text_lens[i]) < 0) return -1;
                if (transcode(nd->children[i], in, o) < 0) return -1;
            }
            return emit_char(o, '}');
        case K_ARRAY: {
            Py_ssize_t written = 0;
            if (emit_char(o, '[') < 0) return -1;
            for (;;) {
                int64_t count;
                if (block_count(nd->children[0]->min_size, in, &count) < 0)
                    return -1;
                if (count == 0) break;
                for (int64_t i = 0; i < count; i++) {
                    if (written++ && emit_char(o, ',') < 0) return -1;
                    if (transcode(nd->children[0], in, o) < 0) return -1;
                }
            }
            return emit_char(o, ']');
        }
        case K_MAP:
            return transcode_map(nd, in, o);
        case K_UNION:
            if (read_long(in, &v) < 0 || v < 0 || v >= nd->n) return -1;
            return transcode(nd->children[v], in, o);
        case K_TS_MILLIS:
            if (read_long(in, &v) < 0) return -1;
            if (v < -62135596800000LL || v >= 253402300800000LL) return -1;
            return emit_timestamp_us(o, v * 1000);
        case K_TS_MICROS:
            if (read_long(in, &v) < 0) return -1;
            return emit_timestamp_us(o, v);
        case K_DATE: {
            if (read_long(in, &v) < 0 || v < MIN_DAY || v > MAX_DAY) return -1;
            RESERVE(o, 12);
            o->data[o->len] = '"';
            put_date(o->data + o->len + 1, v);
            o->data[o->len + 11] = '"';
            o->len += 12;
            return 0;
        }
        case K_DECIMAL: {
            /* int.from_bytes(raw, "big", signed=True) / 10**scale, correctly rounded: exact
             * below 2^53 with scale <= 22, where one IEEE division is correctly rounded. */
            if (read_len(in, &len) < 0 || len > 7 || nd->size > 22) return -1;
            int64_t n = 0;
            if (len) n = (in->p[0] & 0x80) ? -1 : 0;
            for (Py_ssize_t i = 0; i < len; i++) n = (int64_t)((uint64_t)n << 8) | in->p[i];
            in->p += len;
            if (n > (INT64_C(1) << 53) || n < -(INT64_C(1) << 53)) return -1;
            return emit_double(o, (double)n / P10[nd->size]);
        }
    }
    return -1;
}

/* ------------------------------------------------------------- building nodes ---- */

static void node_free(Node *nd) {
    if (!nd) return;
    if (nd->children) {
        Py_ssize_t count = (nd->kind == K_ARRAY || nd->kind == K_MAP) ? 1 : nd->n;
        for (Py_ssize_t i = 0; i < count; i++) node_free(nd->children[i]);
        PyMem_Free(nd->children);
    }
    if (nd->texts) {
        for (Py_ssize_t i = 0; i < nd->n; i++) PyMem_Free(nd->texts[i]);
        PyMem_Free(nd->texts);
    }
    PyMem_Free(nd->text_lens);
    PyMem_Free(nd);
}

static Node *node_build(PyObject *spec, int depth);

static int copy_text(Node *nd, Py_ssize_t i, PyObject *text) {
    char *buf;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(text, &buf, &n) < 0) return -1;
    nd->texts[i] = PyMem_Malloc(n ? n : 1);
    if (!nd->texts[i]) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(nd->texts[i], buf, n);
    nd->text_lens[i] = n;
    return 0;
}

static int alloc_parts(Node *nd, Py_ssize_t n, int children, int texts) {
    nd->n = n;
    if (children && !(nd->children = PyMem_Calloc(n ? n : 1, sizeof(Node *)))) goto oom;
    if (texts) {
        if (!(nd->texts = PyMem_Calloc(n ? n : 1, sizeof(char *)))) goto oom;
        if (!(nd->text_lens = PyMem_Calloc(n ? n : 1, sizeof(Py_ssize_t)))) goto oom;
    }
    return 0;
oom:
    PyErr_NoMemory();
    return -1;
}

/* spec: (kind,), ("fixed", size), ("decimal", scale), ("enum", (text, ...)),
 * ("record", ((text, spec), ...)), ("array" | "map", spec), ("union", (spec, ...)).
 * A top-level field with an empty text is read and checked but not written. */
static Node *node_build(PyObject *spec, int depth) {
    if (depth > 200) {
        PyErr_SetString(PyExc_ValueError, "schema nests too deeply for the transcoder");
        return NULL;
    }
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 1) {
        PyErr_SetString(PyExc_TypeError, "a node spec is a non-empty tuple");
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(spec, 0));
    if (!name) return NULL;
    int kind = -1;
    for (int i = 0; KIND_NAMES[i]; i++)
        if (strcmp(name, KIND_NAMES[i]) == 0) kind = i;
    if (kind < 0) {
        PyErr_Format(PyExc_ValueError, "unknown node kind %s", name);
        return NULL;
    }
    Node *nd = PyMem_Calloc(1, sizeof(Node));
    if (!nd) return (Node *)PyErr_NoMemory();
    nd->kind = kind;
    PyObject *arg = PyTuple_GET_SIZE(spec) > 1 ? PyTuple_GET_ITEM(spec, 1) : NULL;
    nd->min_size = kind == K_NULL ? 0 : kind == K_FLOAT ? 4 : kind == K_DOUBLE ? 8 : 1;
    switch (kind) {
        case K_FIXED:
        case K_DECIMAL:
            if (!arg || (nd->size = PyLong_AsSsize_t(arg)) < 0) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad size");
                goto fail;
            }
            if (kind == K_FIXED) nd->min_size = nd->size;
            break;
        case K_ENUM:
        case K_RECORD:
        case K_UNION: {
            if (!arg || !PyTuple_Check(arg)) {
                PyErr_SetString(PyExc_TypeError, "expected a tuple of parts");
                goto fail;
            }
            Py_ssize_t n = PyTuple_GET_SIZE(arg);
            if (alloc_parts(nd, n, kind != K_ENUM, kind != K_UNION) < 0) goto fail;
            if (kind == K_RECORD) nd->min_size = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *part = PyTuple_GET_ITEM(arg, i);
                if (kind == K_ENUM) {
                    if (copy_text(nd, i, part) < 0) goto fail;
                } else if (kind == K_UNION) {
                    if (!(nd->children[i] = node_build(part, depth + 1))) goto fail;
                } else {
                    if (!PyTuple_Check(part) || PyTuple_GET_SIZE(part) != 2) {
                        PyErr_SetString(PyExc_TypeError, "a record field is (text, spec)");
                        goto fail;
                    }
                    if (copy_text(nd, i, PyTuple_GET_ITEM(part, 0)) < 0) goto fail;
                    if (!(nd->children[i] = node_build(PyTuple_GET_ITEM(part, 1), depth + 1)))
                        goto fail;
                    nd->min_size += nd->children[i]->min_size;
                }
            }
            break;
        }
        case K_ARRAY:
        case K_MAP:
            if (!arg) {
                PyErr_SetString(PyExc_TypeError, "array and map take an item spec");
                goto fail;
            }
            if (alloc_parts(nd, 1, 1, 0) < 0) goto fail;
            if (!(nd->children[0] = node_build(arg, depth + 1))) goto fail;
            break;
        default:
            break;
    }
    return nd;
fail:
    node_free(nd);
    return NULL;
}

/* ------------------------------------------------------------- the Python type ---- */

typedef struct Transcoder {
    PyObject_HEAD
    Node *root;
    unsigned char header[5];
    Py_ssize_t id_index;      /* top-level field that is the _id; -1: the Kafka key */
    Py_ssize_t version_index; /* top-level field that is the version; -1: the offset */
    char *suffix;             /* written after the last field: "}" or defaulted fields + "}" */
    Py_ssize_t suffix_len;
    int64_t max_items;        /* array and map items one record may hold, all blocks together */
    Py_ssize_t max_document_bytes;
    struct Transcoder *next;  /* asked for values framed with another header; may be NULL */
} Transcoder;

static PyTypeObject TranscoderType;

static void Transcoder_dealloc(Transcoder *self) {
    node_free(self->root);
    PyMem_Free(self->suffix);
    Py_XDECREF(self->next);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Transcoder_init(Transcoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"program", "header", "id_index", "version_index", "suffix", "next",
                             "max_items", "max_document_bytes", NULL};
    PyObject *program, *next = Py_None;
    const char *header, *suffix = "}";
    Py_ssize_t header_len, suffix_len = 1, id_index, version_index;
    long long max_items = -1;            /* both limits are required: the settings and */
    Py_ssize_t max_document_bytes = -1;  /* ingest.avro.reader own them, not this file */
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Oy#nn|y#O$Ln", kwlist, &program, &header,
                                     &header_len, &id_index, &version_index, &suffix,
                                     &suffix_len, &next, &max_items, &max_document_bytes))
        return -1;
    if (max_items < 0 || max_document_bytes < 1 || max_document_bytes > PY_SSIZE_T_MAX / 4) {
        PyErr_SetString(PyExc_ValueError,
                        "max_items (>= 0) and max_document_bytes (>= 1) are required");
        return -1;
    }
    if (header_len != 5) {
        PyErr_SetString(PyExc_ValueError, "header is the 5-byte Confluent prefix");
        return -1;
    }
    if (suffix_len < 1 || suffix[suffix_len - 1] != '}') {
        PyErr_SetString(PyExc_ValueError, "the suffix ends the document with '}'");
        return -1;
    }
    if (next != Py_None && !PyObject_TypeCheck(next, &TranscoderType)) {
        PyErr_SetString(PyExc_TypeError, "next is a Transcoder or None");
        return -1;
    }
    for (Transcoder *t = next == Py_None ? NULL : (Transcoder *)next; t; t = t->next) {
        if (t == self) { /* a loop would never end on an unknown header */
            PyErr_SetString(PyExc_ValueError, "next leads back to this transcoder");
            return -1;
        }
    }
    Node *root = node_build(program, 0);
    if (!root) return -1;
    if (root->kind != K_RECORD || id_index >= root->n || version_index >= root->n) {
        node_free(root);
        PyErr_SetString(PyExc_ValueError, "the program is a record holding both fields");
        return -1;
    }
    char *copy = PyMem_Malloc(suffix_len);
    if (!copy) {
        node_free(root);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, suffix, suffix_len);
    memcpy(self->header, header, 5);
    self->id_index = id_index;
    self->version_index = version_index;
    node_free(self->root);
    self->root = root;
    PyMem_Free(self->suffix);
    self->suffix = copy;
    self->suffix_len = suffix_len;
    self->max_items = max_items;
    self->max_document_bytes = max_document_bytes;
    Py_XSETREF(self->next, next == Py_None ? NULL : (Transcoder *)Py_NewRef(next));
    return 0;
}

/* The leaf a top-level field's value decoded to, re-read from where it started. */
static const Node *leaf_at(const Node *nd, In *in) {
    while (nd->kind == K_UNION) {
        int64_t v;
        if (read_long(in, &v) < 0 || v < 0 || v >= nd->n) return NULL;
        nd = nd->children[v];
    }
    return nd;
}

/* str(value) of the id field, as ingest.pipeline.transform gives it; NULL for the Python path. */
static PyObject *id_from(const Node *field, const unsigned char *start, const unsigned char *end) {
    In in = {start, end};
    const Node *leaf = leaf_at(field, &in);
    if (!leaf) return NULL;
    if (leaf->kind == K_STRING) {
        Py_ssize_t len;
        if (read_len(&in, &len) < 0 || len == 0) return NULL;
        return PyUnicode_DecodeUTF8((const char *)in.p, len, NULL);
    }
    if (leaf->kind == K_LONG || leaf->kind == K_INT) {
        int64_t v;
        if (read_long(&in, &v) < 0) return NULL;
        return PyUnicode_FromFormat("%lld", (long long)v);
    }
    return NULL;
}

/* ingest.pipeline.transform.to_version of the field: ints as is, timestamps in epoch milliseconds,
 * dates in days. Anything else is the Python path's to refuse. */
static int version_from(const Node *field, const unsigned char *start, const unsigned char *end,
                        int64_t *out) {
    In in = {start, end};
    const Node *leaf = leaf_at(field, &in);
    int64_t v, q, r;
    if (!leaf || read_long(&in, &v) < 0) return -1;
    switch (leaf->kind) {
        case K_INT:
        case K_LONG:
        case K_TS_MILLIS:
        case K_DATE:
            *out = v;
            return 0;
        case K_TS_MICROS:
            floor_divmod(v, 1000, &q, &r);
            *out = q;
            return 0;
    }
    return -1;
}

PyDoc_STRVAR(transcode_doc,
"transcode(value, key, offset) -> (doc_id, version, body) | None\n\n"
"The index action parts for one framed value, or None when the Python path must decide.");

static PyObject *Transcoder_transcode(Transcoder *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "transcode(value, key, offset)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) Py_RETURN_NONE;
    const unsigned char *buf = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    if (size < 5) Py_RETURN_NONE;
    while (memcmp(buf, self->header, 5) != 0) { /* another writer schema's variant? */
        if (!self->next) Py_RETURN_NONE;
        self = self->next;
    }

    char stack[4096];
    Out o = {stack, 0, sizeof stack, self->max_document_bytes, 0};
    In in = {buf + 5, buf + size, self->max_items};
    const Node *root = self->root;
    const unsigned char *id_start = NULL, *version_start = NULL;
    int ok = 1;
    if (root->n == 0) {
        /* "{" then the suffix without the comma that would follow a field */
        Py_ssize_t skip = self->suffix_len > 1 && self->suffix[0] == ',';
        ok = emit_char(&o, '{') == 0 &&
             emit(&o, self->suffix + skip, self->suffix_len - skip) == 0;
    } else {
        for (Py_ssize_t i = 0; ok && i < root->n; i++) {
            Py_ssize_t mark = o.len;
            if (i == self->id_index) id_start = in.p;
            if (i == self->version_index) version_start = in.p;
            ok = emit(&o, root->texts[i], root->text_lens[i]) == 0 &&
                 transcode(root->children[i], &in, &o) == 0;
            if (root->text_lens[i] == 0) o.len = mark; /* dropped by the reader: read, unwritten */
        }
        ok = ok && emit(&o, self->suffix, self->suffix_len) == 0;
    }
    ok = ok && in.p == in.end; /* trailing bytes are the Python path's to report */
    ok = ok && o.len <= o.limit; /* the exact size check: growth stops near the limit */

    PyObject *doc_id = NULL, *version = NULL, *body = NULL, *result = NULL;
    if (!ok) goto done;
    if (id_start) {
        doc_id = id_from(root->children[self->id_index], id_start, in.end);
    } else if (PyBytes_Check(args[1])) {
        doc_id = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]), NULL);
    }
    if (!doc_id) goto done;
    if (version_start) {
        int64_t v;
        if (version_from(root->children[self->version_index], version_start, in.end, &v) < 0)
            goto done;
        version = PyLong_FromLongLong(v);
    } else {
        version = Py_NewRef(args[2]);
    }
    if (!version) goto done;
    body = PyBytes_FromStringAndSize(o.data, o.len);
    if (!body) goto done;
    result = PyTuple_Pack(3, doc_id, version, body);
done:
    if (o.on_heap) PyMem_Free(o.data);
    Py_XDECREF(doc_id);
    Py_XDECREF(version);
    Py_XDECREF(body);
    if (result) return result;
    /* e.g. a key that is not UTF-8, or memory running out (a failed allocation):
     * never an exception out of the hot path. The Python path names the problem, and a
     * record too big to render there is dead-lettered as one. */
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyMethodDef Transcoder_methods[] = {
    {"transcode", (PyCFunction)(void (*)(void))Transcoder_transcode, METH_FASTCALL, transcode_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TranscoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ingest.avro._transcode.Transcoder",
    .tp_doc = PyDoc_STR("Avro (one writer schema, else the next transcoder's) -> JSON document."),
    .tp_basicsize = sizeof(Transcoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Transcoder_init,
    .tp_dealloc = (destructor)Transcoder_dealloc,
    .tp_methods = Transcoder_methods,
};

static struct PyModuleDef transcode_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ingest.avro._transcode",
    .m_doc = PyDoc_STR("Native Avro -> JSON transcoder for the pipeline's hot path."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__transcode(void) {
    if (PyType_Ready(&TranscoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&transcode_module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Transcoder", (PyObject *)&TranscoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
