"""The container images, checked without Docker (none here): their Dockerfiles' structure and
pins, their agreement with images/versions.env and with the code, hadolint, build.sh's behaviour
without an engine, and the source fetcher used in the ComfyUI build."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pytest
import yaml

from serverless_comfyui.controller.settings import OperatorSettings
from serverless_comfyui.entrypoint.settings import EXTRA_MODEL_PATHS, EntrypointSettings

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
NAMES = ("comfyui", "controller", "devpod")


def read_versions() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (IMAGES / "versions.env").read_text().splitlines():
        if not re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            assert not line.strip() or line.startswith("#"), f"not KEY=VALUE: {line!r}"
            continue
        key, _, value = line.partition("=")
        assert key not in values, f"{key} twice in versions.env"
        values[key] = Template(value).substitute(values)
    return values


VERSIONS = read_versions()


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def parse(name: str) -> list[Instruction]:
    """Instructions of a Dockerfile (continuations joined, comments dropped), with stage index."""
    text = (IMAGES / name / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(keyword.upper(), " ".join(args.split()), stage))
    return result


def final_stage(name: str) -> list[Instruction]:
    instructions = parse(name)
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in instructions:
        if item.keyword == "ENV":
            for pair in shlex.split(item.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


@pytest.mark.parametrize("name", NAMES)
def test_every_stage_builds_on_the_base_image_argument(name: str) -> None:
    instructions = parse(name)
    (global_arg,) = [i.args for i in instructions if i.keyword == "ARG" and i.stage == -1]
    assert global_arg == f"BASE_IMAGE={VERSIONS['BASE_IMAGE']}"
    bases = [i.args.split() for i in instructions if i.keyword == "FROM"]
    assert len(bases) == 2, "multi-stage: a build stage and a runtime stage"
    # The ComfyUI image's runtime stage stands on its build stage (no 6.8 GB venv copy).
    runtime = "build" if name == "comfyui" else "${BASE_IMAGE}"
    assert bases == [["${BASE_IMAGE}", "AS", "build"], [runtime]]


def test_the_upstream_base_is_pinned() -> None:
    base = VERSIONS["BASE_IMAGE"]
    assert base.startswith("docker.io/library/python:"), "fully qualified (podman and docker)"
    reference, _, digest = base.partition("@")
    assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), base
    tag = reference.rpartition(":")[2]
    assert re.fullmatch(r"\d+\.\d+\.\d+-slim-bookworm", tag), f"{base}: pin an exact tag"
    # The local stand-in: the same Debian release, with what the Dockerfiles call.
    assert VERSIONS["LOCAL_BASE_SUITE"] == "bookworm"
    packages = VERSIONS["LOCAL_BASE_PACKAGES"].split(",")
    assert {"python3", "python3-venv", "python-is-python3", "ca-certificates"} <= set(packages)
    assert VERSIONS["BASE"] == "auto"


@pytest.mark.parametrize("name", NAMES)
def test_runs_as_non_root_uid_1000(name: str) -> None:
    users = [i.args for i in final_stage(name) if i.keyword == "USER"]
    assert users and users[-1] == "1000:1000"
    (useradd,) = [i.args for i in final_stage(name) if "useradd" in i.args]
    assert "--uid 1000" in useradd and "--gid 1000" in useradd


@pytest.mark.parametrize("name", NAMES)
def test_the_runtime_stage_installs_nothing(name: str) -> None:
    """Build tools (pip wheel builds, compilers, apt) stay in the build stage."""
    runs = " ".join(i.args for i in final_stage(name) if i.keyword == "RUN")
    for word in ("pip ", "apt-get", "gcc", "wheel", "curl", "git "):
        assert word not in runs, f"{name}: {word!r} in the runtime stage"
    copies = [i.args for i in final_stage(name) if i.keyword == "COPY"]
    if name == "comfyui":  # on top of the build stage, which holds no build tools (wheels only)
        build = " ".join(i.args for i in parse(name) if i.stage == 0 and i.keyword == "RUN")
        for word in ("apt-get", "gcc", "curl", "git "):
            assert word not in build, f"{name}: {word!r} in the build stage"
        assert not [c for c in copies if c.startswith("--from=build")]
    else:
        assert "--from=build /opt/venv /opt/venv" in copies


@pytest.mark.parametrize("name", NAMES)
def test_arg_defaults_agree_with_versions_env(name: str) -> None:
    args = [i.args for i in parse(name) if i.keyword == "ARG"]
    assert args, f"{name} has no ARG"
    for arg in args:
        key, sep, default = arg.partition("=")
        assert sep, f"{name}: ARG {key} needs a default (from versions.env)"
        assert key in VERSIONS, f"{name}: ARG {key} is not in versions.env"
        assert default == VERSIONS[key], f"{name}: ARG {key}={default!r}, versions.env says"


@pytest.mark.parametrize("name", NAMES)
def test_the_workflow_library_is_shipped_and_found(name: str) -> None:
    instructions = final_stage(name)
    assert "workflows/ /opt/serverless-comfyui/workflows/" in [
        i.args for i in instructions if i.keyword == "COPY"
    ]
    env = env_of(instructions)
    assert env["SERVERLESS_COMFYUI_WORKFLOWS_DIR"] == "/opt/serverless-comfyui/workflows"
    assert env["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("name", NAMES)
def test_the_build_context_sends_what_the_dockerfile_copies(name: str) -> None:
    ignore = (IMAGES / name / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*"  # allowlist: everything else stays out
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    for item in parse(name):
        if item.keyword != "COPY" or item.args.startswith("--from"):
            continue
        *sources, _ = item.args.split()
        for source in sources:
            source = source.rstrip("/")
            assert (REPO / source).exists(), source
            assert any(source == a or source.startswith(a + "/") for a in allowed), (
                f"{name}: COPY {source} is excluded by Dockerfile.dockerignore"
            )


def test_the_comfyui_image_runs_our_entrypoint() -> None:
    final = final_stage("comfyui")
    (entrypoint,) = [json.loads(i.args) for i in final if i.keyword == "ENTRYPOINT"]
    assert entrypoint == ["python", "-m", "serverless_comfyui.entrypoint"]
    assert not [i for i in final if i.keyword == "CMD"]
    (expose,) = [i.args.split() for i in final if i.keyword == "EXPOSE"]
    assert {"8188", "8189"} <= set(expose)
    # ... on the ports the entrypoint and the operator use.
    defaults = EntrypointSettings.model_fields
    assert defaults["comfyui_port"].default == 8188
    assert defaults["health_port"].default == OperatorSettings.model_fields["health_port"].default
    env = env_of(final)
    assert env["COMFYUI_PORT"] == "8188" and env["HEALTH_PORT"] == "8189"
    assert env["WARMUP_WORKFLOW"] == "/etc/serverless-comfyui/warmup.json"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert [i.args for i in final if i.keyword == "WORKDIR"] == ["/opt/ComfyUI"]


def test_the_comfyui_image_wires_the_model_folders() -> None:
    final = final_stage("comfyui")
    runs = " ".join(i.args for i in final if i.keyword == "RUN")
    for folder in ("diffusion_models", "text_encoders", "vae", "loras", "checkpoints"):
        assert f"/opt/ComfyUI/models/{folder}" in runs
    for folder in ("models", "input", "output", "user"):
        assert re.search(rf"chown -R 1000:1000 .*/opt/ComfyUI/{folder}\b", runs), folder
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert f"images/comfyui/extra_model_paths.yaml {EXTRA_MODEL_PATHS}" in copies
    assert EXTRA_MODEL_PATHS in EntrypointSettings().comfyui_command

    config = yaml.safe_load((IMAGES / "comfyui" / "extra_model_paths.yaml").read_text())
    (section,) = config.values()
    assert section["base_path"] == "/opt/ComfyUI/models"
    for folder in ("diffusion_models", "text_encoders", "vae", "loras", "checkpoints"):
        assert folder in section[folder].split()


def test_the_comfyui_image_pins_comfyui_and_torch() -> None:
    instructions = parse("comfyui")
    runs = [i.args for i in instructions if i.keyword == "RUN"]
    lock = "images/comfyui/requirements.lock"
    pip = "/opt/venv/bin/pip"
    assert f"{pip} install --no-cache-dir --require-hashes -r /src/{lock}" in runs
    assert f"{pip} install --no-cache-dir --no-deps /src/operator && {pip} check" in runs
    copies = [i.args for i in instructions if i.keyword == "COPY" and i.stage == 0]
    assert f"{lock} /src/{lock}" in copies
    # ComfyUI's source: fetched and checked on the host, never downloaded by the build.
    assert "--from=comfyui-source . /opt/ComfyUI" in copies
    assert not [r for r in runs if "COMFYUI" in r and "fetch_source.py" in r]
    assert VERSIONS["COMFYUI_VERSION"] == "v0.8.0"
    assert VERSIONS["COMFYUI_SOURCE_URL"] == (
        "https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/v0.8.0.tar.gz"
    )
    assert re.fullmatch(r"(|[0-9a-f]{64})", VERSIONS["COMFYUI_SHA256"])
    stats = json.loads((REPO / "tests/fixtures/comfyui-0.8.0/system_stats.json").read_text())
    assert "v" + stats["system"]["comfyui_version"] == VERSIONS["COMFYUI_VERSION"]
    assert stats["system"]["pytorch_version"].split("+")[0] == VERSIONS["TORCH_VERSION"]
    # The lock pins exactly the torch versions of versions.env, with hashes.
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==(\S+) \\$", (REPO / lock).read_text(), re.M))
    for package, key in (
        ("torch", "TORCH_VERSION"),
        ("torchvision", "TORCHVISION_VERSION"),
        ("torchaudio", "TORCHAUDIO_VERSION"),
    ):
        assert re.fullmatch(r"\d+\.\d+\.\d+", VERSIONS[key]), key
        assert pins[package] == VERSIONS[key], f"{lock} pins {package}=={pins[package]}"
    assert "comfyui-frontend-package" in pins  # the web UI
    assert VERSIONS["NUNCHAKU"] == "false"  # Nunchaku INT4 does not run on Hopper


def test_the_comfyui_lock_covers_its_inputs() -> None:
    """Every requirement of images/comfyui/requirements.in (and ComfyUI's own list) is pinned."""
    folder = IMAGES / "comfyui"
    pinned = {
        re.sub(r"[-_.]+", "-", name).lower()
        for name in re.findall(
            r"^([A-Za-z0-9_.-]+)==", (folder / "requirements.lock").read_text(), re.M
        )
    }
    wanted: list[str] = []
    for source in ("requirements.in", "comfyui-requirements.txt"):
        for line in (folder / source).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line and not line.startswith("-"):
                wanted.append(re.split(r"[<>=~!\[; ]", line)[0])
    assert "requests" in wanted  # ComfyUI 0.8.0 imports it without listing it
    for name in wanted:
        assert re.sub(r"[-_.]+", "-", name).lower() in pinned, f"{name} is not in the lock"


def test_the_controller_and_devpod_commands() -> None:
    (cmd,) = [json.loads(i.args) for i in final_stage("controller") if i.keyword == "CMD"]
    assert cmd == ["python", "-m", "serverless_comfyui.controller"]
    (cmd,) = [json.loads(i.args) for i in final_stage("devpod") if i.keyword == "CMD"]
    assert cmd == ["sleep", "infinity"]
    runs = " ".join(i.args for i in parse("devpod") if i.keyword == "RUN")
    assert '"huggingface_hub==${HUGGINGFACE_HUB_VERSION}"' in runs
    assert env_of(final_stage("devpod"))["HF_HOME"].startswith("/tmp/")


def test_versions_env_agrees_with_the_operator_and_the_package() -> None:
    downloader = OperatorSettings.model_fields["downloader_image"].default
    assert VERSIONS["DEVPOD_IMAGE"] == downloader
    project = tomllib.loads((REPO / "operator" / "pyproject.toml").read_text())["project"]
    assert VERSIONS["IMAGE_VERSION"] == project["version"]
    assert VERSIONS["REGISTRY"] == "ghcr.io/serverless-comfyui"
    for key in ("COMFYUI_IMAGE", "CONTROLLER_IMAGE", "DEVPOD_IMAGE"):
        assert VERSIONS[key].startswith(VERSIONS["REGISTRY"] + "/")
        assert ":" in VERSIONS[key].rsplit("/", 1)[1], f"{key} has a tag"


def image_references(node: object) -> set[str]:
    """Every image a Helm values tree names: `image: repo:tag` or `{repository, tag}`."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("repository"), str) and node.get("tag") is not None:
            found.add(f"{node['repository']}:{node['tag']}")
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.add(value)
            found |= image_references(value)
    elif isinstance(node, list):
        for item in node:
            found |= image_references(item)
    return found


def test_the_chart_defaults_to_these_images() -> None:
    values = yaml.safe_load((REPO / "charts/serverless-comfyui/values.yaml").read_text())
    named = image_references(values)
    for key in ("COMFYUI_IMAGE", "CONTROLLER_IMAGE", "DEVPOD_IMAGE"):
        assert VERSIONS[key] in named, f"charts/serverless-comfyui/values.yaml lacks {key}"


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    dockerfiles = [str(IMAGES / name / "Dockerfile") for name in NAMES]
    result = subprocess.run([hadolint, *dockerfiles], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def run_build(
    tmp_path: Path, *args: str, buildx: bool = False, **env: str
) -> subprocess.CompletedProcess[str]:
    """images/build.sh with a `docker` on PATH whose `info` fails (no engine answers) and whose
    `buildx version` works only with buildx=True; a throwaway cache folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    buildx_rc = 0 if buildx else 1
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$1 $2" = "buildx version" ] && exit {buildx_rc}\n'
        'echo "Cannot connect to the Docker daemon" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    skip = {*VERSIONS, "ENGINE", "DRY_RUN", "PUSH", "SERVERLESS_COMFYUI_IMAGES_CACHE"}
    environment = {k: v for k, v in os.environ.items() if k not in skip}
    environment["PATH"] = f"{bin_dir}:{environment['PATH']}"
    environment["SERVERLESS_COMFYUI_IMAGES_CACHE"] = str(tmp_path / "cache")
    environment.update(env)
    return subprocess.run(
        ["bash", str(IMAGES / "build.sh"), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def build_lines(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_docker_buildx_without_an_engine_fails_with_directions(tmp_path: Path) -> None:
    result = run_build(tmp_path, buildx=True)
    assert result.returncode == 1
    assert "no Docker engine answers" in result.stderr and "ENGINE=podman" in result.stderr
    assert result.stdout == ""


def test_docker_buildx_commands_use_versions_env(tmp_path: Path) -> None:
    lines = build_lines(run_build(tmp_path, buildx=True, DRY_RUN="1"))
    assert len(lines) == 3
    for argv, name in zip(lines, NAMES, strict=True):
        assert argv[:3] == ["docker", "buildx", "build"]
        assert argv[argv.index("--file") + 1] == str(IMAGES / name / "Dockerfile")
        assert argv[argv.index("--tag") + 1] == VERSIONS[f"{name.upper()}_IMAGE"]
        assert f"BASE_IMAGE={VERSIONS['BASE_IMAGE']}" in argv  # docker: upstream by default
        assert argv[-1] == str(REPO)
    assert "COMFYUI_VERSION=v0.8.0" in lines[0]
    context = lines[0][lines[0].index("--build-context") + 1]
    assert context.startswith("comfyui-source=" + str(tmp_path / "cache" / "sources"))

    result = run_build(
        tmp_path, "comfyui", buildx=True, DRY_RUN="1", NUNCHAKU="true", REGISTRY="r.io/x"
    )
    assert "--tag r.io/x/comfyui:0.1.0-comfyui-v0.8.0-nunchaku" in result.stdout
    assert "NUNCHAKU=true" in result.stdout

    result = run_build(tmp_path, "nope", DRY_RUN="1")
    assert result.returncode == 2 and "unknown image" in result.stderr


def test_without_buildx_podman_builds_the_same_dockerfiles(tmp_path: Path) -> None:
    ca = "/etc/ssl/certs/ca-certificates.crt"
    lines = build_lines(run_build(tmp_path, DRY_RUN="1", BASE="local"))
    assert len(lines) == 3
    for argv, name in zip(lines, NAMES, strict=True):
        assert argv[:3] == ["bash", str(IMAGES / "podman.sh"), "build"]
        assert argv[argv.index("--file") + 1] == str(IMAGES / name / "Dockerfile")
        ignore = str(IMAGES / name / "Dockerfile.dockerignore")
        assert argv[argv.index("--ignorefile") + 1] == ignore
        assert argv[argv.index("--tag") + 1] == VERSIONS[f"{name.upper()}_IMAGE"]
        assert argv[argv.index("--network") + 1] == "host"  # pip reaches PyPI
        assert argv[argv.index("--volume") + 1] == f"{ca}:{ca}:ro"  # and trusts the host's CAs
        assert "--pull=never" in argv
        (base,) = [a for a in argv if a.startswith("BASE_IMAGE=")]
        assert re.fullmatch(r"BASE_IMAGE=localhost/serverless-comfyui/base:bookworm-\w{12}", base)
        assert any(a.startswith("io.serverless-comfyui.inputs=") for a in argv)
        assert argv[-1] == str(REPO)

    lines = build_lines(run_build(tmp_path, "devpod", DRY_RUN="1", BASE="upstream"))
    assert f"BASE_IMAGE={VERSIONS['BASE_IMAGE']}" in lines[0]

    lines = build_lines(run_build(tmp_path, "controller", "--save", "out", DRY_RUN="1"))
    assert lines[-1][2:5] == ["save", "--format", "oci-archive"]
    assert lines[-1][-3:] == [
        "--output",
        "out/controller.oci.tar.partial",
        VERSIONS["CONTROLLER_IMAGE"],
    ]


def test_podman_runs_with_the_projects_settings() -> None:
    conf = tomllib.loads((IMAGES / "containers.conf").read_text())
    assert conf["engine"]["runtime"] == "runc"  # crun fails on our machines
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"
    assert conf["engine"]["events_logger"] == "file"
    script = (IMAGES / "podman.sh").read_text()
    assert "CONTAINERS_CONF=$here/containers.conf" in script
    assert "--root" in script and "--runroot" in script
    assert "SERVERLESS_COMFYUI_IMAGES_CACHE" in script


def test_ci_builds_the_images_before_the_tests() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("make images") < ci.index("make test")
    # ComfyUI's source from the copy beside the clone where there is one (CI has no GitHub).
    assert '"../shared/vendor/comfyui/' in ci and "export COMFYUI_SOURCE_URL" in ci
    assert "/work/" not in ci


# -- images/comfyui/fetch_source.py -------------------------------------------------------------


def load_fetcher() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "fetch_source", IMAGES / "comfyui" / "fetch_source.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tarball(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(tmp_path: Path, archive: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(IMAGES / "comfyui" / "fetch_source.py"),
            "--repo",
            "comfyanonymous/ComfyUI",
            "--ref",
            "v0.8.0",
            "--dest",
            str(tmp_path / "ComfyUI"),
            "--url",
            archive.as_uri(),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fetch_source_unpacks_the_tag_without_its_top_folder(tmp_path: Path) -> None:
    archive = tmp_path / "src.tar.gz"
    digest = make_tarball(
        archive,
        {"ComfyUI-0.8.0/main.py": b"print()\n", "ComfyUI-0.8.0/comfy/cli_args.py": b"x = 1\n"},
        links={"ComfyUI-0.8.0/link.py": "main.py"},
    )
    result = fetch(tmp_path, archive, "--sha256", digest)
    assert result.returncode == 0, result.stderr
    assert digest in result.stdout
    dest = tmp_path / "ComfyUI"
    assert (dest / "main.py").read_text() == "print()\n"
    assert (dest / "comfy" / "cli_args.py").is_file()
    assert (dest / "link.py").resolve() == (dest / "main.py").resolve()

    from serverless_comfyui.entrypoint.settings import COMFYUI_HOME

    assert COMFYUI_HOME == "/opt/ComfyUI"
    fetcher = load_fetcher()
    assert fetcher.archive_url("comfyanonymous/ComfyUI", "v0.8.0") == (  # type: ignore[attr-defined]
        "https://github.com/comfyanonymous/ComfyUI/archive/refs/tags/v0.8.0.tar.gz"
    )


def test_fetch_source_takes_a_local_path(tmp_path: Path) -> None:
    archive = tmp_path / "src.tar.gz"
    digest = make_tarball(archive, {"ComfyUI-0.8.0/main.py": b"print()\n"})
    result = subprocess.run(
        [sys.executable, str(IMAGES / "comfyui" / "fetch_source.py"), "--repo", "a/b", "--ref",
         "v1", "--dest", "ComfyUI", "--url", "src.tar.gz", "--sha256", digest],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ComfyUI" / "main.py").is_file()
    missing = fetch(tmp_path, tmp_path / "absent.tar.gz")
    assert missing.returncode == 1


def test_fetch_source_refuses_a_different_archive_or_unsafe_paths(tmp_path: Path) -> None:
    archive = tmp_path / "src.tar.gz"
    make_tarball(archive, {"top/main.py": b"x"})
    result = fetch(tmp_path, archive, "--sha256", "0" * 64)
    assert result.returncode == 1 and "expected " + "0" * 64 in result.stderr
    assert not (tmp_path / "ComfyUI").exists()

    make_tarball(archive, {"top/../../evil.py": b"x"})
    result = fetch(tmp_path, archive)
    assert result.returncode == 1 and "unsafe path" in result.stderr
    make_tarball(archive, {"top/a.py": b"x"}, links={"top/out": "../../etc/passwd"})
    result = fetch(tmp_path, archive)
    assert result.returncode == 1 and "link leaving the tree" in result.stderr
    assert not (tmp_path / "evil.py").exists()
