"""Put THIS migrator on a remote VSN (`migrator move --install`), offline.

The target may have no index and no internet, so everything it installs comes from here: a wheelhouse
built from the source's own environment, never downloaded (docs/move.md)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import platform
import re
import shlex
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import migrator
from migrator import __version__
from migrator.errors import MigratorError, PreflightFailed

DEFAULT_DIR = "/opt/migrator"
DEFAULT_LINK = "/usr/local/bin/migrator"
CACHE_ENV = "MIGRATOR_WHEELHOUSE_CACHE"
# Part of the cache key: bump when what goes into the wheelhouse changes.
FORMAT = "migrator wheelhouse 1"
# Dist-info files that describe one installation, not the distribution: never shipped.
LOCAL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
# An install (~40 wheels, botocore's thousands of files) takes well under this even on a slow VSN.
INSTALL_TIMEOUT = 900


@dataclass(frozen=True)
class InstallOptions:
    directory: str = DEFAULT_DIR  # venv and wheelhouse live here
    link: str = DEFAULT_LINK  # symlink to the venv's console script ("" for none)


def python_tag() -> str:
    return f"cp{sys.version_info[0]}{sys.version_info[1]}"


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:  # not a migrator dependency; pip (always here: we ship it) vendors it
        from pip._vendor.packaging.requirements import Requirement
    return Requirement(text)


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _self_distribution() -> md.Distribution:
    """The distribution metadata of the migrator package being run (a checkout's egg-info or an
    installed dist-info), found next to the package, not by a sys.path search that could find another."""
    package = Path(migrator.__file__).resolve().parent
    for candidate in [*package.parent.glob("migrator*.dist-info"), *package.parent.glob("migrator*.egg-info")]:
        dist = md.PathDistribution(candidate)
        if dist.metadata and _canonical(dist.metadata["Name"] or "") == "migrator":
            return dist
    return md.distribution("migrator")


def closure() -> list[md.Distribution]:
    """Installed distributions migrator needs at run time (its requirements, recursively, with markers
    and extras evaluated for this interpreter), plus pip."""
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, tuple[str, ...]]] = []

    def add_requirements(dist: md.Distribution, extras: tuple[str, ...]) -> None:
        for text in dist.requires or []:
            req = _requirement(text)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(sorted(req.extras))))

    add_requirements(_self_distribution(), ())
    todo.append(("pip", ()))
    done_extras: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, extras = todo.pop()
        key = _canonical(name)
        if (key, extras) in done_extras:
            continue
        done_extras.add((key, extras))
        try:
            dist = seen.get(key) or md.distribution(name)
        except md.PackageNotFoundError as exc:
            raise MigratorError(f"cannot build the wheelhouse: {name} (needed by migrator) is not installed here",
                                hint="reinstall migrator on this VSN, then retry --install") from exc
        seen[key] = dist
        add_requirements(dist, extras)
    return sorted(seen.values(), key=lambda d: _canonical(d.metadata["Name"]))


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class _Wheel:
    """A wheel file being written: members, then RECORD last."""

    def __init__(self, path: Path, dist_info: str):
        self.path = path
        self.dist_info = dist_info
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6)
        self.record: list[str] = []

    def add(self, name: str, data: bytes, mode: int = 0o644) -> None:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = (0o100000 | (mode & 0o777)) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip.writestr(info, data)
        self.record.append(f"{name},{_digest(data)},{len(data)}")

    def close(self) -> Path:
        record = f"{self.dist_info}/RECORD"
        self.zip.writestr(zipfile.ZipInfo(record, date_time=(1980, 1, 1, 0, 0, 0)),
                          "\n".join([*self.record, f"{record},,"]) + "\n")
        self.zip.close()
        return self.path


def _wheel_tags(wheel_meta: str) -> str:
    """`py3-none-any` / `cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64` from WHEEL's Tag lines."""
    tags = [line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")]
    if not tags:
        return "py3-none-any"
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def repack(dist: md.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists (bytecode and console
    scripts left out: the installer makes those). Data outside site-packages goes to .data/. Binary wheels
    keep their tags, so the target must have the same Python minor version and machine type (`install`
    checks that first)."""
    name, version = dist.metadata["Name"], dist.version
    wheel_meta = dist.read_text("WHEEL") or ""
    if not dist.files or not wheel_meta:
        raise MigratorError(f"cannot repack {name} {version}: it was not installed from a wheel (no RECORD/WHEEL)",
                            hint="install migrator on the target yourself (see playbooks/provision-vsn.yml)")
    site = Path(dist.locate_file("")).resolve()
    dist_info = next((str(f).split("/")[0] for f in dist.files if str(f).endswith(".dist-info/METADATA")), None)
    if dist_info is None:
        raise MigratorError(f"cannot repack {name} {version}: no dist-info among its files")
    scripts = {ep.name for ep in dist.entry_points if ep.group in ("console_scripts", "gui_scripts")}
    data_dir = f"{dist_info[: -len('.dist-info')]}.data"
    path = out / f"{re.sub(r'[-_.]+', '_', name)}-{version}-{_wheel_tags(wheel_meta)}.whl"
    wheel = _Wheel(path, dist_info)
    try:
        for member in dist.files:
            rel = str(member)
            if "__pycache__/" in rel or rel.endswith(".pyc"):
                continue
            if rel.startswith(f"{dist_info}/") and rel.split("/", 1)[1] in LOCAL_ONLY:
                continue
            full = Path(os.path.normpath(site / rel))
            if not full.is_file():
                continue
            if rel.startswith("../"):
                prefix_rel = os.path.relpath(full, sys.prefix)
                if prefix_rel.startswith("bin/"):
                    if full.name in scripts or re.fullmatch(r"pip[0-9.]*", full.name):
                        continue
                    arc = f"{data_dir}/scripts/{full.name}"
                elif prefix_rel.startswith(".."):
                    continue  # outside this environment: not ours to ship
                else:
                    arc = f"{data_dir}/data/{prefix_rel}"
            else:
                arc = rel
            wheel.add(arc, full.read_bytes(), full.stat().st_mode)
    finally:
        wheel.close()
    return path


def build_self(out: Path) -> Path:
    """migrator's own wheel (pure Python) from the package being run: every file of the package (code,
    schemas) and metadata for pip (requirements, entry points)."""
    dist = _self_distribution()
    package = Path(migrator.__file__).resolve().parent
    dist_info = f"migrator-{__version__}.dist-info"
    path = out / f"migrator-{__version__}-py3-none-any.whl"
    wheel = _Wheel(path, dist_info)
    try:
        for full in sorted(package.rglob("*")):
            if full.is_file() and "__pycache__" not in full.parts and full.suffix != ".pyc":
                wheel.add(f"migrator/{full.relative_to(package).as_posix()}", full.read_bytes())
        meta = ["Metadata-Version: 2.1", "Name: migrator", f"Version: {__version__}",
                f"Summary: {dist.metadata['Summary'] or ''}"]
        if dist.metadata["Requires-Python"]:
            meta.append(f"Requires-Python: {dist.metadata['Requires-Python']}")
        meta += [f"Requires-Dist: {r}" for r in dist.requires or [] if "extra ==" not in r]
        wheel.add(f"{dist_info}/METADATA", ("\n".join(meta) + "\n").encode())
        wheel.add(f"{dist_info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: migrator\nRoot-Is-Purelib: true\n"
                                       b"Tag: py3-none-any\n")
        wheel.add(f"{dist_info}/entry_points.txt", (dist.read_text("entry_points.txt") or
                                                    "[console_scripts]\nmigrator = migrator.cli.app:main\n").encode())
    finally:
        wheel.close()
    return path


def _source_hash() -> str:
    package = Path(migrator.__file__).resolve().parent
    digest = hashlib.sha256()
    for full in sorted(package.rglob("*")):
        if full.is_file() and "__pycache__" not in full.parts and full.suffix != ".pyc":
            digest.update(full.relative_to(package).as_posix().encode() + b"\0" + full.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "migrator" / "wheelhouse")


def wheelhouse(report=lambda _m: None) -> tuple[str, Path]:
    """(key, path of wheelhouse.tar) for this migrator, built now or taken from the cache.
    Built from the source's own environment, never downloaded: migrator's wheel from the package being run
    (`build_self`), and every dependency (`closure`) plus pip *repacked* from the installed files (`repack`)
    into wheels of the exact versions this migrator runs with. Cached per content, one tar, under
    ~/.cache/migrator/wheelhouse (or $MIGRATOR_WHEELHOUSE_CACHE)."""
    dists = closure()
    key_src = "\n".join([FORMAT, python_tag(), platform.machine(), __version__, _source_hash(),
                         *(f"{_canonical(d.metadata['Name'])}=={d.version}" for d in dists)])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    final = cache_dir() / key / "wheelhouse.tar"
    if final.is_file():
        report(f"wheelhouse {key} from the cache ({final.parent})")
        return key, final
    report(f"building the wheelhouse: migrator {__version__} and {len(dists)} dependencies from this environment")
    final.parent.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent.parent))
    try:
        wheels = tmp / "wheels"
        wheels.mkdir()
        build_self(wheels)
        for dist in dists:
            repack(dist, wheels)
        (wheels / "PYTHON_TAG").write_text(python_tag() + "\n")
        with tarfile.open(tmp / "wheelhouse.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for item in sorted(wheels.iterdir()):
                tar.add(item, arcname=item.name)
        out = tmp / "out"
        out.mkdir()
        os.rename(tmp / "wheelhouse.tar", out / "wheelhouse.tar")
        try:
            os.rename(out, final.parent)  # atomic; a concurrent build that finished first wins
        except OSError:
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return key, final


def _q(text: str) -> str:
    return shlex.quote(text)


def install_script(options: InstallOptions, key: str) -> str:
    """The target's side, for `sh -c`: unpack atomically, venv without pip, pip from its own wheel with
    no index and no pip config, then the link. Older wheelhouses are removed. The same recipe as
    playbooks/provision-vsn.yml; the tar arrives over SFTP in <dir>/wheelhouse."""
    home, venv = options.directory.rstrip("/"), f"{options.directory.rstrip('/')}/venv"
    wheels = f"{home}/wheelhouse/{key}"
    pip_install = (f"PIP_CONFIG_FILE=/dev/null {_q(venv)}/bin/python \"$pip/pip\" install --quiet --no-index --no-compile "
           f"--disable-pip-version-check --find-links {_q(wheels)}")
    lines = [
        "set -eu",
        f"cd {_q(home)}/wheelhouse",
        f"rm -rf {_q(wheels)}.partial {_q(wheels)} && mkdir {_q(wheels)}.partial",
        f"tar -C {_q(wheels)}.partial -xf {_q(wheels)}.tar && mv {_q(wheels)}.partial {_q(wheels)}",
        f"rm -f {_q(wheels)}.tar",
        f"for old in *; do [ \"$old\" = {_q(key)} ] || rm -rf \"$old\"; done",
        f"[ -x {_q(venv)}/bin/python ] || python3 -m venv --without-pip {_q(venv)}",
        f"pip=$(echo {_q(wheels)}/pip-*.whl)",
        # Dependencies: installed or upgraded to the wheelhouse's versions; migrator itself always
        # reinstalled (a new build may keep the version number).
        f"{pip_install} {_q(wheels)}/migrator-*.whl \"$pip\"",
        f"{pip_install} --no-deps --force-reinstall {_q(wheels)}/migrator-*.whl",
    ]
    if options.link:
        lines.append(f"mkdir -p {_q(os.path.dirname(options.link))} && ln -sfn {_q(venv)}/bin/migrator {_q(options.link)}")
    return "\n".join(lines)


def install(remote, options: InstallOptions, report=lambda _m: None) -> dict:
    """Install this migrator on `remote` (a RemoteVSN). Raises PreflightFailed when the target cannot
    take these wheels (no python3, another Python minor version or machine type) or the install fails."""
    code, out, err = remote.run(["python3", "-c", "import platform,sys;print('cp%d%d' % sys.version_info[:2], "
                                                  "platform.machine())"])
    if code != 0:
        raise PreflightFailed(f"{remote.what}: python3 does not run there ({(err or out).strip()[-200:]})",
                              hint="install python3 on the target (Debian: apt-get install python3), then retry")
    there = out.split()
    here = [python_tag(), platform.machine()]
    if there != here:
        raise PreflightFailed(f"{remote.what} runs {' '.join(there)[:60]}; this migrator's wheels are for "
                              f"{' '.join(here)}", hint="install migrator there yourself (playbooks/provision-vsn.yml)")
    key, tar = wheelhouse(report)
    home = options.directory.rstrip("/")
    remote.makedirs(f"{home}/wheelhouse", 0o755)
    report(f"sending the wheelhouse ({tar.stat().st_size // 2**20} MiB) to {remote.what}")
    remote.put_stream(f"{home}/wheelhouse/{key}.tar", tar, 0o644)
    report(f"installing migrator {__version__} into {home}/venv on {remote.what}")
    code, out, err = remote.run(["sh", "-c", install_script(options, key)], timeout=INSTALL_TIMEOUT)
    if code != 0:
        raise PreflightFailed(f"{remote.what}: installing migrator failed (exit {code}): "
                              f"{(err or out).strip()[-400:]}", hint="see the message; the target's Python may "
                                                                     "lack venv support (python3-venv)")
    return {"directory": home, "venv": f"{home}/venv", "link": options.link or None, "wheelhouse": key}


def wheel_names(tar: Path) -> list[str]:
    with tarfile.open(tar) as archive:
        return sorted(archive.getnames())
