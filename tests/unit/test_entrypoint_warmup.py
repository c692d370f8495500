"""The entrypoint's pure parts: its settings, where the warm-up graph comes from, how it is
prepared, and how ComfyUI's failures are put into one line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from serverless_comfyui.entrypoint.child import exit_code_of
from serverless_comfyui.entrypoint.comfy import describe_execution_failure, describe_rejection
from serverless_comfyui.entrypoint.settings import EntrypointSettings
from serverless_comfyui.entrypoint.warmup import (
    WarmupError,
    is_graph,
    load_plan,
    minimal_graph,
    prepare_graph,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "comfyui-0.8.0"
WARMUP_GRAPH = json.loads((REPO / "workflows" / "warmup" / "workflow.json").read_text())
FLUX_GRAPH = json.loads((REPO / "workflows" / "flux_dev_t5fp8" / "workflow.json").read_text())


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "COMFYUI_PORT",
        "COMFYUI_COMMAND",
        "COMFYUI_URL",
        "HEALTH_HOST",
        "HEALTH_PORT",
        "WARMUP_WORKFLOW",
        "WARMUP_TIMEOUT_SECONDS",
        "STARTUP_TIMEOUT_SECONDS",
        "DRAIN_TIMEOUT_SECONDS",
        "NVIDIA_DEVICES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COMFYUI_DEVICE", "gpu")  # as on a GPU node, whatever this machine has


def test_settings_defaults_run_comfyui_for_the_image(clean_env: None) -> None:
    settings = EntrypointSettings()
    assert settings.command() == [
        "python",
        "/opt/ComfyUI/main.py",
        "--listen",
        "0.0.0.0",
        "--port",
        "8188",
        "--disable-auto-launch",
        "--extra-model-paths-config",
        "/opt/serverless-comfyui/extra_model_paths.yaml",
        "--temp-directory",
        "/tmp",
    ]
    assert settings.base_url() == "http://127.0.0.1:8188"
    assert (settings.health_host, settings.health_port) == ("0.0.0.0", 8189)
    assert settings.warmup_workflow is None
    assert settings.warmup_timeout_seconds == 1800
    assert settings.startup_timeout_seconds == 1800
    assert settings.drain_timeout_seconds == 590


def test_settings_from_the_operator_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMFYUI_PORT", "9000")
    monkeypatch.setenv("HEALTH_PORT", "9001")
    monkeypatch.setenv("WARMUP_WORKFLOW", "/etc/serverless-comfyui/warmup.json")
    monkeypatch.setenv("DRAIN_TIMEOUT_SECONDS", "30")
    settings = EntrypointSettings()
    assert "9000" in settings.command() and settings.base_url() == "http://127.0.0.1:9000"
    assert settings.health_port == 9001
    assert settings.warmup_workflow == Path("/etc/serverless-comfyui/warmup.json")
    assert settings.drain_timeout_seconds == 30

    monkeypatch.setenv("COMFYUI_COMMAND", "comfy --port $COMFYUI_PORT --name 'a b' $OTHER")
    monkeypatch.setenv("COMFYUI_URL", "http://comfy:1/")
    monkeypatch.setenv("WARMUP_WORKFLOW", "  ")
    settings = EntrypointSettings()
    assert settings.command() == ["comfy", "--port", "9000", "--name", "a b", "$OTHER"]
    assert settings.base_url() == "http://comfy:1"
    assert settings.warmup_workflow is None

    monkeypatch.setenv("COMFYUI_COMMAND", "  ")
    with pytest.raises(ValueError, match="empty"):
        EntrypointSettings().command()


def test_comfyui_runs_on_cpu_where_no_nvidia_device_is_present(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COMFYUI_DEVICE", "auto")
    monkeypatch.setenv("NVIDIA_DEVICES", str(tmp_path / "nvidia[0-9]*"))
    settings = EntrypointSettings()
    assert settings.runs_on_cpu() and settings.command()[-1] == "--cpu"
    (tmp_path / "nvidia0").touch()  # what the NVIDIA container toolkit adds to a GPU pod
    settings = EntrypointSettings()
    assert not settings.runs_on_cpu() and "--cpu" not in settings.command()
    monkeypatch.setenv("COMFYUI_DEVICE", "cpu")  # forced, GPU or not; and never twice
    monkeypatch.setenv("COMFYUI_COMMAND", "comfy --cpu")
    assert EntrypointSettings().command() == ["comfy", "--cpu"]


def test_exit_codes_follow_the_shell_convention() -> None:
    assert [exit_code_of(c) for c in (0, 1, 3, -9, -15)] == [0, 1, 3, 137, 143]


def write(path: Path, value: Any) -> Path:
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def test_no_warmup_when_unset_missing_or_empty(tmp_path: Path) -> None:
    assert load_plan(None).graph is None
    assert "not set" in load_plan(None).source
    assert load_plan(tmp_path / "nope.json").graph is None
    assert load_plan(write(tmp_path / "a.json", " \n")).graph is None
    assert load_plan(write(tmp_path / "b.json", {})).graph is None


def test_a_graph_or_a_prompt_body_is_used_as_is(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path / "g.json", WARMUP_GRAPH))
    assert plan.graph == WARMUP_GRAPH and plan.source == str(tmp_path / "g.json")
    plan = load_plan(write(tmp_path / "p.json", {"prompt": FLUX_GRAPH, "client_id": "x"}))
    assert plan.graph == FLUX_GRAPH


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ([1, 2], "not a ComfyUI API-format graph"),
        ({"1": {"inputs": {}}}, "not a ComfyUI API-format graph"),
        ({"name": "no_such_workflow"}, "no_such_workflow"),
        ({"configMapRef": {"name": "cm", "key": "workflow.json"}}, "neither in the library"),
    ],
)
def test_unusable_files_are_warmup_failures(tmp_path: Path, content: Any, message: str) -> None:
    with pytest.raises(WarmupError, match=message):
        load_plan(write(tmp_path / "w.json", content))


def test_a_library_reference_renders_a_minimal_run(tmp_path: Path) -> None:
    plan = load_plan(write(tmp_path / "workflow-ref.json", {"name": "flux_dev_t5fp8"}))
    graph = plan.graph
    assert graph is not None and plan.source == "library workflow 'flux_dev_t5fp8'"
    assert graph["17"]["inputs"]["steps"] == 1
    assert graph["44"]["inputs"] == {"width": 256, "height": 256, "batch_size": 1}
    assert graph["43"]["inputs"]["text"] == "warm-up"
    assert graph["48"]["inputs"]["unet_name"] == "flux1-dev.safetensors"  # the same weights

    # An explicit warm-up workflow is rendered with its own defaults, not cut down.
    plan = load_plan(
        write(tmp_path / "ref.json", {"name": "flux_dev_t5fp8", "warmup": {"name": "warmup"}})
    )
    assert plan.graph is not None and plan.source == "library workflow 'warmup'"
    assert plan.graph["1"]["inputs"]["width"] == 64


def test_a_configmap_reference_uses_the_graph_the_operator_wrote_beside_it(
    tmp_path: Path,
) -> None:
    write(tmp_path / "workflow.json", FLUX_GRAPH)
    ref: dict[str, Any] = {"configMapRef": {"name": "mine", "key": "flux.json"}}
    plan = load_plan(write(tmp_path / "workflow-ref.json", ref))
    assert plan.source == str(tmp_path / "workflow.json")
    assert plan.graph == minimal_graph(FLUX_GRAPH)

    write(tmp_path / "warmup.json", WARMUP_GRAPH)
    ref = {**ref, "warmup": {"configMapRef": {"name": "mine", "key": "warm.json"}}}
    plan = load_plan(write(tmp_path / "workflow-ref.json", ref))
    assert plan.graph == WARMUP_GRAPH


def test_minimal_graph_keeps_the_models_and_cuts_the_work() -> None:
    graph = minimal_graph(FLUX_GRAPH)
    assert graph["17"]["inputs"]["steps"] == 1
    assert graph["44"]["inputs"] == {"width": 256, "height": 256, "batch_size": 1}
    assert graph["46"] == FLUX_GRAPH["46"]  # not a latent: untouched
    for node in ("10", "11", "48"):
        assert graph[node] == FLUX_GRAPH[node]
    assert FLUX_GRAPH["17"]["inputs"]["steps"] == 20  # the input is not modified
    assert is_graph(graph)


def test_prepare_graph_sends_every_output_under_warmup() -> None:
    graph = {
        **FLUX_GRAPH,
        "90": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "b"}},
    }
    prepared = prepare_graph(graph, "abc")
    assert prepared["39"]["inputs"]["filename_prefix"] == "warmup/abc"
    assert prepared["90"]["inputs"]["filename_prefix"] == "warmup/abc"
    assert FLUX_GRAPH["39"]["inputs"]["filename_prefix"] == "ComfyUI"
    assert {k: v for k, v in prepared.items() if k not in ("39", "90")} == {
        k: v for k, v in FLUX_GRAPH.items() if k != "39"
    }


def test_comfyui_rejections_in_one_line() -> None:
    errors = json.loads((FIXTURES / "prompt_errors.json").read_text())
    assert describe_rejection(errors["unknown_class"][1]) == (
        "Cannot execute because node Nope does not exist. (Node ID '#1')"
    )
    assert describe_rejection(errors["bad_int"][1]) == (
        "Prompt outputs failed validation; node 1 (EmptyImage): Failed to convert an input "
        "value to a INT value: width, abc, invalid literal for int() with base 10: 'abc'"
    )
    assert describe_rejection("oops") == "prompt rejected: oops"


def test_execution_errors_in_one_line() -> None:
    history = json.loads((FIXTURES / "history_execution_error.json").read_text())
    (entry,) = history.values()
    assert describe_execution_failure(entry) == (
        "node 10 (VAELoader): safetensors._safetensors_rust.SafetensorError: "
        "Error while deserializing header: header too large"
    )
    interrupted = {
        "status": {
            "status_str": "error",
            "completed": False,
            "messages": [["execution_start", {}], ["execution_interrupted", {"node_id": "40"}]],
        }
    }
    assert describe_execution_failure(interrupted) == "execution interrupted"
    assert describe_execution_failure({"status": None}) == "execution ended with status unknown"


def test_the_default_command_is_valid_shell() -> None:
    from serverless_comfyui.entrypoint.settings import DEFAULT_COMFYUI_COMMAND

    assert shlex.split(DEFAULT_COMFYUI_COMMAND)[:2] == ["python", "/opt/ComfyUI/main.py"]
