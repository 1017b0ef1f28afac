"""The container: the Dockerfile built from the local base image and run as Apptainer runs it.

``scripts/make-base-image.sh`` makes the base (Debian bookworm minbase + Python 3.11, cached
outside the clone), ``buildah bud`` builds ``neuroverse3d:<version>`` from it (CPU torch from the
local wheel folder, everything else from PyPI, nothing else from the network), then the image
runs under bwrap the way Apptainer runs a SIF: its root filesystem read-only, as uid 1000 (a
real non-root uid on the host, through setpriv), no network, the image's environment only, the
demo dataset bound read-only at /data, the derivatives at /out, the work folder at /work. The
demo (2 subjects, 4 mm) runs through the participant and group levels, the derivatives pass the
BIDS validator (the image's own), ``--version``/``--help`` answer, and the image is exported as
the oci-archive and docker-archive that ``apptainer build`` takes. Every command is the README's
(``test_readme_gives_the_commands_this_test_runs``).

Needs root (buildah's storage, debootstrap, a bind mount of the image's root), buildah,
bubblewrap, debootstrap and setpriv (installed with apt when missing, as .ci/run does), user
namespaces, and the CPU torch wheel in /opt/wheels; skips naming what is missing. Measured on 2
shared cores: 8 minutes with no cached base and no cached layers (debootstrap, then pip from
PyPI), 3 minutes with the caches and an unchanged tree (the demo's participant level, about
100 s, dominates).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from neuroverse_bids import __version__

pytestmark = pytest.mark.timeout(3000)  # a cold build (debootstrap, pip) comes first

ROOT = Path(__file__).resolve().parents[1]
TAG = f"neuroverse3d:{__version__}"
WHEELS = Path("/opt/wheels")
TOOLS = {"buildah": "buildah", "bwrap": "bubblewrap", "debootstrap": "debootstrap",
         "setpriv": "util-linux"}
CONTAINER = "neuroverse3d-rootfs"

# The README's commands, verbatim ({tag} is neuroverse3d:<version>). $ROOTFS, $DEMO, $OUT and
# $WORK are the image's root, the demo dataset, the output and the work folder on the host.
BASE_COMMAND = "scripts/make-base-image.sh"
BUILD_COMMAND = (
    "buildah bud --isolation chroot --layers "
    "--build-arg BASE=localhost/neuroverse3d-base:bookworm "
    "--build-arg TORCH_WHEELS=/wheels --volume /opt/wheels:/wheels:ro "
    "--build-arg PIP_CACHE=/pip-cache --volume /var/cache/neuroverse3d-ci/pip:/pip-cache "
    "--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro "
    "-t {tag} .")
ROOTFS_COMMANDS = (
    "buildah from --name neuroverse3d-rootfs {tag}",
    'mkdir -p "$ROOTFS" && mount --bind "$(buildah mount neuroverse3d-rootfs)" "$ROOTFS"',
    'mount -o remount,bind,ro "$ROOTFS"')
SANDBOX = (
    "env -i $(buildah inspect --type image --format '{{{{range .OCIv1.Config.Env}}}}{{{{.}}}} "
    "{{{{end}}}}' {tag}) "
    "setpriv --reuid 1000 --regid 1000 --clear-groups "
    'bwrap --ro-bind "$ROOTFS" / --dev /dev --proc /proc --tmpfs /tmp --unshare-all '
    '--die-with-parent --ro-bind "$DEMO" /data --bind "$OUT" /out --bind "$WORK" /work '
    "--chdir /tmp")
PARTICIPANT = ("neuroverse3d /data/bids /out participant --context-spec /data/context-spec.json "
               "-w /work --sloppy --nprocs 2 --precision float32 --device cpu")
GROUP = "neuroverse3d /data/bids /out group"
DEMO_DATA = 'neuroverse3d-demo-data "$DEMO" --subjects 2 --voxel-size 4'
SETUP = 'chmod -R a+rX "$DEMO" && mkdir "$OUT" "$WORK" && chown 1000:1000 "$OUT" "$WORK"'
ARCHIVE_COMMANDS = (
    "buildah push {tag} oci-archive:neuroverse3d-{version}.oci.tar:{tag}",
    "buildah push {tag} docker-archive:neuroverse3d-{version}.docker.tar:{tag}")
PODMAN = ('podman run --rm --read-only --network none -u 1000:1000 '
          '-v "$DEMO":/data:ro -v "$OUT":/out -v "$WORK":/work {tag} --version')
CLEANUP = 'umount "$ROOTFS" && buildah rm neuroverse3d-rootfs'


def _fill(command: str) -> str:
    return command.format(tag=TAG, version=__version__)


def _sh(command, env=None, timeout=3000, cwd=ROOT, check=True):
    """Run one README command (bash) with $ROOTFS etc. in its environment."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # the venv's
    result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, PATH=path, **(env or {})))
    if check:
        assert result.returncode == 0, (f"{command}\nexit {result.returncode}\n"
                                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _missing_tools():
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _why_not():
    """The reason this machine cannot run the test, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return ("needs root: buildah's storage, debootstrap and a bind mount of the image's "
                "root (.ci/run runs as root)")
    if _missing_tools() and shutil.which("apt-get"):
        packages = sorted({TOOLS[t] for t in _missing_tools()})
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
                       capture_output=True, timeout=900)
    if _missing_tools():
        return f"container tools missing and not installable here: {', '.join(_missing_tools())}"
    if not list(WHEELS.glob("torch-*+cpu-cp311-*.whl")):
        return f"no CPU torch wheel for Python 3.11 in {WHEELS} (the build installs torch from it)"
    probe = subprocess.run(["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
                            "bwrap", "--ro-bind", "/", "/", "--unshare-all", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bwrap cannot make a user namespace here: {probe.stderr.strip()[-300:]}"
    return None


@pytest.fixture(scope="module")
def image():
    """Build the base and the image once; returns timings and the image's config."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    timings = {}
    start = time.perf_counter()
    _sh(BASE_COMMAND)
    timings["base_s"] = time.perf_counter() - start
    start = time.perf_counter()
    _sh(_fill(BUILD_COMMAND))
    timings["build_s"] = time.perf_counter() - start
    inspect = json.loads(_sh(f"buildah inspect --type image {TAG}").stdout)
    size = _sh(f"buildah images --format '{{{{.Size}}}}' {TAG}").stdout.strip()
    print(f"\ncontainer: base {timings['base_s']:.0f} s, image build {timings['build_s']:.0f} s, "
          f"size {size}")
    return {"timings": timings, "config": inspect["OCIv1"]["config"], "size": size}


@pytest.fixture(scope="module")
def sandbox(image):
    """The image's root bound read-only at $ROOTFS, the demo dataset (made on the host) at $DEMO,
    empty $OUT and $WORK owned by uid 1000, all under a folder uid 1000 can traverse."""
    top = Path(tempfile.mkdtemp(prefix="neuroverse3d-container-"))
    top.chmod(0o755)
    env = {name: str(top / name.lower()) for name in ("ROOTFS", "DEMO", "OUT", "WORK")}
    _sh(f'umount "{env["ROOTFS"]}" 2>/dev/null; buildah rm {CONTAINER} >/dev/null 2>&1; true')
    try:
        _sh(DEMO_DATA, env=env)
        _sh(SETUP, env=env)
        for command in ROOTFS_COMMANDS:
            _sh(_fill(command), env=env)
        yield env
    finally:
        _sh(CLEANUP, env=env, check=False)
        shutil.rmtree(top, ignore_errors=True)


def _run(env, command, **kwargs):
    return _sh(f"{_fill(SANDBOX)} {command}", env=env, **kwargs)


def test_image_config(image):
    config = image["config"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["neuroverse3d"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TEMPLATEFLOW_HOME"] == "/opt/templateflow" and env["HOME"] == "/tmp"
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_version_help_and_the_sandbox(sandbox):
    assert _run(sandbox, "neuroverse3d --version").stdout.strip() == f"neuroverse3d {__version__}"
    assert "participant" in _run(sandbox, "neuroverse3d --help").stdout
    # the sandbox: uid 1000, read-only root and inputs, offline; torch is the CPU build
    probe = """
import os, socket, torch
assert os.getuid() == 1000 and os.getgid() == 1000, os.getuid()
for path in ("/opt/templateflow", "/opt/venv", "/data", "/"):
    assert not os.access(path, os.W_OK), path
assert os.access("/out", os.W_OK) and os.access("/tmp", os.W_OK)
try:
    socket.create_connection(("deb.debian.org", 80), timeout=5)
    raise SystemExit("network reachable")
except OSError:
    pass
assert torch.__version__.endswith("+cpu"), torch.__version__
print("sandbox ok")
"""
    assert "sandbox ok" in _run(sandbox, f"python -c '{probe}'").stdout


def test_demo_runs_read_only_offline_as_uid_1000(sandbox):
    start = time.perf_counter()
    participant = _run(sandbox, PARTICIPANT, timeout=1800)
    wall = time.perf_counter() - start
    _run(sandbox, GROUP)
    out = Path(sandbox["OUT"])
    print(f"\ncontainer: participant level of the 2-subject demo {wall:.0f} s inside the container")
    assert "finished 2 participant(s)" in participant.stdout + participant.stderr
    for sub, other in (("01", "02"), ("02", "01")):
        sidecar = json.loads((out / f"sub-{sub}/anat/sub-{sub}_desc-brain_mask.json").read_text())
        assert sidecar["ContextSubjects"] == [other]
        assert (out / f"sub-{sub}.html").is_file()
    assert (out / "group_volumes.tsv").is_file() and (out / "group.html").is_file()
    assert {p.stat().st_uid for p in out.rglob("*")} == {1000}  # written as the user, not root
    report = json.loads(_run(sandbox, "bids-validator-deno --format json /out",
                             check=False).stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == []


def test_archives_for_apptainer(image, tmp_path):
    for command in ARCHIVE_COMMANDS:
        _sh(_fill(command), cwd=tmp_path)
    with tarfile.open(tmp_path / f"neuroverse3d-{__version__}.docker.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        assert f"docker.io/library/{TAG}" in manifest[0]["RepoTags"]  # docker load: {TAG}
        config = json.load(archive.extractfile(manifest[0]["Config"]))
    assert config["config"]["Entrypoint"] == ["neuroverse3d"]
    assert config["config"]["User"] == "1000:1000"
    with tarfile.open(tmp_path / f"neuroverse3d-{__version__}.oci.tar") as archive:
        index = json.load(archive.extractfile("index.json"))
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == TAG


def test_podman_where_its_runtime_works(sandbox):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (the bwrap runs above stand in for it)")
    result = _sh(_fill(PODMAN), env=sandbox, check=False)
    if result.returncode != 0 and "neuroverse3d" not in result.stdout:
        pytest.skip(f"podman's OCI runtime does not work here: {result.stderr.strip()[-300:]}")
    assert result.stdout.strip() == f"neuroverse3d {__version__}"


def test_readme_gives_the_commands_this_test_runs():
    """Each command above, with the image's tag, appears in the README (continuation lines and
    runs of spaces folded)."""
    readme = re.sub(r"\s+", " ", (ROOT / "README.md").read_text().replace("\\\n", " "))
    commands = [BASE_COMMAND, BUILD_COMMAND, *ROOTFS_COMMANDS, SANDBOX, PARTICIPANT, GROUP,
                DEMO_DATA, SETUP, *ARCHIVE_COMMANDS, PODMAN, CLEANUP]
    missing = [c for c in map(_fill, commands) if re.sub(r"\s+", " ", c) not in readme]
    assert missing == []
