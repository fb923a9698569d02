/* A module table whose main function is NULL: must be refused, not called. */
#include <stddef.h>
#include "switchboard.h"

static const sb_module module = {
    .abi_version = SB_ABI_VERSION,
    .size = sizeof(sb_module),
    .name = "nullmain",
    .main = NULL,
};

const sb_module *switchboard_module_entry(void) { return &module; }
