/* A module built before the module table had declarations (RFC 2 §3.1): its table is the
 * 24 bytes of version 1's first layout, declared here as that header declared it, and
 * `size` says so. It must still load, run, and declare nothing. Answers every request with
 * its own payload. */
#include <string.h>
#include "switchboard.h"

/* sb_module as switchboard.h first declared it. */
typedef struct old_module {
    uint32_t abi_version;
    uint32_t size;
    const char *name;
    int32_t (*main)(const sb_host *host);
} old_module;

_Static_assert(sizeof(old_module) == 24, "version 1's first module table is 24 bytes");

static int32_t old_main(const sb_host *host)
{
    static const char hello[] = "old table module running";
    host->log(host->ctx, SB_LOG_INFO, (const uint8_t *)hello, sizeof(hello) - 1);
    for (;;) {
        sb_msg msg;
        int32_t rc = host->recv(host->ctx, &msg, -1);
        if (rc == SB_ECONNRESET)
            return 0;
        if (rc != SB_OK)
            continue;
        if (msg.msg_type == SB_MSG_CONTROL && msg.topic.len == 8 && memcmp(msg.topic.ptr, "shutdown", 8) == 0)
            return 0;
        if (msg.msg_type != SB_MSG_REQUEST || (msg.flags & SB_FLAG_NO_RESPONSE))
            continue;
        sb_msg resp;
        sb_response_init(&resp, &msg);
        resp.payload = msg.payload;
        host->send(host->ctx, &resp);
    }
}

/* Followed by bytes that would read as a declaration if the broker looked past `size`. */
static const struct {
    old_module table;
    const char *methods_if_misread;
    size_t nmethods_if_misread;
} module = {
    {.abi_version = SB_ABI_VERSION, .size = sizeof(old_module), .name = "oldtable", .main = old_main},
    "garbage",
    1000000,
};

const sb_module *switchboard_module_entry(void)
{
    return (const sb_module *)&module.table;
}
