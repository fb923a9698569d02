/* A module built before the module table had declarations (RFC 2 §3.1): its table is the
 * 24 bytes of version 1's first layout, declared here as that header declared it, and
 * `size` says so. It must still load, run, and declare nothing. Its main is echo.c's
 * (answers every request with its own payload); only the table differs. */
#define switchboard_module_entry echo_module_entry
#include "echo.c"
#undef switchboard_module_entry

/* sb_module as switchboard.h first declared it. */
typedef struct old_module {
    uint32_t abi_version;
    uint32_t size;
    const char *name;
    int32_t (*main)(const sb_host *host);
} old_module;

_Static_assert(sizeof(old_module) == 24, "version 1's first module table is 24 bytes");

/* Followed by bytes that would read as a declaration if the broker looked past `size`. */
static const struct {
    old_module table;
    const char *methods_if_misread;
    size_t nmethods_if_misread;
} old = {
    {.abi_version = SB_ABI_VERSION, .size = sizeof(old_module), .name = "oldtable", .main = echo_main},
    "garbage",
    1000000,
};

const sb_module *switchboard_module_entry(void)
{
    return (const sb_module *)&old.table;
}
