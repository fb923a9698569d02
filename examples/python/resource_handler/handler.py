#!/usr/bin/env python3
"""A resource handler, the kind of plugin a site writes to manage its own infrastructure.

It keeps a table of named resources (think: volumes, DNS records, VMs) with a spec and a
version, answers `create`, `delete`, `modify` and `probe`, and publishes a
`<service>.changed` event on every change, so other modules and operators can react.

    modctl load examples/python/resource_handler/handler.py
    modctl rpc resources.create '{"name": "vol1", "spec": {"size_gb": 10}}'
    modctl rpc resources.probe '{"name": "vol1"}'
"""

import time

from switchboard_module import EEXIST, EINVAL, ENOENT, Error, Module

mod = Module("resources")
mod.publishes("resources.changed", doc="a resource was created, modified or deleted: {op, name, version}")
resources = {}


def require_name(req):
    name = (req.payload or {}).get("name")
    if not isinstance(name, str) or not name:
        raise Error(EINVAL, "a resource needs a 'name' (a non-empty string)")
    return name


def changed(op, name):
    mod.publish(f"{mod.name}.changed", {"op": op, "name": name, "version": resources.get(name, {}).get("version")})


@mod.on_init
def init(m):
    # `limit=N` caps how many resources this handler will manage.
    for arg in m.args:
        if arg.startswith("limit="):
            m.limit = int(arg.split("=", 1)[1])
    m.log("info", f"resource handler {m.name} ready")


@mod.method("create")
def create(req):
    """make resource `name` with `spec`; EEXIST if it exists"""
    name = require_name(req)
    if name in resources:
        raise Error(EEXIST, f"resource '{name}' already exists")
    if len(resources) >= getattr(mod, "limit", 1 << 30):
        raise Error(EINVAL, f"this handler manages at most {mod.limit} resources")
    resources[name] = {"name": name, "spec": req.payload.get("spec", {}), "version": 1, "created": time.time()}
    changed("create", name)
    return resources[name]


@mod.method("modify")
def modify(req):
    """merge `spec` into resource `name`'s and bump its version"""
    name = require_name(req)
    if name not in resources:
        raise Error(ENOENT, f"no resource '{name}'")
    r = resources[name]
    r["spec"] = {**r["spec"], **req.payload.get("spec", {})}
    r["version"] += 1
    changed("modify", name)
    return r


@mod.method("delete")
def delete(req):
    """remove resource `name`; ENOENT if there is none"""
    name = require_name(req)
    if resources.pop(name, None) is None:
        raise Error(ENOENT, f"no resource '{name}'")
    changed("delete", name)
    return {"name": name, "deleted": True}


@mod.method("probe", guest=True)
def probe(req):
    """the health of resource `name`, or of every resource without one"""
    name = (req.payload or {}).get("name")
    if name is None:
        return {"resources": [{"name": n, "version": r["version"], "healthy": True} for n, r in sorted(resources.items())]}
    if name not in resources:
        raise Error(ENOENT, f"no resource '{name}'")
    r = resources[name]
    return {"name": name, "version": r["version"], "healthy": True, "spec": r["spec"]}


if __name__ == "__main__":
    mod.run()
