/* A native module written in C: answers every request with its own payload.
 * Built by the end-to-end tests with the system C compiler against protocol/include. */
#include <string.h>
#include "switchboard.h"

static int32_t echo_main(const sb_host *host)
{
    if (host->abi_version != SB_ABI_VERSION)
        return 1;
    static const char hello[] = "c echo module running";
    host->log(host->ctx, SB_LOG_INFO, (const uint8_t *)hello, sizeof(hello) - 1);
    for (;;) {
        sb_msg msg;
        int32_t rc = host->recv(host->ctx, &msg, -1);
        if (rc == SB_ECONNRESET)
            return 0;
        if (rc != SB_OK)
            continue;
        if (msg.msg_type == SB_MSG_CONTROL && msg.topic.len == 8
            && memcmp(msg.topic.ptr, "shutdown", 8) == 0)
            return 0;
        if (msg.msg_type != SB_MSG_REQUEST || (msg.flags & SB_FLAG_NO_RESPONSE))
            continue;
        sb_msg resp;
        sb_response_init(&resp, &msg);
        resp.payload = msg.payload;
        host->send(host->ctx, &resp);
    }
}

static const sb_module module = {
    .abi_version = SB_ABI_VERSION,
    .size = sizeof(sb_module),
    .name = "cecho",
    .main = echo_main,
};

const sb_module *switchboard_module_entry(void)
{
    return &module;
}
