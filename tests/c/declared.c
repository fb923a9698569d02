/* A module that declares its methods and event in its table (RFC 2 §3.1) but does not answer
 * `SERVICE.methods` itself: its main is echo.c's, which answers every request, that one too,
 * with the request's own payload. `modctl methods` must show the table's declarations. */
#define switchboard_module_entry echo_module_entry
#include "echo.c"
#undef switchboard_module_entry

static const sb_method methods[] = {
    {.name = "hello", .doc = "answer with the request's payload", .flags = SB_METHOD_GUEST},
    {.name = "count", .doc = "owners only"},
};

static const sb_event events[] = {
    {.name = "declared.greeted", .doc = "after each hello"},
};

static const sb_module declared = {
    .abi_version = SB_ABI_VERSION,
    .size = sizeof(sb_module),
    .name = "declared",
    .main = echo_main,
    .methods = methods,
    .nmethods = 2,
    .events = events,
    .nevents = 1,
};

const sb_module *switchboard_module_entry(void) { return &declared; }
