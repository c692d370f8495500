"""The installed `serverless-comfyui` command: help on every subcommand, and `generate` against
the generation API (mounted as the proxy mounts it) with a ComfyUI emulator: progress shown,
image saved, a failing prompt ends it non-zero with ComfyUI's message."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from api_harness import (
    MODEL,
    RunningApi,
    add_pod,
    emulator,
    fast_settings,
    file_store_url,
    serve_api,
)
from serverless_comfyui.emulator.testing import RunningEmulator
from serverless_comfyui.proxy.registry import Registry

COMMAND = Path(sys.executable).with_name("serverless-comfyui")
# A render on the emulator takes well under a second; the bound only stops a hung client from
# hanging the suite, and is generous for a loaded CI machine.
CLIENT_TIMEOUT_SECONDS = 120


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str


async def run_cli(*args: str) -> Ran:
    """The console script as a user runs it (a process, so this loop keeps serving the API)."""
    process = await asyncio.create_subprocess_exec(
        str(COMMAND), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_SECONDS)
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


@dataclass
class World:
    api: RunningApi
    emu: RunningEmulator


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    registry = Registry()
    async with emulator(tmp_path, "a", step_seconds=0.05) as emu:
        add_pod(registry, "pod-a", emu.url)
        async with serve_api(fast_settings(tmp_path, file_store_url(tmp_path)), registry) as api:
            yield World(api, emu)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "generate"),
        (("proxy",), "SERVERLESS_COMFYUI_PROXY_HOLD_TIMEOUT_SECONDS"),
        (("operator",), "SERVERLESS_COMFYUI_RESYNC_SECONDS"),
        (("entrypoint",), "drain"),
        (("downloader",), "--manifest"),
        (("generate",), "--param KEY=VALUE"),
    ],
)
async def test_every_subcommand_has_help(args: tuple[str, ...], expected: str) -> None:
    ran = await run_cli(*args, "--help")
    assert ran.code == 0, ran.stderr
    assert "usage: serverless-comfyui" in ran.stdout and expected in ran.stdout


async def test_generate_shows_progress_and_saves_the_image(world: World, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    ran = await run_cli(
        "generate", "a red fox", "-o", str(out), "--url", world.api.url, "--model", MODEL,
        "--param", "steps=6", "--param", "width=512", "--param", "height=256",
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    assert ran.stdout.strip() == str(out)
    # tqdm's bar, at its end: all 6 sampler steps.
    assert "6/6" in ran.stderr and "step" in ran.stderr, ran.stderr
    with Image.open(out) as image:
        # The emulator renders at most 64 px a side, keeping the requested aspect.
        assert image.format == "PNG" and image.width == 2 * image.height


async def test_generate_saves_the_format_its_suffix_names(world: World, tmp_path: Path) -> None:
    out = tmp_path / "fox.webp"
    ran = await run_cli(
        "generate", "a red fox", "-o", str(out), "--url", world.api.url, "--model", MODEL,
        "--param", "steps=1", "--quiet",
    )  # fmt: skip
    assert ran.code == 0, ran.stderr
    with Image.open(out) as image:
        assert image.format == "WEBP"


async def test_failed_prompt_exits_non_zero_with_comfyuis_message(
    world: World, tmp_path: Path
) -> None:
    world.emu.state.controls.fail_next_prompts = 1
    out = tmp_path / "fox.png"
    ran = await run_cli(
        "generate", "a red fox", "-o", str(out), "--url", world.api.url, "--model", MODEL,
    )  # fmt: skip
    assert ran.code == 1, ran.stderr
    # The emulated fault is ComfyUI's error for a corrupt model file (ws_execution_error.json).
    assert "failed: VAELoader (node 10) failed: " in ran.stderr, ran.stderr
    assert "Error while deserializing header" in ran.stderr.splitlines()[-1]
    assert not out.exists()


async def test_refused_request_exits_2_naming_the_problem(world: World, tmp_path: Path) -> None:
    ran = await run_cli(
        "generate", "a red fox", "-o", str(tmp_path / "x.png"), "--url", world.api.url,
        "--model", "nosuchapp",
    )  # fmt: skip
    assert ran.code == 2
    assert "nosuchapp" in ran.stderr and "model" in ran.stderr, ran.stderr
    bad = await run_cli("generate", "x", "--url", world.api.url, "--param", "oops")
    assert bad.code == 2 and "KEY=VALUE" in bad.stderr


async def test_unreachable_proxy_is_a_clear_error(tmp_path: Path) -> None:
    out = str(tmp_path / "x.png")
    ran = await run_cli("generate", "x", "--url", "http://127.0.0.1:9", "-o", out)
    assert ran.code == 1 and "cannot reach the proxy at http://127.0.0.1:9" in ran.stderr
