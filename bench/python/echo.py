#!/usr/bin/env python3
"""The benchmark's Python echo module: answers every request with its own payload bytes."""
from switchboard_module import Module, Raw

mod = Module("pyecho")


@mod.otherwise
def echo(req):
    return Raw(req.raw)


if __name__ == "__main__":
    mod.run()
