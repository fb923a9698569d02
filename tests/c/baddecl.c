/* A module table whose declarations break RFC 2 §3.1's rules: one method declared twice. The
 * broker must refuse it as a malformed table, naming the method. */
#include "switchboard.h"

static int32_t never_called(const sb_host *host) { (void)host; return 0; }

static const sb_method methods[] = {
    {.name = "get", .doc = "one"},
    {.name = "get", .doc = "the same name again"},
};

static const sb_module module = {
    .abi_version = SB_ABI_VERSION,
    .size = sizeof(sb_module),
    .name = "baddecl",
    .main = never_called,
    .methods = methods,
    .nmethods = 2,
};

const sb_module *switchboard_module_entry(void) { return &module; }
