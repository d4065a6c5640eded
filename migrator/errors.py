"""One exception hierarchy for the whole tool; each class carries its exit code.

Nothing below `migrator.cli` prints or exits: it raises one of these. The CLI maps them to the
process exit code and prints `message` (one line) plus `hint` to stderr. Errors from libraries
(botocore, paramiko, podman) are translated into these at the edge of the module that calls them.
"""

from __future__ import annotations


class MigratorError(Exception):
    """Base class. `exit_code` is the process exit code; `hint` tells the operator what to do next."""

    exit_code = 1
    default_hint = "this is a bug in migrator: please report it with the output of --debug"

    def __init__(self, message: str, *, hint: str | None = None, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        # Extra lines (e.g. every validation problem); the first line stays `message`.
        self.details = list(details or [])

    def to_json(self) -> dict:
        return {
            "error": type(self).__name__,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
        }


class UsageError(MigratorError):
    """Bad command line (exit 2)."""

    exit_code = 2
    default_hint = "see --help for usage and examples"


class PlanInvalid(MigratorError):
    """The plan or the secrets file is invalid (exit 3). `details` names one JSON path per problem."""

    exit_code = 3
    default_hint = "fix the listed problems; `migrator validate PLAN` checks a plan without acting"


class PreflightFailed(MigratorError):
    """The VSN (or a target VSN) is not fit: missing command, engine, root, space (exit 4)."""

    exit_code = 4
    default_hint = "`migrator check` lists everything the VSN is missing"


class LockHeld(MigratorError):
    """Another migrator operation holds the lock (exit 5)."""

    exit_code = 5
    default_hint = "wait for it to finish, or pass --wait SECONDS"


class IntegrityError(MigratorError):
    """Checksum mismatch, missing object, hostile archive member (exit 6)."""

    exit_code = 6
    default_hint = "the data was NOT applied; check the store or pick another snapshot"


class DeployFailed(MigratorError):
    """Deployment failed and was rolled back to the containerless state; data intact (exit 7)."""

    exit_code = 7
    default_hint = "the VSN is containerless and every data directory is untouched; fix the cause and deploy again"


class Unreachable(MigratorError):
    """A store or a remote VSN is unreachable or refused us: auth, host key (exit 8)."""

    exit_code = 8
    default_hint = "check the address, credentials and host key, then retry"


class EngineError(MigratorError):
    """The container engine refused a request. Unexpected in ops code, so it maps to exit 1 unless
    an operation translates it (deploy turns it into DeployFailed after rolling back)."""

    exit_code = 1
    default_hint = "check the engine (podman/docker) with `migrator check`"


class StateError(MigratorError):
    """An operation is not allowed in the current stack state (e.g. deploy while the Host runs)."""

    exit_code = 1
    default_hint = "`migrator status` shows the current state"


class EngineUnreachable(PreflightFailed):
    """The engine's API socket does not answer (exit 4)."""

    default_hint = "start the engine's API service (e.g. `podman system service --time=0 unix:///run/podman/podman.sock &`)"


class EngineRefused(Unreachable):
    """A remote engine's API refused us over TLS: its certificate, our client certificate, or no TLS at all
    (exit 8). Never retried in plain TCP."""

    default_hint = ("check vsn.tls: ca_cert must be the CA that signed the daemon's certificate, client_cert and "
                    "client_key a pair that CA signed, and the daemon must listen with --tlsverify")


class ImageMissing(EngineError):
    """An image is neither present nor pullable."""

    default_hint = "build or load the image on the VSN (no registry is needed if it is present locally)"


class ObjectMissing(IntegrityError):
    """A snapshot store has no object under the requested key (exit 6)."""

    default_hint = "the snapshot is incomplete or was pruned; `migrator snapshots` lists the usable ones"


class ObjectTooLarge(IntegrityError):
    """A small store object (manifest, plan) is larger than the limit we accept from an untrusted store (exit 6)."""

    default_hint = "the store holds something that is not a migrator file; check who else writes to it"


class ArchiveError(MigratorError):
    """tar, zstd or age failed while writing or extracting an archive (exit 1). The message names the
    file or tool from tar's own diagnostics; no snapshot is committed from a failed capture."""

    exit_code = 1
    default_hint = "fix the named file or tool and run the operation again; nothing was committed"
