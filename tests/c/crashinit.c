/* A library that crashes as it is opened: its constructor writes to address 8 before the
 * entry function is ever looked up. Describing it (`modctl info`) must fail that inspection,
 * not the broker. It is never loaded for real. */
#include "switchboard.h"

__attribute__((constructor)) static void crash_when_opened(void)
{
    *(volatile int *)8 = 1;
}

static int32_t never_runs(const sb_host *host) { (void)host; return 0; }

static const sb_module module = {
    .abi_version = SB_ABI_VERSION,
    .size = sizeof(sb_module),
    .name = "crashinit",
    .main = never_runs,
};

const sb_module *switchboard_module_entry(void) { return &module; }
