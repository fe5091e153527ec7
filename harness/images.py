"""The container images: what goes into each, building them without a registry, staleness.

Three images, each ``ipsec-interop/<name>:<project version>``, built from ``containers/``:

- ``reference``: our node (this project, installed with pip from the build context) and the
  harness's probe tools; also the capture/firewall sidecar of the docker topology;
- ``strongswan``: charon + swanctl + kernel-libipsec (``shared/design/peers.md``);
- ``libreswan``: pluto + whack, in its own image (its package conflicts with strongSwan's).

Every Dockerfile starts ``FROM`` a build argument (``BASE``, default ``debian:bookworm-slim``).
When that image is neither present nor pullable (no registry reachable), :func:`build` creates
``ipsec-interop/debian:bookworm-slim`` locally with debootstrap + ``docker import``
(``containers/base/bootstrap.sh``, about 40 s) and builds on it.

The Python dependencies of the reference image come from a wheelhouse that the host's pip
fills (``pip download`` for the engine's platform), so image builds need no package index:
apt inside the build reaches Debian through the default bridge, nothing else is fetched.

Each image is labelled with the project version, the peer version and a *build hash* of
everything that went into it (Dockerfile, entrypoints, for ``reference`` the project's
sources). :func:`check_labels` compares them with the working tree: a stale image is refused
with a message that says how to rebuild.

This module imports only the standard library and drives the ``docker`` CLI, so
``containers/build.sh`` runs it (``python3 -m harness.images build``) on a machine where the
project is not installed. The CLI honours ``DOCKER_HOST``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

NAMESPACE = "ipsec-interop"
LABEL = "org.ipsec-interop."
DEFAULT_BASE = "debian:bookworm-slim"
LOCAL_BASE = f"{NAMESPACE}/debian:bookworm-slim"
"""The base created by debootstrap when :data:`DEFAULT_BASE` cannot be pulled."""
BASE_SUITE = "bookworm"

REBUILD_HINT = "ipsec-interop images build"
"""The command a stale or missing image message tells people to run."""

# Source folders of the project copied into the reference image.
_PROJECT_FILES = ("pyproject.toml", "README.md")
_PROJECT_DIRS = ("harness", "reference_impl", "suites")
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp")
# Build-time only: the reference image builds the project with these from the wheelhouse.
_BUILD_REQUIREMENTS = ("setuptools>=68", "wheel")
_GLIBC_MINOR = 36  # Debian bookworm's glibc 2.36: wheels up to manylinux_2_36 run there


class ImageError(RuntimeError):
    """An image could not be built or used; the message says what to do."""


class MissingImage(ImageError):
    """The image is not on the engine."""


class StaleImage(ImageError):
    """The image was built from other sources than the working tree's."""


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Dockerfile, what its context holds, and what its containers need."""

    name: str
    peer_version_arg: str | None
    """The Dockerfile's build argument naming the peer version (None: the project's)."""
    needs_project: bool
    """Its context carries the project's sources and the wheelhouse."""
    cap_add: tuple[str, ...]
    """Capabilities its containers get (after dropping all others)."""
    devices: tuple[str, ...]

    @property
    def dockerfile(self) -> str:
        return f"containers/{self.name}/Dockerfile"

    def tag(self, version: str) -> str:
        return f"{NAMESPACE}/{self.name}:{_tag_safe(version)}"


_NET = ("NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE")
SPECS: dict[str, ImageSpec] = {
    "reference": ImageSpec("reference", None, True, _NET, ("/dev/net/tun",)),
    "strongswan": ImageSpec("strongswan", "STRONGSWAN_VERSION", False, _NET, ("/dev/net/tun",)),
    # pluto writes Linux audit records and exits when it cannot (AUDIT_WRITE); no TUN: IKE only.
    "libreswan": ImageSpec("libreswan", "LIBRESWAN_VERSION", False, (*_NET, "AUDIT_WRITE"), ()),
}
IMAGE_NAMES: tuple[str, ...] = tuple(SPECS)


def _tag_safe(version: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in version)[:128]


# The source tree


def repo_root() -> Path:
    """The repository checkout the images are built from (``IPSEC_INTEROP_REPO`` overrides)."""
    env = os.environ.get("IPSEC_INTEROP_REPO")
    root = Path(env) if env else Path(__file__).resolve().parents[1]
    if not (root / "containers" / "strongswan" / "Dockerfile").is_file():
        raise ImageError(
            f"no containers/ folder under {root}: building images needs a checkout of the "
            "ipsec-interop repository (set IPSEC_INTEROP_REPO to it)"
        )
    return root


def project_version(root: Path) -> str:
    with open(root / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def project_requirements(root: Path) -> list[str]:
    with open(root / "pyproject.toml", "rb") as f:
        return [str(r) for r in tomllib.load(f)["project"].get("dependencies", [])]


def cache_dir() -> Path:
    path = Path(os.environ.get("IPSEC_INTEROP_CACHE", "~/.cache/ipsec-interop")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _walk(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if not name.endswith(_SKIP_SUFFIXES):
                yield Path(dirpath) / name


def context_files(name: str, root: Path) -> list[tuple[str, Path]]:
    """``(path in the build context, file)`` for every source file of image ``name``, sorted.

    The wheelhouse of the reference image is not listed (it is derived from pyproject.toml).
    """
    spec = SPECS[name]
    files: list[tuple[str, Path]] = []
    for sub in ("common", name):
        folder = root / "containers" / sub
        files += [(p.relative_to(root).as_posix(), p) for p in _walk(folder)]
    if spec.needs_project:
        for fname in _PROJECT_FILES:
            files.append((f"project/{fname}", root / fname))
        for dname in _PROJECT_DIRS:
            folder = root / dname
            if folder.is_dir():
                files += [(f"project/{p.relative_to(root).as_posix()}", p) for p in _walk(folder)]
    return sorted(files)


def build_hash(name: str, root: Path | None = None) -> str:
    """A digest of everything image ``name`` is built from, as the working tree has it now."""
    root = root or repo_root()
    h = hashlib.sha256()
    h.update(f"image {name}\nversion {project_version(root)}\n".encode())
    if SPECS[name].needs_project:
        reqs = "\n".join(wheel_requirements(root))
        h.update(f"requirements\n{reqs}\n".encode())
    for arcname, path in context_files(name, root):
        data = path.read_bytes()
        mode = "x" if os.access(path, os.X_OK) else "-"
        h.update(f"{arcname}\0{mode}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


def wheel_requirements(root: Path) -> list[str]:
    return [*project_requirements(root), *_BUILD_REQUIREMENTS]


def _tarinfo(arcname: str, size: int, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.size = size
    info.mode = mode
    info.mtime = 0  # the legacy builder ignores times; fixed anyway, for identical contexts
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_context(name: str, root: Path, out: IO[bytes], wheels: Path | None) -> None:
    """Write image ``name``'s build context to ``out`` as a tar stream."""
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for arcname, path in context_files(name, root):
            data = path.read_bytes()
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            tar.addfile(_tarinfo(arcname, len(data), mode), io.BytesIO(data))
        if SPECS[name].needs_project:
            if wheels is None:
                raise ImageError(f"the {name} image needs the wheelhouse")
            for path in sorted(wheels.iterdir()):
                data = path.read_bytes()
                tar.addfile(_tarinfo(f"wheels/{path.name}", len(data), 0o644), io.BytesIO(data))


# Talking to the engine (the docker CLI, so DOCKER_HOST and contexts work as for a person)


Log = Callable[[str], None]


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _docker(
    args: Sequence[str], *, timeout: float = 60.0, stdin: int | io.BufferedReader | None = None
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("docker")
    if exe is None:
        raise ImageError(
            "the docker CLI is not installed (scripts/docker-engine start installs it)"
        )
    env = dict(os.environ, DOCKER_BUILDKIT="0", DOCKER_CLI_HINTS="false")
    try:
        return subprocess.run(
            [exe, *args],
            stdin=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"docker {args[0]} timed out after {timeout:g} s") from exc


def engine_info() -> dict[str, str]:
    """The engine's version and architecture; :class:`ImageError` if none answers."""
    proc = _docker(["version", "--format", "{{json .Server}}"], timeout=20)
    if proc.returncode != 0 or not proc.stdout.strip() or proc.stdout.strip() == "null":
        where = os.environ.get("DOCKER_HOST", "the default socket")
        detail = (proc.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ImageError(
            f"no Docker engine answers at {where} ({detail}); as root, `scripts/docker-engine "
            "start` installs and starts one"
        )
    server = json.loads(proc.stdout)
    return {"version": str(server.get("Version", "?")), "arch": str(server.get("Arch", "amd64"))}


def inspect_image(ref: str) -> dict[str, object] | None:
    """``docker image inspect`` of ``ref``, or None when the engine has no such image."""
    proc = _docker(["image", "inspect", ref], timeout=30)
    if proc.returncode != 0:
        return None
    data = json.loads(proc.stdout)
    return data[0] if data else None


def image_labels(info: Mapping[str, object]) -> dict[str, str]:
    config = info.get("Config") or {}
    labels = config.get("Labels") if isinstance(config, Mapping) else None
    return dict(labels or {})


# The base image


def resolve_base(
    requested: str | None = None, *, pull: bool = False, log: Log = _stderr_log
) -> str:
    """The base image to build on, creating it when needed.

    ``requested`` (``--base``): that image, present or pulled, else an error. By default:
    ``debian:bookworm-slim`` if the engine has it, else our bootstrapped one if present
    (``pull`` tries the registry before it), else a pull of ``debian:bookworm-slim``, else
    a new bootstrapped one. A cached run never contacts a registry.
    """
    if requested:
        if inspect_image(requested) is None and not _pull(requested, log):
            raise ImageError(f"base image {requested} is neither on the engine nor pullable")
        return requested
    if inspect_image(DEFAULT_BASE) is not None:
        return DEFAULT_BASE
    if not pull and inspect_image(LOCAL_BASE) is not None:
        return LOCAL_BASE
    if _pull(DEFAULT_BASE, log):
        return DEFAULT_BASE
    if inspect_image(LOCAL_BASE) is not None:
        return LOCAL_BASE
    bootstrap_base(LOCAL_BASE, log=log)
    return LOCAL_BASE


def _pull(ref: str, log: Log) -> bool:
    log(f"pulling {ref} ...")
    proc = _docker(["pull", "--quiet", ref], timeout=300)
    if proc.returncode == 0:
        return True
    reason = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    log(f"cannot pull {ref}: {reason[:160]}")
    return False


def bootstrap_base(tag: str = LOCAL_BASE, *, log: Log = _stderr_log) -> float:
    """Create ``tag`` from Debian with debootstrap + ``docker import``; returns seconds taken."""
    script = repo_root() / "containers" / "base" / "bootstrap.sh"
    log(f"creating {tag} locally with debootstrap (about 40 s) ...")
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(script), tag, BASE_SUITE],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env=dict(os.environ, DOCKER_BUILDKIT="0"),
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ImageError(f"could not create the base image {tag}:\n{tail}")
    seconds = time.monotonic() - start
    log(f"created {tag} in {seconds:.0f} s")
    return seconds


# The wheelhouse


def _platforms(arch: str) -> list[str]:
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(_GLIBC_MINOR, 16, -1)]
    tags.append(f"manylinux2014_{machine}")
    if machine == "x86_64":
        tags += [f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return tags


def ensure_wheels(root: Path, arch: str, *, log: Log = _stderr_log) -> Path:
    """A folder with every dependency of the project as a wheel for the image's platform
    (CPython 3.11, glibc 2.36, the engine's architecture) and ``requirements.txt``.

    Filled once per dependency list with ``pip download`` through the host's pip and its
    configuration (index, proxy, certificates); reused afterwards without asking an index.
    """
    reqs = wheel_requirements(root)
    key = hashlib.sha256(json.dumps([reqs, arch, 1]).encode()).hexdigest()[:12]
    folder = cache_dir() / f"wheels-{key}"
    if (folder / "requirements.txt").is_file():
        return folder
    log(f"downloading the Python dependencies of the reference image for {arch} ...")
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache_dir()))
    try:
        argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check"]
        argv += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
        for platform in _platforms(arch):
            argv += ["--platform", platform]
        argv += ["--dest", str(tmp), *reqs]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            errors = [ln for ln in proc.stderr.splitlines() if "is ignored" not in ln]
            raise ImageError(
                "pip could not download the reference image's dependencies:\n"
                + "\n".join(errors[-10:])
            )
        (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# Building


@dataclass(frozen=True)
class BuildResult:
    name: str
    tag: str
    image_id: str
    seconds: float
    build_hash: str


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time per machine (parallel test workers wait for each other)."""
    with open(cache_dir() / "images.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def no_build_running() -> Iterator[bool]:
    """Hold the build lock if no build is running on this machine: yields True (and keeps
    builds out until the block ends), or False at once when a build holds it."""
    with open(cache_dir() / "images.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_build_leftover(container: Mapping[str, object], run_label: str) -> bool:
    """Whether a container (an entry of the engine's container listing) is a step of an image
    build of ours that never finished: the legacy builder (``DOCKER_BUILDKIT=0``) runs every
    step in a container created from the previous step's bare image ID, and an interrupted
    build can leave the last one behind (state created, exited or dead), holding its untagged
    image. Containers of runs (``run_label``), of compose and of anything started from a
    tagged image are never build steps."""
    labels = container.get("Labels")
    if not isinstance(labels, Mapping) or f"{LABEL}base" not in labels:
        return False
    if run_label in labels or any(str(k).startswith("com.docker.compose.") for k in labels):
        return False
    image = container.get("Image")
    return (
        isinstance(image, str)
        and image.startswith("sha256:")
        and container.get("State") in ("created", "exited", "dead")
    )


def build(
    names: Iterable[str] = IMAGE_NAMES,
    *,
    base: str | None = None,
    pull: bool = False,
    verbose: bool = False,
    no_cache: bool = False,
    log: Log = _stderr_log,
) -> list[BuildResult]:
    """Build the images (the engine's layer cache makes an unchanged rebuild take seconds;
    ``no_cache`` builds every layer again, as on a fresh machine)."""
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in SPECS]
    if unknown:
        raise ImageError(f"unknown image {', '.join(unknown)}; images are {', '.join(SPECS)}")
    root = repo_root()
    version = project_version(root)
    info = engine_info()
    results: list[BuildResult] = []
    with _build_lock():
        base_image = resolve_base(base, pull=pull, log=log)
        wheels = None
        if any(SPECS[n].needs_project for n in wanted):
            wheels = ensure_wheels(root, info["arch"], log=log)
        for name in wanted:
            results.append(
                _build_one(name, root, version, base_image, wheels, verbose, no_cache, log)
            )
        # Earlier builds of our images that lost their tag: nothing refers to them any more.
        _docker(["image", "prune", "--force", "--filter", f"label={LABEL}image"], timeout=120)
    return results


def _build_one(
    name: str,
    root: Path,
    version: str,
    base_image: str,
    wheels: Path | None,
    verbose: bool,
    no_cache: bool,
    log: Log,
) -> BuildResult:
    spec = SPECS[name]
    tag = spec.tag(version)
    digest = build_hash(name, root)
    logs = cache_dir() / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"build-{name}.log"
    start = time.monotonic()
    log(f"building {tag} on {base_image} ...")
    with tempfile.TemporaryFile(dir=cache_dir()) as ctx:
        write_context(name, root, ctx, wheels)
        ctx.seek(0)
        argv = [
            "docker", "build", "--force-rm", "--tag", tag, "--file", spec.dockerfile,
            "--build-arg", f"BASE={base_image}",
            "--build-arg", f"PROJECT_VERSION={version}",
            "--build-arg", f"BUILD_HASH={digest}",
            "--label", f"{LABEL}base-image={base_image}",
            *(["--no-cache"] if no_cache else []),
            "-",
        ]  # fmt: skip
        exe = shutil.which("docker") or "docker"
        env = dict(os.environ, DOCKER_BUILDKIT="0", DOCKER_CLI_HINTS="false")
        with open(log_path, "w") as out:
            proc = subprocess.Popen(
                [exe, *argv[1:]],
                stdin=ctx,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if verbose:
                    log(line.rstrip("\n"))
            rc = proc.wait()
    seconds = time.monotonic() - start
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise ImageError(f"building {tag} failed (log: {log_path}):\n{tail}")
    info = inspect_image(tag) or {}
    image_id = str(info.get("Id", "?"))
    log(f"built {tag} ({image_id[7:19]}) in {seconds:.1f} s")
    return BuildResult(name, tag, image_id, seconds, digest)


# Staleness


def expected_labels(name: str, root: Path | None = None) -> dict[str, str]:
    root = root or repo_root()
    return {
        f"{LABEL}image": name,
        f"{LABEL}version": project_version(root),
        f"{LABEL}build-hash": build_hash(name, root),
    }


def check_labels(name: str, labels: Mapping[str, str], root: Path | None = None) -> None:
    """Raise :class:`StaleImage` unless ``labels`` match what the working tree would build."""
    root = root or repo_root()
    tag = SPECS[name].tag(project_version(root))
    hint = f"rebuild it with `{REBUILD_HINT} {name}` (or containers/build.sh {name})"
    for key, want in expected_labels(name, root).items():
        got = labels.get(key)
        if got != want:
            what = key.removeprefix(LABEL)
            raise StaleImage(
                f"image {tag} is stale: its {what} is {got or 'missing'}, the working tree's "
                f"is {want}; {hint}"
            )


def require_image(name: str, root: Path | None = None) -> str:
    """The tag of image ``name`` if the engine has it and it is current, else an error that
    says how to build it."""
    root = root or repo_root()
    tag = SPECS[name].tag(project_version(root))
    info = inspect_image(tag)
    if info is None:
        raise MissingImage(
            f"image {tag} is missing; build it with `{REBUILD_HINT}` (or containers/build.sh)"
        )
    check_labels(name, image_labels(info), root)
    return tag


@dataclass(frozen=True)
class ImageState:
    name: str
    tag: str
    present: bool
    status: str
    """``current``, ``missing`` or ``stale: <why>``."""
    image_id: str = ""
    created: str = ""
    size_mb: float = 0.0
    labels: Mapping[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "tag": self.tag,
            "present": self.present,
            "status": self.status,
            "id": self.image_id,
            "created": self.created,
            "size_mb": round(self.size_mb, 1),
            "version": (self.labels or {}).get(f"{LABEL}version"),
            "peer_version": (self.labels or {}).get(f"{LABEL}peer-version"),
            "base": (self.labels or {}).get(f"{LABEL}base-image"),
        }


def list_images(names: Iterable[str] = IMAGE_NAMES) -> list[ImageState]:
    root = repo_root()
    version = project_version(root)
    states = []
    for name in names:
        tag = SPECS[name].tag(version)
        info = inspect_image(tag)
        if info is None:
            states.append(ImageState(name, tag, False, "missing"))
            continue
        labels = image_labels(info)
        try:
            check_labels(name, labels, root)
            status = "current"
        except StaleImage as exc:
            status = "stale: " + str(exc).split(" is stale: ", 1)[-1].split("; rebuild", 1)[0]
        size = info.get("Size", 0)
        states.append(
            ImageState(
                name,
                tag,
                True,
                status,
                str(info.get("Id", ""))[7:19],
                str(info.get("Created", ""))[:19],
                (float(size) if isinstance(size, int | float) else 0.0) / 1e6,
                labels,
            )
        )
    return states


# ``python3 -m harness.images``: the same without the project installed (containers/build.sh)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="containers/build.sh", description="Build the ipsec-interop container images."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the images (all by default)")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(IMAGE_NAMES)}")
    b.add_argument("--base", help=f"base image (default {DEFAULT_BASE}, else bootstrapped)")
    b.add_argument("--pull", action="store_true", help="try pulling the default base first")
    b.add_argument("-v", "--verbose", action="store_true", help="show docker build's output")
    b.add_argument("--no-cache", action="store_true", help="build every layer again")
    sub.add_parser("list", help="the images and whether they are current")
    h = sub.add_parser("hash", help="the build hash of an image, from the working tree")
    h.add_argument("name", choices=IMAGE_NAMES)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            start = time.monotonic()
            build(
                args.names or IMAGE_NAMES,
                base=args.base,
                pull=args.pull,
                verbose=args.verbose,
                no_cache=args.no_cache,
            )
            print(f"done in {time.monotonic() - start:.1f} s", file=sys.stderr)
        elif args.command == "list":
            for state in list_images():
                print(f"{state.tag:40} {state.image_id or '-':12} {state.status}")
        else:
            print(build_hash(args.name))
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
