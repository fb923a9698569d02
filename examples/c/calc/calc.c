/*
 * calc.c -- an example native Switchboard module in C whose payloads are msgpack, decoded and
 * encoded with msgpack-c (Debian: libmsgpack-dev; RFC 2 §7 says how to build against it).
 *
 *     calc.add {"a": 2, "b": 3}   ->   {"sum": 5}
 *
 * `a` and `b` are 64-bit signed integers; other fields are ignored. A request that does not
 * decode is answered EPROTO `calc.add: malformed request: WHAT`, naming the field when one is
 * at fault (`b: expected an integer, got a string`, `missing field `b``), in the shape the Rust
 * helper's typed handlers use; a sum that does not fit is EINVAL, and publishes the event
 * `calc.overflow` {"a": A, "b": B}. It follows RFC 3 §5.1's conventions: `calc.ping` echoes
 * its payload, `calc.methods` answers what its module table declares, an unknown method is
 * ENOSYS naming `add` (so a config-update makes the broker reload it with the new table),
 * NO_RESPONSE requests and `calc.disconnect` are not answered, a STREAMING request's answer
 * is followed by ENODATA.
 *
 * Its module table declares its method and its event (RFC 2 §3.1), so `modctl info
 * ./libcalc.so` lists them without running it.
 *
 * Build, from the repository root (Debian 13 names the package libmsgpack-c-dev and its
 * pkg-config file msgpack-c):
 *
 *     cc -shared -fPIC -Wall -I protocol/include -o libcalc.so examples/c/calc/calc.c \
 *         $(pkg-config --cflags --libs msgpack)
 *
 * then `modctl load ./libcalc.so` and `modctl rpc calc.add '{"a": 2, "b": 3}'`. The end-to-end
 * tests build it the same way (tests/e2e/c_modules.rs).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "switchboard.h"

/* Send an error response to `req`: errnum and a printf-style text (RFC 1 §4). */
static void reply_error(const sb_host *host, const sb_msg *req, uint32_t errnum, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len >= sizeof text) {
        /* Truncated: cut before a partial UTF-8 character (send refuses invalid UTF-8). */
        len = sizeof text - 1;
        while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
            len--;
    }
    sb_msg resp;
    sb_response_init(&resp, req); /* also keeps a STREAMING bit: an error ends a stream */
    resp.errnum = errnum;
    resp.errstr.ptr = (const uint8_t *)text;
    resp.errstr.len = len;
    host->send(host->ctx, &resp);
}

/* EPROTO `TOPIC: malformed request: WHAT`. */
#define malformed(host, req, fmt, ...)                                                            \
    reply_error(host, req, SWITCHBOARD_EPROTO, "%.*s: malformed request: " fmt,                  \
                (int)(req)->topic.len, (const char *)(req)->topic.ptr, __VA_ARGS__)

#define COUNT(a) (sizeof(a) / sizeof(a)[0])

/* What this module declares (RFC 2 §3.1): the broker reads it from the table when it opens
 * the library, for `module.info` and `module.list`; `calc.methods` answers it too. Static,
 * like the table. */
static const sb_method calc_methods[] = {
    {.name = "add", .doc = "the sum of `a` and `b` (64-bit signed integers), as `sum`; EINVAL if it does not fit"},
};
static const sb_event calc_events[] = {
    {.name = "calc.overflow", .doc = "an add did not fit in 64 bits: `{a, b}`"},
};

/* Send a successful response with `payload`; a STREAMING request's stream then ends with
 * ENODATA (RFC 1 §8.7). send copies, so the caller may reuse the buffer at once. */
static void reply(const sb_host *host, const sb_msg *req, sb_bytes payload)
{
    sb_msg resp;
    sb_response_init(&resp, req);
    resp.payload = payload;
    host->send(host->ctx, &resp);
    if (req->flags & SB_FLAG_STREAMING)
        reply_error(host, req, SWITCHBOARD_ENODATA, "end of stream");
}

/* What kind of msgpack value `o` is, for error texts. */
static const char *kind(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_BIN: return "binary data";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    default: return "an extension value";
    }
}

/* The value of field `name` in map `m` (a string key), or NULL when it has none. */
static const msgpack_object *field(const msgpack_object_map *m, const char *name)
{
    size_t n = strlen(name);
    for (uint32_t i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0)
            return &m->ptr[i].val;
    }
    return NULL;
}

/* Field `name` of `m` as an int64_t in *out: 1, or 0 once `req` is answered EPROTO. */
static int int_field(const sb_host *host, const sb_msg *req, const msgpack_object_map *m, const char *name,
                     int64_t *out)
{
    const msgpack_object *v = field(m, name);
    if (v == NULL) {
        malformed(host, req, "missing field `%s`", name);
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
        *out = v->via.i64;
        return 1;
    }
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT64_MAX) {
        *out = (int64_t)v->via.u64;
        return 1;
    }
    if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
        malformed(host, req, "%s: %" PRIu64 " does not fit in a 64-bit signed integer", name, v->via.u64);
    else
        malformed(host, req, "%s: expected an integer, got %s", name, kind(v));
    return 0;
}

/* Pack a string (msgpack-c has no one-call form). */
static int pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    return msgpack_pack_str(pk, n) != 0 || msgpack_pack_str_body(pk, s, n) != 0;
}

/* calc.methods (RFC 3 §5.1): {methods: [{name, guest, doc}], otherwise, events: [{name, doc}]},
 * made from the same arrays the module table points to, so the two cannot disagree. */
static void methods(const sb_host *host, const sb_msg *req, msgpack_sbuffer *out)
{
    msgpack_sbuffer_clear(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    int failed = msgpack_pack_map(&pk, 3) != 0 || pack_str(&pk, "methods") || msgpack_pack_array(&pk, COUNT(calc_methods)) != 0;
    for (size_t i = 0; i < COUNT(calc_methods) && !failed; i++) {
        const sb_method *m = &calc_methods[i];
        failed = msgpack_pack_map(&pk, 3) != 0 || pack_str(&pk, "name") || pack_str(&pk, m->name)
                 || pack_str(&pk, "guest")
                 || ((m->flags & SB_METHOD_GUEST) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk)) != 0
                 || pack_str(&pk, "doc") || pack_str(&pk, m->doc);
    }
    failed = failed || pack_str(&pk, "otherwise") || msgpack_pack_false(&pk) != 0 || pack_str(&pk, "events")
             || msgpack_pack_array(&pk, COUNT(calc_events)) != 0;
    for (size_t i = 0; i < COUNT(calc_events) && !failed; i++)
        failed = msgpack_pack_map(&pk, 2) != 0 || pack_str(&pk, "name") || pack_str(&pk, calc_events[i].name)
                 || pack_str(&pk, "doc") || pack_str(&pk, calc_events[i].doc);
    if (failed)
        reply_error(host, req, SWITCHBOARD_ENOMEM, "%s", "out of memory encoding the answer");
    else
        reply(host, req, (sb_bytes){(const uint8_t *)out->data, out->size});
}

/* Publish calc.overflow {"a": A, "b": B}: an event is a message of type SB_MSG_EVENT that
 * `send` routes to every subscriber. */
static void publish_overflow(const sb_host *host, int64_t a, int64_t b, msgpack_sbuffer *out)
{
    msgpack_sbuffer_clear(out);
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    if (msgpack_pack_map(&pk, 2) != 0 || pack_str(&pk, "a") || msgpack_pack_int64(&pk, a) != 0
        || pack_str(&pk, "b") || msgpack_pack_int64(&pk, b) != 0)
        return;
    static const char topic[] = "calc.overflow";
    sb_msg ev = {0};
    ev.msg_type = SB_MSG_EVENT;
    ev.nodeid = SB_NODEID_ANY;
    ev.topic = (sb_bytes){(const uint8_t *)topic, sizeof topic - 1};
    ev.payload = (sb_bytes){(const uint8_t *)out->data, out->size};
    host->send(host->ctx, &ev);
}

/* calc.add: {"a": A, "b": B} -> {"sum": A + B}. `out` is the module's answer buffer. */
static void add(const sb_host *host, const sb_msg *req, msgpack_sbuffer *out)
{
    if (req->payload.len == 0) {
        malformed(host, req, "expected a map, got %s", "an empty payload");
        return;
    }
    msgpack_unpacked request;
    msgpack_unpacked_init(&request);
    size_t offset = 0;
    msgpack_unpack_return rc =
        msgpack_unpack_next(&request, (const char *)req->payload.ptr, req->payload.len, &offset);
    int64_t a, b, sum;
    if (rc == MSGPACK_UNPACK_NOMEM_ERROR) {
        reply_error(host, req, SWITCHBOARD_ENOMEM, "%s", "out of memory decoding the request");
    } else if (rc != MSGPACK_UNPACK_SUCCESS) {
        malformed(host, req, "%s", rc == MSGPACK_UNPACK_CONTINUE ? "the payload is truncated msgpack"
                                                                 : "the payload is not msgpack");
    } else if (request.data.type != MSGPACK_OBJECT_MAP) {
        malformed(host, req, "expected a map, got %s", kind(&request.data));
    } else if (int_field(host, req, &request.data.via.map, "a", &a)
               && int_field(host, req, &request.data.via.map, "b", &b)) {
        if (__builtin_add_overflow(a, b, &sum)) {
            reply_error(host, req, SWITCHBOARD_EINVAL, "%" PRId64 " + %" PRId64 " does not fit in 64 bits", a, b);
            publish_overflow(host, a, b, out);
        } else {
            /* The answer: a map of one entry, packed into the reused buffer. */
            msgpack_sbuffer_clear(out);
            msgpack_packer pk;
            msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
            if (msgpack_pack_map(&pk, 1) != 0 || msgpack_pack_str(&pk, 3) != 0
                || msgpack_pack_str_body(&pk, "sum", 3) != 0 || msgpack_pack_int64(&pk, sum) != 0)
                reply_error(host, req, SWITCHBOARD_ENOMEM, "%s", "out of memory encoding the answer");
            else
                reply(host, req, (sb_bytes){(const uint8_t *)out->data, out->size});
        }
    }
    /* The decoded objects live in a zone (their strings point into the payload): free it. */
    msgpack_unpacked_destroy(&request);
}

static int is(const char *s, size_t len, const char *want)
{
    return len == strlen(want) && memcmp(s, want, len) == 0;
}

static int32_t calc_main(const sb_host *host)
{
    if (host->abi_version != SB_ABI_VERSION || host->size < sizeof(sb_host))
        return 1; /* a host this module does not understand (RFC 2 §3.4) */
    static const char hello[] = "calc module running";
    host->log(host->ctx, SB_LOG_INFO, (const uint8_t *)hello, sizeof hello - 1);

    /* Per-instance state lives here, not in globals: every instance of this library shares
       its globals (RFC 2 §2.2). */
    msgpack_sbuffer out;
    msgpack_sbuffer_init(&out);
    for (;;) {
        sb_msg req;
        int32_t rc = host->recv(host->ctx, &req, -1);
        if (rc == SB_ECONNRESET)
            break; /* the broker closed the link */
        if (rc != SB_OK)
            continue;
        const char *topic = (const char *)req.topic.ptr;
        if (req.msg_type == SB_MSG_CONTROL && is(topic, req.topic.len, "shutdown"))
            break;
        if (req.msg_type != SB_MSG_REQUEST || (req.flags & SB_FLAG_NO_RESPONSE))
            continue; /* events, responses, NAME.disconnect */
        /* The topic is SERVICE.METHOD, SERVICE being this instance's name. */
        const char *dot = req.topic.len ? memchr(topic, '.', req.topic.len) : NULL;
        const char *method = dot ? dot + 1 : "";
        size_t method_len = dot ? req.topic.len - (size_t)(method - topic) : 0;
        if (is(method, method_len, "add"))
            add(host, &req, &out);
        else if (is(method, method_len, "ping"))
            reply(host, &req, req.payload);
        else if (is(method, method_len, "methods"))
            methods(host, &req, &out);
        else /* RFC 3 §5.1's text, listing the methods (ping, a convention, is not listed) */
            reply_error(host, &req, SWITCHBOARD_ENOSYS, "service '%.*s' has no method '%.*s' (its methods: add)",
                        (int)host->name.len, (const char *)host->name.ptr, (int)method_len, method);
    }
    msgpack_sbuffer_destroy(&out);
    return 0;
}

static const sb_module calc = {
    .abi_version = SB_ABI_VERSION,
    .size = sizeof(sb_module),
    .name = "calc",
    .main = calc_main,
    .methods = calc_methods,
    .nmethods = COUNT(calc_methods),
    .events = calc_events,
    .nevents = COUNT(calc_events),
};

const sb_module *switchboard_module_entry(void)
{
    return &calc;
}
