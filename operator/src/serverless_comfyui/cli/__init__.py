"""The `serverless-comfyui` command: run one of the product's processes, or generate an image.

serverless-comfyui proxy | operator              # settings from the environment (--help lists them)
serverless-comfyui entrypoint [run | drain ...]  # the ComfyUI image's entrypoint
serverless-comfyui downloader --dest ... --manifest ...
serverless-comfyui generate "a red fox" -o fox.png [--model M] [--url URL] [--param k=v ...]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pydantic_settings import BaseSettings

from serverless_comfyui.cli import generate

PROG = "serverless-comfyui"


def _settings_help(settings: type[BaseSettings]) -> str:
    """The environment variables a settings class reads, with their defaults."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    lines = ["environment (defaults in brackets):"]
    for name, field in settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "required" if field.is_required() else repr(default)
        lines.append(f"  {prefix}{name.upper()}  [{shown}]")
    return "\n".join(lines)


def _run_proxy(_: argparse.Namespace) -> int:
    from serverless_comfyui.proxy.__main__ import main

    return main()


def _run_operator(_: argparse.Namespace) -> int:
    from serverless_comfyui.controller.__main__ import main

    main()
    return 0


def _run_entrypoint(argv: list[str]) -> int:
    from serverless_comfyui.entrypoint.__main__ import main

    return main(argv, prog=f"{PROG} entrypoint")


def _run_downloader(argv: list[str]) -> int:
    from serverless_comfyui.downloader.__main__ import main

    return main(argv, prog=f"{PROG} downloader")


# Subcommands with a command line of their own: everything after the name goes to them, so
# `serverless-comfyui downloader --help` is the downloader's help.
DELEGATES: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "entrypoint": ("run the ComfyUI pod entrypoint, or drain it", _run_entrypoint),
    "downloader": ("download model files (resumable, sha256-verified)", _run_downloader),
}


def _add_process(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    settings: type[BaseSettings],
    run: Callable[[argparse.Namespace], int],
) -> None:
    parser = sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=_settings_help(settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)


def build_parser() -> argparse.ArgumentParser:
    from serverless_comfyui.controller.settings import OperatorSettings
    from serverless_comfyui.proxy.settings import ProxySettings

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Scale-to-zero ComfyUI on Kubernetes: run a process, or generate an image.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process(sub, "proxy", "run the scale-to-zero proxy", ProxySettings, _run_proxy)
    _add_process(
        sub, "operator", "run the FluxWorkflow operator (kopf)", OperatorSettings, _run_operator
    )
    for name, (summary, _) in DELEGATES.items():
        sub.add_parser(name, help=summary, add_help=False)  # listed here, parsed by main()
    generate.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in DELEGATES:
        return DELEGATES[arguments[0]][1](arguments[1:])
    args = build_parser().parse_args(arguments)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
