"""Special plan checks a JSON schema cannot express: references, cycles, clashes, paths, secrets.

Input is raw JSON that already passed the schema. Each problem is one string "<json path>: <what>"."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from migrator.jsonschemas import plan_definition, plan_pattern
from migrator.plan.model import NETNS_HOLDER_SUFFIX
from migrator.plan.sizes import DEFAULT_MAX_VOLUME_SIZE, parse_size


def _unique_names(raw: dict) -> list[str]:
    problems = []
    seen: dict[str, str] = {}
    host_name = raw.get("host", {}).get("name", "migrator-host") if "host" in raw else None
    if host_name:
        seen[host_name] = "host.name"
    for kind in ("volumes", "services"):
        for i, item in enumerate(raw[kind]):
            path = f"{kind}[{i}].name"
            name = item["name"]
            if name in seen:
                problems.append(f"{path}: name {name!r} is already used at {seen[name]}")
            else:
                seen[name] = path
    for i, svc in enumerate(raw["services"]):  # Service.netns_holder
        holder = f"{svc['name']}{NETNS_HOLDER_SUFFIX}"
        if svc.get("volumes_from") and holder in seen:
            problems.append(f"{seen[holder]}: name {holder!r} is reserved for the network holder of services[{i}]")
    return problems


def _references(raw: dict) -> list[str]:
    problems = []
    volumes = {v["name"] for v in raw["volumes"]}
    services = {s["name"]: s for s in raw["services"]}
    for i, svc in enumerate(raw["services"]):
        for j, ref in enumerate(svc.get("volumes_from", [])):
            if ref not in volumes:
                problems.append(f"services[{i}].volumes_from[{j}]: no volume named {ref!r}")
        for j, ref in enumerate(svc.get("depends_on", [])):
            if ref not in services:
                problems.append(f"services[{i}].depends_on[{j}]: no service named {ref!r}")
            elif ref == svc["name"]:
                problems.append(f"services[{i}].depends_on[{j}]: a service cannot depend on itself")
            elif svc.get("enabled", True) and not services[ref].get("enabled", True):
                problems.append(f"services[{i}].depends_on[{j}]: {ref!r} is disabled (enabled: false)")
        for phase in ("pre_backup", "post_backup"):
            for j, hook in enumerate(svc.get("hooks", {}).get(phase, [])):
                if "container" in hook and hook["container"] not in services:
                    problems.append(f"services[{i}].hooks.{phase}[{j}].container: no service named {hook['container']!r}")
        # Two volumes mounted at the same path in one service would shadow each other's data.
        targets: dict[str, str] = {}
        for ref in svc.get("volumes_from", []):
            vol = next((v for v in raw["volumes"] if v["name"] == ref), None)
            for m in (vol or {}).get("mounts", []):
                if m["path"] in targets:
                    problems.append(f"services[{i}].volumes_from: mount path {m['path']} comes from both "
                                    f"{targets[m['path']]!r} and {ref!r}")
                targets[m["path"]] = ref
    return problems


def dependency_cycle(services: list[dict]) -> list[str] | None:
    """Return one cycle as a list of names (first == last), or None."""
    graph = {s["name"]: [d for d in s.get("depends_on", []) if d != s["name"]] for s in services}
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in graph and state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for name in graph:
        if state.get(name) is None:
            found = visit(name)
            if found:
                return found
    return None


def _cycles(raw: dict) -> list[str]:
    cycle = dependency_cycle(raw["services"])
    if not cycle:
        return []
    index = next(i for i, s in enumerate(raw["services"]) if s["name"] == cycle[0])
    return [f"services[{index}].depends_on: dependency cycle {' -> '.join(cycle)}"]


def _volumes(raw: dict) -> list[str]:
    problems = []
    data_root = Path(raw["vsn"]["data_root"])
    if not [part for part in raw["vsn"]["data_root"].split("/") if part not in ("", ".")]:
        problems.append(f"vsn.data_root: {raw['vsn']['data_root']!r} names /; the data root cannot be /")
    if ".." in data_root.parts:
        problems.append("vsn.data_root: must not contain '..'")
    real_root = data_root.resolve() if data_root.exists() else None
    for i, vol in enumerate(raw["volumes"]):
        try:
            size = parse_size(vol.get("max_size", DEFAULT_MAX_VOLUME_SIZE))
            if size > DEFAULT_MAX_VOLUME_SIZE:
                problems.append(f"volumes[{i}].max_size: {vol['max_size']} exceeds the 200G limit of a volume")
        except ValueError as exc:
            problems.append(f"volumes[{i}].max_size: {exc}")
        seen_paths: dict[str, int] = {}
        seen_names: dict[str, int] = {}
        for j, m in enumerate(vol["mounts"]):
            if m["name"] in seen_names:
                problems.append(f"volumes[{i}].mounts[{j}].name: duplicate mount name {m['name']!r}")
            seen_names[m["name"]] = j
            norm = os.path.normpath(m["path"])
            if norm == "/" or ".." in Path(m["path"]).parts:
                problems.append(f"volumes[{i}].mounts[{j}].path: {m['path']!r} is not a usable mount point")
            if norm in seen_paths:
                problems.append(f"volumes[{i}].mounts[{j}].path: duplicate mount path {m['path']!r}")
            seen_paths[norm] = j
            if real_root is not None:
                problems += _symlink_escape(data_root, real_root, vol["name"], m["name"], f"volumes[{i}].mounts[{j}]")
    return problems


def _symlink_escape(data_root: Path, real_root: Path, volume: str, mount: str, path: str) -> list[str]:
    """A data dir (or its volume dir) that exists must be a real directory inside the data root."""
    for candidate in (data_root / volume, data_root / volume / mount):
        if candidate.is_symlink():
            return [f"{path}: {candidate} is a symlink; data dirs must be real directories inside the data root"]
        if candidate.exists():
            if not candidate.is_dir():
                return [f"{path}: {candidate} exists and is not a directory"]
            if not candidate.resolve().is_relative_to(real_root):
                return [f"{path}: {candidate} resolves outside the data root {real_root}"]
    return []


def _ports(raw: dict) -> list[str]:
    problems = []
    bound: dict[tuple[int, str], tuple[str, str]] = {}

    def claim(mapping: dict, path: str) -> None:
        key = (mapping["host"], mapping.get("protocol", "tcp"))
        address = mapping.get("address", "127.0.0.1")
        if key in bound:
            other_address, other_path = bound[key]
            if "0.0.0.0" in (address, other_address) or address == other_address:
                problems.append(f"{path}.host: port {mapping['host']}/{key[1]} on {address} clashes with {other_path}")
                return
        bound[key] = (address, path)

    for j, p in enumerate(raw.get("host", {}).get("ports", [])):
        claim(p, f"host.ports[{j}]")
    for i, svc in enumerate(raw["services"]):
        if not svc.get("enabled", True):
            continue
        inner: set[tuple[int, str]] = set()
        for j, p in enumerate(svc.get("ports", [])):
            claim(p, f"services[{i}].ports[{j}]")
            key = (p["container"], p.get("protocol", "tcp"))
            if key in inner:
                problems.append(f"services[{i}].ports[{j}].container: port {p['container']} published twice")
            inner.add(key)
        probe = svc.get("health")
        if probe and probe["type"] in ("tcp", "http"):
            if not any(p["container"] == probe["port"] and p.get("protocol", "tcp") == "tcp" for p in svc.get("ports", [])):
                problems.append(f"services[{i}].health.port: port {probe['port']} is not published in services[{i}].ports "
                                f"(tcp/http probes connect from the VSN; use a cmd probe for unpublished ports)")
    return problems


def _secret_refs(raw: dict, secrets, secrets_given: bool) -> list[str]:
    problems = []
    refs: list[tuple[str, str]] = []
    for i, svc in enumerate(raw["services"]):
        for env, key in svc.get("env_secrets", {}).items():
            refs.append((f"services[{i}].env_secrets.{env}", key))
            if env in svc.get("env", {}):
                problems.append(f"services[{i}].env_secrets.{env}: also set in services[{i}].env")
        if "password_secret" in svc.get("dump", {}):
            refs.append((f"services[{i}].dump.password_secret", svc["dump"]["password_secret"]))
    smtp = raw.get("health", {}).get("notify", {}).get("smtp", {})
    if "password_secret" in smtp:
        refs.append(("health.notify.smtp.password_secret", smtp["password_secret"]))
    urls: list[tuple[str, str]] = []
    for kind in ("pings", "webhooks"):
        for i, entry in enumerate(raw.get("events", {}).get(kind, [])):
            if "url_secret" in entry:
                urls.append((f"events.{kind}[{i}].url_secret", entry["url_secret"]))
    refs += urls
    for path, key in refs:
        if not secrets_given:
            problems.append(f"{path}: refers to secret {key!r} but no secrets file was given (--secrets FILE)")
        elif key not in secrets.values:
            problems.append(f"{path}: secret {key!r} is not in the secrets file {secrets.path}")
    for path, key in urls:
        value = secrets.values.get(key) if secrets_given else None
        if value is not None and not _is_event_url(value):
            # the value is a credential: named by its key only
            problems.append(f"{path}: secret {key!r} is not an http:// or https:// URL (one line, at most "
                            f"{plan_definition('event_url')['maxLength']} characters)")
    return problems


def _is_event_url(value: object) -> bool:
    """The plan's own rule for `url` (schema `$defs/event_url`), for a URL kept in the secrets file."""
    return (isinstance(value, str) and len(value) <= plan_definition("event_url")["maxLength"]
            and plan_pattern("event_url").search(value) is not None)


def _port_problem(parsed) -> str | None:
    """Why the URL's port is unusable (not a number, 0, above 65535), or None."""
    try:
        port = parsed.port
    except ValueError as exc:
        return f"bad port: {exc}"
    return "port 0 is not a usable port" if port == 0 else None


def _engine(raw: dict) -> list[str]:
    v = raw["vsn"]
    if v.get("socket", "").startswith("tcp://"):
        bad_port = _port_problem(urlparse(v["socket"]))
        if bad_port:
            return [f"vsn.socket: {bad_port}"]
        if v["engine"] != "docker":
            return ["vsn.socket: tcp:// engine sockets are supported for docker only (with TLS)"]
        if "tls" not in v:
            return ["vsn.tls: a tcp:// engine socket needs tls (ca_cert, client_cert, client_key)"]
    return []


def _targets(raw: dict) -> list[str]:
    problems = []
    for j, url in enumerate(raw.get("backup", {}).get("targets", [])):
        parsed = urlparse(url)
        if parsed.scheme in ("file", "ssh") and (".." in Path(parsed.path).parts or not parsed.path.startswith("/")):
            problems.append(f"backup.targets[{j}]: path must be absolute without '..'")
        if parsed.scheme == "s3" and {".", ".."} & set(parsed.path.split("/")):
            problems.append(f"backup.targets[{j}]: an s3:// prefix may not have '.' or '..' segments")
        if parsed.scheme == "ssh" and not parsed.hostname:
            problems.append(f"backup.targets[{j}]: ssh:// URL needs a host")
        bad_port = _port_problem(parsed) if parsed.scheme == "ssh" else None
        if bad_port:
            problems.append(f"backup.targets[{j}]: {bad_port}")
    return problems


def _network(raw: dict) -> list[str]:
    """The subnet must parse as the engines will parse it (host bits are allowed: podman clears them)."""
    if "network_subnet" not in raw:
        return []
    import ipaddress  # ~1.5 ms of start-up, only for plans that name a subnet

    try:
        ipaddress.IPv4Network(raw["network_subnet"], strict=False)
    except ValueError as exc:
        return [f"network_subnet: {exc}"]
    return []


def _schedules(raw: dict) -> list[str]:
    """Every cron expression as `cron install` will read it (the same function), so the two agree."""
    backup = raw.get("backup", {})
    found = [("backup.schedule", backup.get("schedule")), ("backup.drill_schedule", backup.get("drill_schedule")),
             ("backup.retention.schedule", backup.get("retention", {}).get("schedule")),
             ("health.schedule", raw.get("health", {}).get("schedule"))]
    found = [(path, expr) for path, expr in found if expr is not None]
    if not found:
        return []
    return [f"{path}: {expr!r} is not a valid five-field cron expression (fields out of range, a step of 0, "
            f"or not five fields)" for path, expr in found if not valid_cron_expression(expr)]


def valid_cron_expression(expr: str) -> bool:
    """Five fields croniter accepts: the one rule `validate` and `cron install` share."""
    from croniter import croniter  # only for plans with schedules

    return len(expr.split()) == 5 and croniter.is_valid(expr)


def special_checks(raw: dict, secrets, secrets_given: bool) -> list[str]:
    problems: list[str] = []
    for check in (_unique_names, _references, _cycles, _volumes, _ports, _engine, _targets, _network,
                  _schedules):
        problems += check(raw)
    problems += _secret_refs(raw, secrets, secrets_given)
    return problems
