"""The fake Twilio and the daemon, each a process in its own session, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fake_twilio import TEST_ACCOUNT_SID, TEST_AUTH_TOKEN

from .common import FROM_NUMBER, ROOT, _child_env, log, stop_pid
from .rss import proc_status


class FakeTwilioProcess:
    """``python -m benchmarks.recording_twilio --port 0`` in its own session, by PID."""

    def __init__(self, workdir: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.workdir = workdir
        self._log = workdir / "fake_twilio.log"

    def start(self) -> None:
        with open(self._log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.recording_twilio", "--port", "0"],
                cwd=ROOT,
                env=_child_env({}),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.isdigit():
            raise RuntimeError(f"fake Twilio did not start: {self._log.read_text()[-2000:]}")
        self.port = int(line)
        log(f"fake Twilio on 127.0.0.1:{self.port} (pid {self.proc.pid})")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def daemon_env(self, dsn: str, worker_id: str, extra: dict[str, str]) -> dict[str, str]:
        """A benchmark daemon's environment: ``dsn``, sending to this fake Twilio."""
        return _child_env(
            {
                "DATABASE_URL": dsn,
                "TWILIO_ACCOUNT_SID": TEST_ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": TEST_AUTH_TOKEN,
                "TWILIO_WHATSAPP_NUMBER": FROM_NUMBER,
                "TWILIO_API_BASE_URL": self.base_url,
                # 80/s is Twilio's production limit for one sender; not what is measured.
                "SLA_DAEMON_SEND_RATE_PER_SECOND": "100000",
                "SLA_DAEMON_METRICS_ADDRESS": "127.0.0.1:0",
                "SLA_DAEMON_WORKER_ID": worker_id,
                **extra,
            }
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, "fake Twilio", grace=5)
            if self.proc.stdout:
                self.proc.stdout.close()


class DaemonProcess:
    """``python -m sla_daemon run`` in its own process group; stopped by PID, always."""

    def __init__(self, name: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = workdir / f"daemon-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0
        self.ready_at = 0.0
        self.peak: dict[str, int] = {}
        self._profiler: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as out:
            self.spawned_at = time.time()
            return subprocess.Popen(
                [sys.executable, "-m", "sla_daemon", "run"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    async def start(self, timeout: float = 30.0, profile_dir: Path | None = None) -> None:
        self.proc = self._spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited during start-up:\n{self.tail()}")
            if "running as" in self.log_path.read_text(errors="replace"):
                self.ready_at = time.time()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"daemon not ready in {timeout:g}s:\n{self.tail()}")
            await asyncio.sleep(0.01)
        log(
            f"daemon {self.name}: pid {self.proc.pid}, ready in "
            f"{self.ready_at - self.spawned_at:.2f}s"
        )
        if profile_dir is not None:
            self._start_profiler(profile_dir)

    def _start_profiler(self, directory: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            log("py-spy not found: pip install py-spy")
            return
        assert self.proc is not None
        directory.mkdir(parents=True, exist_ok=True)
        self._profiler = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(self.proc.pid),
                "--rate",
                "200",
                "--nonblocking",
                "--format",
                "speedscope",
                "-o",
                str(directory / f"{self.name}.speedscope.json"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def sample_memory(self) -> dict[str, int]:
        if self.proc is not None and self.proc.poll() is None:
            self.peak = proc_status(self.proc.pid) or self.peak
        return self.peak

    def stop(self) -> int | None:
        """VmHWM is read first (it is the peak over the process's life), then SIGTERM."""
        if self.proc is None:
            return None
        self.sample_memory()
        if self._profiler is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._profiler.pid, signal.SIGINT)
            try:
                self._profiler.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self._profiler.pid, signal.SIGKILL)
                self._profiler.wait(5)
            self._profiler = None
        code = stop_pid(self.proc, f"daemon {self.name}")
        if code not in (0, None):
            log(f"daemon {self.name} exited with {code}:\n{self.tail(10)}")
        return code

    def errors_logged(self) -> int:
        with contextlib.suppress(OSError):
            return sum(
                1
                for line in self.log_path.read_text(errors="replace").splitlines()
                if " ERROR " in line or "Traceback" in line
            )
        return 0
