"""`python -m serverless_comfyui.testworld.janitor --node-dir D [--watch-stdin]`: tears a real
node down (nodeteardown.teardown). With --watch-stdin it first waits until its stdin reaches end
of file: the world closed it, or the process holding it died, however it died (SIGKILL
included). It runs in a session of its own, so killing the world's process group spares it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger("janitor")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-dir", required=True, type=Path)
    parser.add_argument("--watch-stdin", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.watch_stdin:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while sys.stdin.buffer.read(4096):
            pass
    from serverless_comfyui.testworld.nodeteardown import teardown

    problems = teardown(args.node_dir)
    log.info("teardown of %s done%s", args.node_dir, f" (left: {problems})" if problems else "")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
