"""The image definitions and the build bookkeeping, without an engine: what goes into each
build context, the build hash that tells a stale image, and the contract of the Dockerfiles."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from harness import images
from harness.exitcodes import ExitCode

ROOT = Path(images.__file__).resolve().parents[1]
CONTAINERS = ROOT / "containers"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the parts of the repository the images are built from."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(CONTAINERS, tmp_path / "containers")
    for pkg in ("harness", "reference_impl", "suites"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f'"""{pkg}"""\n')
    return tmp_path


def test_specs_name_three_images_with_minimal_capabilities() -> None:
    assert images.IMAGE_NAMES == ("reference", "strongswan", "libreswan")
    for spec in images.SPECS.values():
        assert "NET_ADMIN" in spec.cap_add
        assert "SYS_ADMIN" not in spec.cap_add
        assert (ROOT / spec.dockerfile).is_file()
    assert images.SPECS["strongswan"].devices == ("/dev/net/tun",)
    assert images.SPECS["reference"].tag("0.1.0") == "ipsec-interop/reference:0.1.0"
    assert images.SPECS["reference"].tag("0.1.0+dirty") == "ipsec-interop/reference:0.1.0-dirty"


def test_peer_context_holds_only_its_folder_and_the_common_one(tree: Path) -> None:
    names = [arc for arc, _ in images.context_files("strongswan", tree)]
    assert "containers/strongswan/Dockerfile" in names
    assert "containers/common/entrypoint-lib.sh" in names
    assert not [n for n in names if n.startswith(("project/", "containers/libreswan/"))]
    assert names == sorted(names)


def test_reference_context_holds_the_project_without_caches(tree: Path) -> None:
    cache = tree / "harness" / "__pycache__"
    cache.mkdir()
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    (tree / "harness" / "stray.pyc").write_bytes(b"\0")
    names = [arc for arc, _ in images.context_files("reference", tree)]
    assert "project/pyproject.toml" in names
    assert "project/harness/__init__.py" in names
    assert "containers/reference/entrypoint.sh" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_build_hash_is_stable_and_follows_the_sources(tree: Path) -> None:
    first = images.build_hash("strongswan", tree)
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert images.build_hash("strongswan", tree) == first
    ref = images.build_hash("reference", tree)
    # A change in the project's code makes the reference image stale, not the peers'.
    (tree / "harness" / "__init__.py").write_text('"""changed"""\n')
    assert images.build_hash("strongswan", tree) == first
    assert images.build_hash("reference", tree) != ref
    # A change in the peer's own files does.
    conf = tree / "containers" / "strongswan" / "strongswan.conf"
    conf.write_text(conf.read_text() + "# changed\n")
    assert images.build_hash("strongswan", tree) != first


def test_build_hash_sees_the_executable_bit(tree: Path) -> None:
    before = images.build_hash("libreswan", tree)
    (tree / "containers" / "libreswan" / "entrypoint.sh").chmod(0o644)
    assert images.build_hash("libreswan", tree) != before


def test_context_tar_is_normalised_and_carries_the_wheelhouse(tree: Path, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("click\n")
    (wheels / "click-8-py3-none-any.whl").write_bytes(b"PK")
    buf = io.BytesIO()
    images.write_context("reference", tree, buf, wheels)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert "wheels/requirements.txt" in members
    assert "wheels/click-8-py3-none-any.whl" in members
    entry = members["containers/reference/entrypoint.sh"]
    assert (entry.uid, entry.gid, entry.mtime, entry.mode) == (0, 0, 0, 0o755)
    assert members["project/pyproject.toml"].mode == 0o644


def test_reference_context_without_wheelhouse_is_an_error(tree: Path) -> None:
    with pytest.raises(images.ImageError, match="wheelhouse"):
        images.write_context("reference", tree, io.BytesIO(), None)


def test_current_labels_pass_and_stale_ones_say_how_to_rebuild(tree: Path) -> None:
    good = images.expected_labels("strongswan", tree)
    images.check_labels("strongswan", good, tree)
    bad = dict(good, **{f"{images.LABEL}build-hash": "0123456789abcdef"})
    with pytest.raises(images.StaleImage) as exc:
        images.check_labels("strongswan", bad, tree)
    text = str(exc.value)
    assert "ipsec-interop/strongswan:" in text
    assert "0123456789abcdef" in text
    assert "ipsec-interop images build strongswan" in text
    older = dict(good, **{f"{images.LABEL}version": "0.0.1"})
    with pytest.raises(images.StaleImage, match=re.escape("version is 0.0.1")):
        images.check_labels("strongswan", older, tree)
    with pytest.raises(images.StaleImage, match="missing"):
        images.check_labels("strongswan", {}, tree)


def test_repo_root_outside_a_checkout_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IPSEC_INTEROP_REPO", str(tmp_path))
    with pytest.raises(images.ImageError, match="checkout"):
        images.repo_root()


def test_platform_tags_cover_bookworm_glibc_and_the_engine_arch() -> None:
    tags = images._platforms("amd64")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert all(t.endswith("aarch64") for t in images._platforms("arm64"))


@pytest.mark.parametrize("name", images.IMAGE_NAMES)
def test_dockerfile_contract(name: str) -> None:
    text = (ROOT / images.SPECS[name].dockerfile).read_text()
    # FROM a build argument that defaults to debian:bookworm-slim, declared before it.
    assert text.index("ARG BASE=debian:bookworm-slim") < text.index("FROM ${BASE}")
    for label in ("image", "version", "peer", "peer-version", "build-hash"):
        assert f"org.ipsec-interop.{label}=" in text
    assert "HEALTHCHECK" in text
    assert (
        'ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/ipsec-interop-entrypoint"]'
        in text
    )
    # The build hash is the last thing set, so a new hash rebuilds only the metadata layer.
    assert text.rindex("ARG BUILD_HASH") > text.rindex("RUN ")
    assert "--privileged" not in text


def test_peer_versions_match_the_measured_peers() -> None:
    # shared/design/peers.md: strongSwan 5.9.8 and libreswan 4.10 (Debian 12).
    assert "ARG STRONGSWAN_VERSION=5.9.8\n" in (CONTAINERS / "strongswan/Dockerfile").read_text()
    assert "ARG LIBRESWAN_VERSION=4.10\n" in (CONTAINERS / "libreswan/Dockerfile").read_text()


def test_shell_scripts_parse() -> None:
    scripts = [*CONTAINERS.rglob("*.sh"), ROOT / "scripts" / "docker-engine"]
    assert len(scripts) >= 8
    for script in scripts:
        if script.name != "entrypoint-lib.sh":  # sourced, not run
            assert os.access(script, os.X_OK), f"{script} is not executable"
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_compose_file_keeps_the_container_rules() -> None:
    compose = yaml.safe_load((CONTAINERS / "compose.yaml").read_text())
    nets = compose["networks"]
    assert nets, "compose.yaml declares its network"
    for net in nets.values():
        assert net["internal"] is True
        for pool in net["ipam"]["config"]:
            assert pool["subnet"].startswith(("198.18.", "198.19.", "2001:db8:"))
    for name, svc in compose["services"].items():
        assert not svc.get("privileged"), name
        assert svc["cap_drop"] == ["ALL"], name
        assert "NET_ADMIN" in svc["cap_add"], name
        assert set(svc["cap_add"]) <= {"NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE", "AUDIT_WRITE"}


def test_build_script_hash_matches_the_module(tree: Path) -> None:
    """containers/build.sh runs the module with the system python and no project installed."""
    proc = subprocess.run(
        ["bash", str(CONTAINERS / "build.sh"), "hash", "strongswan"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "IPSEC_INTEROP_REPO"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == images.build_hash("strongswan", ROOT)


def test_cli_rejects_an_unknown_image() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "images", "build", "nosuch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == ExitCode.USAGE_ERROR
    assert "unknown image nosuch" in proc.stderr
