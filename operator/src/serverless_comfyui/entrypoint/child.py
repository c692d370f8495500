"""The ComfyUI child process: started, watched without blocking, stopped with SIGTERM then
SIGKILL. When the entrypoint is PID 1 (it is in the container) it also reaps orphaned
grandchildren, as an init must."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: if the entrypoint is killed outright (SIGKILL, OOM), take
    ComfyUI down with it instead of leaving it running unsupervised."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def exit_code_of(returncode: int) -> int:
    """A shell-style exit code: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class ChildProcess:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self._proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.started_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> int:
        """Start the command (stdout/stderr inherited); raises OSError if it cannot be run."""
        preexec = _die_with_parent if sys.platform == "linux" else None
        self._proc = subprocess.Popen(self.argv, preexec_fn=preexec)
        self.started_at = time.monotonic()
        return self._proc.pid

    def poll(self) -> int | None:
        """The child's return code once it has exited (negative: killed by that signal)."""
        if self.returncode is not None or self._proc is None:
            return self.returncode
        pid = self._proc.pid
        while True:
            # As PID 1, reap every exited process; otherwise only our own child.
            wait_for = -1 if os.getpid() == 1 else pid
            try:
                reaped, status = os.waitpid(wait_for, os.WNOHANG)
            except ChildProcessError:
                # Reaped elsewhere: the exit status is lost, report a failure.
                self._set_returncode(1)
                return self.returncode
            if reaped == 0:
                return None
            if reaped == pid:
                self._set_returncode(os.waitstatus_to_exitcode(status))
                return self.returncode
            # an orphan reaped as PID 1: look again

    def _set_returncode(self, code: int) -> None:
        self.returncode = code
        if self._proc is not None:
            self._proc.returncode = code  # so Popen never waits for it again

    @property
    def running(self) -> bool:
        return self._proc is not None and self.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.running and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, sig)

    async def wait(self, poll_seconds: float = 0.1) -> int:
        # Polled on purpose: waitpid(WNOHANG) works the same whether or not we are PID 1 and
        # never competes with asyncio's own child watcher.
        while (code := self.poll()) is None:  # noqa: ASYNC110
            await asyncio.sleep(poll_seconds)
        return code

    async def stop(self, grace_seconds: float) -> tuple[int | None, bool]:
        """SIGTERM, wait up to `grace_seconds`, then SIGKILL. Returns (returncode, killed)."""
        if not self.running:
            return self.returncode, False
        self.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), grace_seconds), False
        except TimeoutError:
            self.send_signal(signal.SIGKILL)
            return await self.wait(), True
