"""The Ansible playbooks (playbooks/) without a fleet: they parse (`ansible-playbook --syntax-check`), pass
ansible-lint's production profile, and use ansible.builtin modules only (the VSNs' controller reaches no
collection server). Real runs against lab VSNs are in tests/integration/test_fleet.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
BIN = Path(sys.executable).parent
PLAYS = sorted(p.name for p in PLAYBOOKS.glob("*.yml") if not p.name.startswith("inventory"))
EXPECTED = ["backup.yml", "deploy.yml", "drill.yml", "move.yml", "os-update.yml", "provision-vsn.yml"]
# Keywords of a task that are not its module.
TASK_KEYWORDS = {
    "name", "when", "register", "loop", "loop_control", "vars", "delegate_to", "run_once", "changed_when",
    "failed_when", "no_log", "environment", "tags", "become", "ignore_errors", "block", "rescue", "always",
    "notify", "args", "until", "retries", "delay", "async", "poll", "check_mode", "diff", "throttle",
    "delegate_facts", "any_errors_fatal", "timeout",
}


def ansible_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update({"ANSIBLE_CONFIG": str(PLAYBOOKS / "ansible.cfg"), "ANSIBLE_HOME": str(tmp_path / "ansible"),
                "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible" / "tmp"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1",
                "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"})
    return env


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


def test_every_playbook_is_there():
    assert PLAYS == EXPECTED
    assert (PLAYBOOKS / "inventory.example.yml").exists()


def test_syntax_check(tmp_path):
    proc = subprocess.run([tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml", *PLAYS],
                          cwd=PLAYBOOKS, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stderr


def test_example_inventory_parses(tmp_path):
    proc = subprocess.run([tool("ansible-inventory"), "-i", "inventory.example.yml", "--list"], cwd=PLAYBOOKS,
                          env=ansible_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"vsn-a"' in proc.stdout and '"spares"' in proc.stdout


def test_ansible_lint_production_profile(tmp_path):
    proc = subprocess.run([tool("ansible-lint"), "--offline", "--nocolor"], cwd=PLAYBOOKS,
                          env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def _tasks(items: list) -> list[dict]:
    out = []
    for task in items or []:
        out.append(task)
        for section in ("block", "rescue", "always"):
            out += _tasks(task.get(section, []))
    return out


def test_only_builtin_modules_are_used():
    """No collection to download: every task's module is ansible.builtin.* (by its full name)."""
    modules = set()
    for name in PLAYS:
        for play in yaml.safe_load((PLAYBOOKS / name).read_text()):
            for task in _tasks(play.get("tasks", [])):
                module = [k for k in task if k not in TASK_KEYWORDS]
                if "block" in task:
                    continue
                assert len(module) == 1, (name, task.get("name"), module)
                modules.add(module[0])
            assert play.get("roles", []) in ([], ["migrator"]), name  # our own role only
    assert modules and all(m.startswith("ansible.builtin.") for m in modules), sorted(modules)


def test_os_update_is_serial_and_stops_at_the_first_failure():
    play = yaml.safe_load((PLAYBOOKS / "os-update.yml").read_text())[0]
    assert play["serial"] == "{{ migrator_serial | default(1) }}"
    assert play["max_fail_percentage"] == 0 and play["any_errors_fatal"] is True


def test_secrets_never_logged():
    """Tasks that handle secret values hide them from Ansible's output."""
    checked = []
    for name in PLAYS:
        for play in yaml.safe_load((PLAYBOOKS / name).read_text()):
            for task in _tasks(play.get("tasks", [])):
                args = yaml.safe_dump({k: v for k, v in task.items() if k not in TASK_KEYWORDS})
                carries_values = ("_secrets | to_nice_json" in args or "{{ migrator_aws_secret_access_key }}" in args
                                  or "_secrets:" in args)
                if carries_values:
                    assert task.get("no_log") is True, (name, task.get("name"))
                    checked.append(task["name"])
    assert len(checked) == 3, checked  # secrets file, credentials file, and resolving the secrets
