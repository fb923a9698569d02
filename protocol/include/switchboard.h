/*
 * switchboard.h -- the native module C ABI, version 1 (rfcs/0002-native-module-abi.md).
 *
 * A native module is a shared library exporting one symbol:
 *
 *     const sb_module *switchboard_module_entry(void);
 *
 * The broker calls it once per mapping, from any thread: when a load, reload or info first
 * meets these exact bytes (by SHA-256) in this broker process. Later loads of the same bytes,
 * from any path and under any name, reuse the table it returned without calling it again
 * (so instances share the library's globals); a table that fails the checks is not kept,
 * and the next attempt calls it again (RFC 2 §2.2). The broker checks abi_version and size,
 * reads the name, and calls main() once per instance on a thread of its own. main() loops on
 * host->recv() and answers with host->send() until it receives the control message
 * "shutdown", then returns 0.
 * Only bytes and C scalars cross this boundary. Must match protocol/src/abi.rs.
 */
#ifndef SWITCHBOARD_H
#define SWITCHBOARD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SB_ABI_VERSION 1

/* message types (RFC 1) */
#define SB_MSG_REQUEST  1
#define SB_MSG_RESPONSE 2
#define SB_MSG_EVENT    4
#define SB_MSG_CONTROL  8

/* flags (RFC 1) */
#define SB_FLAG_NO_RESPONSE 0x01
#define SB_FLAG_STREAMING   0x02
#define SB_FLAG_UPSTREAM    0x04
#define SB_FLAG_PRIVATE     0x08

#define SB_NODEID_ANY 0xffffffffu

/* sb_msg.rolemask bits (RFC 1): a request without SB_ROLE_OWNER comes from a guest */
#define SB_ROLE_OWNER 0x1u
#define SB_ROLE_USER  0x2u

/* return codes of the host functions */
#define SB_OK         0
#define SB_EINVAL     22
#define SB_ECONNRESET 104
#define SB_ETIMEDOUT  110
#define SB_EXIT_PANIC 101

/* Error numbers for sb_msg.errnum (RFC 1 §4): these equal <errno.h>'s values on Linux, and
 * are the numbers on the wire whatever the platform. A module may send any other errno. */
#define SWITCHBOARD_EPERM         1   /* operation not permitted */
#define SWITCHBOARD_ENOENT        2   /* no such file, module or entry */
#define SWITCHBOARD_EIO           5   /* input/output error */
#define SWITCHBOARD_ENOEXEC       8   /* not a module this broker can load */
#define SWITCHBOARD_EAGAIN        11  /* try again */
#define SWITCHBOARD_ENOMEM        12  /* out of memory */
#define SWITCHBOARD_EBUSY         16  /* busy */
#define SWITCHBOARD_EEXIST        17  /* already exists */
#define SWITCHBOARD_EINVAL        22  /* invalid argument */
#define SWITCHBOARD_EDEADLK       35  /* the call would deadlock */
#define SWITCHBOARD_ENOSYS        38  /* no such service or method */
#define SWITCHBOARD_ENODATA       61  /* end of stream */
#define SWITCHBOARD_EPROTO        71  /* protocol error, a malformed request */
#define SWITCHBOARD_EMSGSIZE      90  /* message too long */
#define SWITCHBOARD_ECONNRESET    104 /* connection reset */
#define SWITCHBOARD_ETIMEDOUT     110 /* timed out */
#define SWITCHBOARD_EHOSTUNREACH  113 /* the module died with the request in flight */
#define SWITCHBOARD_ECANCELED     125 /* canceled */

/* log severities (syslog) */
#define SB_LOG_ERR     3
#define SB_LOG_WARNING 4
#define SB_LOG_INFO    6
#define SB_LOG_DEBUG   7

typedef struct sb_bytes {
    const uint8_t *ptr; /* may be NULL when len == 0 */
    size_t len;
} sb_bytes;

typedef struct sb_msg {
    uint8_t msg_type;
    uint8_t flags;
    uint16_t reserved;   /* zero */
    uint32_t matchtag;
    uint32_t nodeid;
    uint32_t userid;
    uint32_t rolemask;
    uint32_t errnum;
    uint32_t seq;
    sb_bytes topic;      /* UTF-8, not NUL-terminated */
    sb_bytes errstr;     /* ptr == NULL: no error text */
    const uint64_t *route;
    size_t route_len;
    sb_bytes payload;    /* by convention a msgpack map */
} sb_msg;

typedef struct sb_host {
    uint32_t abi_version;
    uint32_t size;
    void *ctx;
    sb_bytes name;
    const sb_bytes *args;
    size_t nargs;
    sb_bytes config;     /* msgpack map */
    /* blocks up to timeout_ms (< 0: forever); SB_OK, SB_ETIMEDOUT or SB_ECONNRESET.
       The views in *msg stay valid until the next recv on this host. Module thread only. */
    int32_t (*recv)(void *ctx, sb_msg *msg, int32_t timeout_ms);
    /* copies the message; SB_OK or SB_EINVAL. Callable from any thread. */
    int32_t (*send)(void *ctx, const sb_msg *msg);
    void (*log)(void *ctx, int32_t level, const uint8_t *text, size_t len);
} sb_host;

/* A method the module declares (RFC 2 §3.1): `name` is the part of the topic after the
 * service ("add" for "calc.add"), `doc` one line saying what it does (NULL: none), both
 * NUL-terminated UTF-8. */
/* sb_method.flags: guests (other local users) may call it. A declaration only: the broker
 * does not check it, the module does (a request whose rolemask lacks SB_ROLE_OWNER, to a
 * method without this flag, is answered EPERM). */
#define SB_METHOD_GUEST 0x1u
typedef struct sb_method {
    const char *name;
    const char *doc;
    uint32_t flags;       /* SB_METHOD_GUEST or 0 */
    uint32_t reserved;    /* zero */
} sb_method;

/* An event the module publishes: `name` is the whole topic ("calc.overflow"), `doc` one line
 * saying when and with what payload (NULL: none). */
typedef struct sb_event {
    const char *name;
    const char *doc;
} sb_event;

/* The module table. Every string and array it points to is read when the entry function
 * has returned (and copied then); keep them static, like the table. The fields after `main`
 * were appended to version 1: a table built before them (size 24) still loads and declares
 * nothing, and a module may leave them zero. */
#define SB_MODULE_OTHERWISE 0x1u /* sb_module.flags: it answers methods it does not list */
typedef struct sb_module {
    uint32_t abi_version; /* SB_ABI_VERSION */
    uint32_t size;        /* sizeof(sb_module) */
    const char *name;     /* default name, NUL-terminated */
    int32_t (*main)(const sb_host *host);
    const sb_method *methods; /* nmethods declared methods; NULL when nmethods is 0 */
    size_t nmethods;
    const sb_event *events;   /* nevents declared events; NULL when nevents is 0 */
    size_t nevents;
    uint32_t flags;       /* SB_MODULE_OTHERWISE or 0 */
    uint32_t reserved;    /* zero */
} sb_module;

/* Build a response to `req` in `resp` (borrowing req's topic and route). */
static inline void sb_response_init(sb_msg *resp, const sb_msg *req)
{
    sb_msg r = {0};
    r.msg_type = SB_MSG_RESPONSE;
    r.flags = req->flags & SB_FLAG_STREAMING;
    r.matchtag = req->matchtag;
    r.nodeid = SB_NODEID_ANY;
    r.topic = req->topic;
    r.route = req->route;
    r.route_len = req->route_len;
    *resp = r;
}

#ifdef __cplusplus
}
#endif
#endif /* SWITCHBOARD_H */
