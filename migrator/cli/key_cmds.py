"""`migrator key show`: this VSN's public snapshot signing key, to record in plans' backup.trusted_keys."""

from __future__ import annotations

import sys

import typer

from migrator.cli.options import JsonOpt
from migrator.cli.output import run

key = typer.Typer(help="This VSN's snapshot signing key (ed25519; the private key stays in the state dir)."
                       "\n\nExample: migrator key show", no_args_is_help=True)


@key.command("show")
def key_show(json_out: bool = JsonOpt) -> None:
    """Print this VSN's public signing key (created on first use; backup signs every manifest with it).

    Record it in the plan as backup.trusted_keys (with the keys of every other VSN whose snapshots the
    plan may restore, e.g. the source VSN's after a move): restore, verify and drill then refuse
    snapshots whose signature is missing or not by one of them (exit 6). The private key
    (<state dir>/signing/ed25519.key, mode 0600) is never printed.

    Example: migrator key show
    Example: migrator key show --json
    """

    def action() -> dict:
        from migrator.stack.signatures import show_key

        return show_key()

    def human(r: dict) -> None:
        print(r["public_key"])
        if r["created"]:
            print(f"migrator: created the signing key {r['key_file']}", file=sys.stderr)
        print('migrator: record it in the plan: "backup": {"trusted_keys": ["' + r["public_key"] + '"]}',
              file=sys.stderr)

    run(json_out, action, human)


def register(app: typer.Typer) -> None:
    app.add_typer(key, name="key")
