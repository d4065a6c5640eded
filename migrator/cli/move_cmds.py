"""`move`: the whole stack and its data to another VSN over SSH."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from migrator.cli.options import JsonOpt, PlanOpt, SecretsOpt, WaitOpt, load_plan_args
from migrator.cli.output import progress_printer, run
from migrator.ops.recover import operation
from migrator.remote.install import DEFAULT_DIR, DEFAULT_LINK, InstallOptions


def register(app: typer.Typer) -> None:
    @app.command()
    def move(to: str = typer.Option(..., "--to", help="Target VSN: [ssh://][user@]host[:port] (~/.ssh/config aliases work)."),
             plan: Path = PlanOpt, secrets: Path = SecretsOpt,
             keep_source: bool = typer.Option(False, "--keep-source", help="Leave the source containers stopped, not removed."),
             keep_old: bool = typer.Option(False, "--keep-old", help="Keep the data the target held before "
                                           "(<data_root>/<volume>.pre-move-<ts> there) instead of removing it "
                                           "once the stack runs there."),
             remote_migrator: str = typer.Option("migrator", "--remote-migrator",
                                                 help="How to run migrator on the target (a command line)."),
             install: bool = typer.Option(False, "--install", help="If the target lacks migrator (or runs an "
                                          "incompatible version), install this one there first: wheels of migrator "
                                          "and its dependencies, built from this VSN's own environment (cached), go "
                                          "over SFTP into a venv; no index or internet needed on the target."),
             install_dir: str = typer.Option(DEFAULT_DIR, "--install-dir", help="With --install: where the venv "
                                             "and wheelhouse go on the target."),
             install_link: str = typer.Option(DEFAULT_LINK, "--install-link", help="With --install: symlink to the "
                                              "installed migrator (on the target's PATH; '' for none)."),
             target_engine: str = typer.Option(None, "--target-engine", help="The target's engine when it differs "
                                               "from the plan's vsn.engine (podman or docker); the rest of the plan "
                                               "stays the same."),
             target_socket: str = typer.Option(None, "--target-socket", help="The target's engine socket (default: "
                                               "the plan's, or --target-engine's default socket)."),
             ssh_config: Path = typer.Option(None, "--ssh-config", help="SSH config file (default ~/.ssh/config)."),
             identity: Path = typer.Option(None, "--ssh-identity", help="SSH private key for the target."),
             known_hosts: Path = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."),
             wait: float = WaitOpt, json_out: bool = JsonOpt) -> None:
        """Move the deployed stack and all its data to another VSN with minimal downtime.

        Pre-copies every volume while services run, stops them only for the delta and the target's deploy.
        The target needs migrator in the same major.minor version; --install puts this one there (needs
        python3 of the same minor version on the target; the same Python version and machine type).

        Example: migrator move --to root@new-vsn

        Example: migrator move --to root@new-vsn --install   (installs into /opt/migrator/venv,
        links /usr/local/bin/migrator)

        Example: migrator move --to root@docker-vsn --target-engine docker   (podman here, Docker there)

        Example: migrator move --to root@old-vsn --keep-old   (a move back: the data old-vsn still held
        stays there as <volume>.pre-move-<ts>)
        """
        report = progress_printer()
        options = {k: str(v) for k, v in (("ssh_config_file", ssh_config), ("identity_file", identity),
                                          ("known_hosts_file", known_hosts)) if v}

        if target_engine not in (None, "podman", "docker"):
            raise typer.BadParameter("must be podman or docker", param_hint="--target-engine")

        def action() -> dict:
            from migrator.ops.move import move as move_op  # paramiko loads only for a move

            p, s = load_plan_args(plan, secrets)
            options.setdefault("known_host_keys", (p.backup.get("ssh") or {}).get("known_host_keys", []))
            with operation("move", wait, report):
                return move_op(p, s, to, keep_source=keep_source, keep_old=keep_old, remote_command=shlex.split(remote_migrator),
                               ssh_options=options, report=report,
                               install=InstallOptions(install_dir, install_link) if install else None,
                               target_engine=target_engine, target_socket=target_socket)

        def human(r: dict) -> None:
            if r.get("installed"):
                print(f"installed migrator on the target: {r['installed']['venv']}")
            print(f"moved to {r['target']}: downtime {r['downtime_s']}s, pre-copy {r['bytes_precopy']} bytes "
                  f"in {r['precopy_s']}s, delta {r['bytes_delta']} bytes; source {r['source']}")
            there = r.get("target_secrets")
            if there and there["copy"]:
                print(f"secrets on the target: {there['path']} (the copy this move sent; edit it there, or "
                      f"redeploy there with --secrets FILE to remember your own file)")
            elif there:
                print(f"secrets on the target: {there['path']} (the file it remembered before)")
            old = r.get("target_old_data")
            if old and old.get("error"):
                print(f"data the target held before is still there ({old['error']}): {', '.join(old['paths'])}; "
                      "remove it there by hand")
            elif old and old["kept"]:
                print(f"data the target held before, kept (--keep-old): {', '.join(old['paths'])}; "
                      "remove it there when no longer needed")
            elif old:
                print(f"data the target held before was replaced and removed: {', '.join(old['paths'])}")

        run(json_out, action, human)
