/* A module table claiming a future ABI version the broker does not speak. */
#include "switchboard.h"

static int32_t never_called(const sb_host *host) { (void)host; return 0; }

static const sb_module module = {
    .abi_version = SB_ABI_VERSION + 1,
    .size = sizeof(sb_module),
    .name = "badabi",
    .main = never_called,
};

const sb_module *switchboard_module_entry(void) { return &module; }
