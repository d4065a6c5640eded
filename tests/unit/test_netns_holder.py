"""Network holders (Service.netns_holder): a service that mounts a volume joins the network namespace of a
holder container that owns its network, DNS name and published ports, so quiescing it for a backup or
restore tears no network down. The integration tests run them on real podman (deploy, backup, restore,
drill, upgrade); here: the specs, the reserved names, the order of removal, and ensure_holder."""

from __future__ import annotations

from migrator.engine.base import LABEL_ROLE, ContainerInfo, ContainerSpec
from migrator.plan.checks import special_checks
from migrator.plan.model import Plan, Secrets
from migrator.stack.topology import Stack

SECRETS = Secrets({"db_password": "x"})


def _plan(raw: dict, nested: bool = False) -> Plan:
    if not nested:
        raw.pop("host", None)
    return Plan.from_json(raw)


def test_a_writer_joins_its_holder_which_owns_network_name_and_ports(good):
    plan = _plan(good)
    stack = Stack.for_plan(plan)
    db = plan.service("db")
    assert db.netns_holder == "db-netns"
    spec = stack.service_spec(db, SECRETS)
    assert (spec.network_from, spec.network, spec.ports) == ("db-netns", None, [])
    assert spec.volumes_from == ["dbdata"]
    holder = stack.holder_spec(db)
    assert holder.name == "db-netns"
    assert holder.network == plan.network and holder.aliases == ["db"]
    assert [(p.host_port, p.container_port, p.host_ip) for p in holder.ports] == [(18081, 8081, "127.0.0.1")]
    assert holder.image == plan.volume("dbdata").image and holder.command[0] == "sleep"
    assert holder.labels[LABEL_ROLE] == "netns" and holder.stop_signal == "SIGKILL"
    assert holder.network_from is None and holder.volumes_from == [] and not holder.env


def test_a_service_without_volumes_keeps_its_own_network(good):
    good["services"].append({"name": "proxy", "image": "localhost/migrator-httpd:latest",
                             "ports": [{"host": 18090, "container": 8080}]})
    plan = _plan(good)
    proxy = plan.service("proxy")
    assert proxy.netns_holder is None
    spec = Stack.for_plan(plan).service_spec(proxy, SECRETS)
    assert spec.network == plan.network and spec.network_from is None
    assert [p.host_port for p in spec.ports] == [18090]


def test_inside_a_host_container_the_holder_publishes_on_all_addresses(good):
    good["services"][0]["ports"][0]["address"] = "127.0.0.1"
    plan = _plan(good, nested=True)
    stack = Stack.for_plan(plan)
    assert [p.host_ip for p in stack.holder_spec(plan.service("db")).ports] == ["0.0.0.0"]
    assert stack.service_spec(plan.service("db"), SECRETS).ports == []


def test_a_holder_name_is_reserved(good):
    good["volumes"][1]["name"] = "db-netns"
    good["services"][1]["volumes_from"] = ["db-netns"]
    problems = special_checks(good, SECRETS, True)
    assert any("'db-netns' is reserved for the network holder of services[0]" in p for p in problems), problems


class RecordingEngine:
    def __init__(self, containers: dict[str, ContainerInfo]):
        self.containers = containers
        self.calls: list[tuple[str, str]] = []

    def list(self, labels):
        return list(self.containers.values())

    def get(self, name):
        return self.containers.get(name)

    def create(self, spec: ContainerSpec):
        self.calls.append(("create", spec.name))
        self.containers[spec.name] = ContainerInfo(spec.name, "created", spec.image, spec.labels)

    def start(self, name):
        self.calls.append(("start", name))

    def stop(self, name, timeout=10):
        self.calls.append(("stop", name))

    def remove(self, name):
        self.calls.append(("remove", name))
        self.containers.pop(name, None)

    def remove_network(self, name):
        self.calls.append(("remove_network", name))


def _info(name: str, role: str, state: str = "running") -> ContainerInfo:
    return ContainerInfo(name, state, "img", {LABEL_ROLE: role})


def test_drop_all_removes_holders_after_every_container_that_may_join_them(good):
    plan = _plan(good)
    # listed holder first, and a container the plan no longer names (it may still join a holder)
    engine = RecordingEngine({c.name: c for c in (_info("db-netns", "netns"), _info("old-admin", "service"),
                                                  _info("dbdata", "volume", "created"), _info("db", "service"))})
    stack = Stack.for_plan(plan)
    stack._outer = engine  # a flat plan: the REST containers are on the VSN's engine
    stack.drop_all()
    removed = [name for op, name in engine.calls if op == "remove"]
    assert sorted(removed) == ["db", "db-netns", "dbdata", "old-admin"]
    assert removed[-1] == "db-netns"


def test_ensure_holder_creates_starts_or_leaves_a_running_one(good):
    plan = _plan(good)
    stack = Stack.for_plan(plan)
    db = plan.service("db")
    engine = RecordingEngine({})
    assert stack.ensure_holder(engine, db) is True
    assert engine.calls == [("create", "db-netns"), ("start", "db-netns")]
    engine.calls.clear()
    engine.containers["db-netns"] = _info("db-netns", "netns", "exited")
    assert stack.ensure_holder(engine, db) is False
    assert engine.calls == [("start", "db-netns")]
    engine.calls.clear()
    engine.containers["db-netns"] = _info("db-netns", "netns", "running")
    assert stack.ensure_holder(engine, db) is False and engine.calls == []
