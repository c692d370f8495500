"""Every build input is pinned: the Go tools' module files (tools/<group>/go.mod + go.sum) build
with -mod=readonly and leave nothing to resolve, and the Python lock (operator/uv.lock) matches
operator/pyproject.toml, hashes every file, and is what the images install (its export)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
TOOLS = ROOT / "tools"
GROUPS = sorted(p.parent.name for p in TOOLS.glob("*/go.mod"))
UV = ROOT / ".tools" / "uv" / "bin" / "uv"
# An exact version: a release (v1.2.3, v1.2.3-rc.1, +incompatible) or a pseudo-version.
EXACT = re.compile(r"^v\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?$")


def go(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("go") is None:
        pytest.fail("Go is not installed: install Go >= 1.26 and run 'make tools'", pytrace=False)
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOWORK": "off", "CGO_ENABLED": "0"}
    return subprocess.run(
        ["go", *args], cwd=directory, capture_output=True, text=True, env=env, timeout=600
    )


def module_problems(directory: Path) -> list[str]:
    """What in a tool group's module files leaves the build anything to resolve."""
    if not (directory / "go.sum").is_file():
        return [f"{directory.name}: go.sum is missing"]
    edit = go(directory, "mod", "edit", "-json")
    if edit.returncode != 0:
        return [f"{directory.name}: go.mod does not parse: {edit.stderr.strip()}"]
    module = json.loads(edit.stdout)
    problems = [
        f"{directory.name}: {r['Path']} {r['Version']} is not an exact version"
        for r in module.get("Require") or []
        if not EXACT.match(r["Version"])
    ]
    problems += [
        f"{directory.name}: replace {r['Old']['Path']} => {r['New']['Path']} has no version"
        for r in module.get("Replace") or []
        if not r["New"].get("Version")
    ]
    if not module.get("Tool"):
        problems.append(f"{directory.name}: go.mod declares no tool")
    # -mod=readonly: a package whose module is not required, or a module missing from go.sum,
    # is an error instead of a lookup.
    listed = go(directory, "list", "-deps", "-f", "{{.ImportPath}}", "tool")
    if listed.returncode != 0:
        problems.append(f"{directory.name}: go list -mod=readonly failed: {listed.stderr[-2000:]}")
    return problems


@pytest.mark.parametrize("group", GROUPS)
def test_tool_modules_pin_everything(group: str) -> None:
    assert module_problems(TOOLS / group) == []


def test_the_expected_tools_are_declared() -> None:
    declared = {
        tool["Path"]
        for group in GROUPS
        for tool in json.loads(go(TOOLS / group, "mod", "edit", "-json").stdout)["Tool"]
    }
    for package in [
        "go.etcd.io/etcd/server/v3",
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubectl",
        "k8s.io/kubernetes/cmd/kubelet",
        "sigs.k8s.io/kwok/cmd/kwok",
        "helm.sh/helm/v3/cmd/helm",
    ]:
        assert package in declared


def test_every_staging_module_is_replaced_by_its_release() -> None:
    """k8s.io/kubernetes maps its staging modules to ./staging/src/...; the wrapper module must
    replace each with the published v0.<minor>.<patch> of the same release."""
    directory = TOOLS / "kubernetes"
    module = json.loads(go(directory, "mod", "edit", "-json").stdout)
    version = next(r["Version"] for r in module["Require"] if r["Path"] == "k8s.io/kubernetes")
    download = go(directory, "mod", "download", "-json", f"k8s.io/kubernetes@{version}")
    assert download.returncode == 0, download.stderr
    upstream = Path(json.loads(download.stdout)["GoMod"]).read_text()
    staging = set(re.findall(r"(k8s\.io/[a-z0-9-]+) => \./staging/src/", upstream))
    replaced = {r["Old"]["Path"]: r["New"]["Version"] for r in module["Replace"]}
    assert staging and staging <= set(replaced)
    assert {replaced[m] for m in staging} == {"v0." + version.removeprefix("v1.")}


def _copy_group(tmp_path: Path, group: str) -> Path:
    target = tmp_path / group
    shutil.copytree(TOOLS / group, target)
    return target


def test_a_missing_go_sum_entry_is_found(tmp_path: Path) -> None:
    copy = _copy_group(tmp_path, "kwok")
    lines = (copy / "go.sum").read_text().splitlines()
    kept = [line for line in lines if not line.startswith("sigs.k8s.io/kwok ")]
    assert len(kept) < len(lines)
    (copy / "go.sum").write_text("\n".join(kept) + "\n")
    problems = module_problems(copy)
    assert problems and "missing go.sum entry" in problems[-1]


def test_an_unpinned_replace_or_requirement_is_found(tmp_path: Path) -> None:
    copy = _copy_group(tmp_path, "helm")
    text = (copy / "go.mod").read_text()
    (copy / "go.mod").write_text(text + "\nreplace helm.sh/helm/v3 => ../helm-checkout\n")
    assert any("has no version" in p for p in module_problems(copy))
    copy = _copy_group(tmp_path / "b", "helm")
    (copy / "go.mod").write_text(text + "\ntool golang.org/x/tools/cmd/stringer\n")
    assert any("go list -mod=readonly failed" in p for p in module_problems(copy))


# --- Python ---------------------------------------------------------------------------------


def uv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not UV.exists():
        pytest.fail(f"{UV} is missing: run 'make venv'", pytrace=False)
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    return subprocess.run(
        [str(UV), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


def test_lock_matches_pyproject() -> None:
    checked = uv("lock", "--project", "operator", "--check")
    assert checked.returncode == 0, checked.stderr


def test_every_locked_file_has_a_hash() -> None:
    lock = tomllib.loads((ROOT / "operator" / "uv.lock").read_text())
    packages = [p for p in lock["package"] if p["name"] != "serverless-comfyui"]
    assert len(packages) > 20
    for package in packages:
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, package["name"]
        assert all(f.get("hash", "").startswith("sha256:") for f in files), package["name"]


def test_the_images_install_the_export_of_the_lock() -> None:
    exported = uv("export", "--project", "operator", "--frozen", "--no-emit-project", "--quiet")
    assert exported.returncode == 0, exported.stderr
    committed = (ROOT / "operator" / "requirements.lock").read_text()
    body = [line for line in exported.stdout.splitlines() if not line.startswith("#")]
    assert body == [line for line in committed.splitlines() if not line.startswith("#")], (
        "operator/requirements.lock is stale: run 'make lock'"
    )
    for image, lock in (
        ("controller", "operator/requirements.lock"),
        ("devpod", "operator/requirements.lock"),
        ("comfyui", "images/comfyui/requirements.lock"),
    ):
        run_lines = [
            line for line in (ROOT / "images" / image / "Dockerfile").read_text().splitlines()
            if not line.lstrip().startswith("#")
        ]  # fmt: skip
        text = "\n".join(run_lines)
        assert "--require-hashes" in text and lock.rsplit("/", 1)[1] in text, image


def _pins(text: str) -> dict[str, str]:
    """name -> version of a hashed requirements file, for Python 3.11 (our development one)."""
    pins = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)(?: ; (.*?))?(?: \\)?$", line)
        if match and (match[3] is None or "python_full_version >= '3.12'" not in match[3]):
            pins[match[1].lower()] = match[2]
    return pins


def test_the_comfyui_image_holds_our_locked_versions() -> None:
    """The ComfyUI image's one environment runs our entrypoint: it must hold every version our
    own lock pins (one resolution over both, made by `make lock`)."""
    ours = _pins((ROOT / "operator" / "requirements.lock").read_text())
    image = _pins((ROOT / "images" / "comfyui" / "requirements.lock").read_text())
    assert len(ours) > 20
    assert {name: image.get(name) for name in ours} == ours


def test_make_venv_refuses_a_lock_older_than_pyproject(tmp_path: Path) -> None:
    for name in ("Makefile", "operator/pyproject.toml", "operator/uv.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".tools").mkdir()
    (tmp_path / ".tools" / "uv").symlink_to(UV.parents[1])
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "uv-requirements.txt").write_text("")
    os.utime(tmp_path / "scripts" / "uv-requirements.txt", (0, 0))  # the uv install is current
    pyproject = tmp_path / "operator" / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tqdm==', '"six==1.16.0",\n  "tqdm=='))
    made = subprocess.run(
        ["make", "venv"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert made.returncode != 0
    assert "operator/uv.lock is out of date with operator/pyproject.toml: run 'make lock'" in (
        made.stderr
    )
    assert not (tmp_path / ".venv").exists()


def test_the_comfyui_lock_matches_its_inputs(tmp_path: Path) -> None:
    """images/comfyui/requirements.lock (the ComfyUI image's and the real-ComfyUI test world's
    environment) is what `make lock` resolves from requirements.in and our pyproject.toml."""
    folder = ROOT / "images" / "comfyui"
    compiled = uv(
        "pip", "compile", "--quiet", "--universal", "--generate-hashes", "--python-version",
        "3.11", "requirements.in", "../../operator/pyproject.toml", "-o", str(tmp_path / "lock"),
        cwd=folder,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr

    def body(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.lstrip().startswith("#")]

    assert body((tmp_path / "lock").read_text()) == body((folder / "requirements.lock").read_text())
    lock = (folder / "requirements.lock").read_text()
    assert "torch==2.14.1 " in lock and "--hash=sha256:" in lock
