"""pytest fixtures for the stomp.py interop tests: start/stop the stomp-broker binary.

The binary is $STOMP_BROKER_BIN, or target/debug/stomp-broker relative to the repo root.
It listens on 127.0.0.1:0 and reports its ports in --port-file, which we poll for.
"""
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]


def broker_bin() -> Path:
    p = Path(os.environ.get("STOMP_BROKER_BIN", "target/debug/stomp-broker"))
    return p if p.is_absolute() else REPO_ROOT / p


class Broker:
    def __init__(self, extra_args=()):
        binary = broker_bin()
        if not binary.exists():
            raise RuntimeError(
                f"broker binary not found: {binary} "
                "(build it with 'cargo build -p stomp-broker' or set STOMP_BROKER_BIN)")
        self._dir = tempfile.TemporaryDirectory(prefix="stomp-interop-py-")
        self.port_file = Path(self._dir.name) / "ports.json"
        self.args = [str(binary), "--stomp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
                     "--port-file", str(self.port_file), *extra_args]
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.log = deque(maxlen=400)
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        self._wait_for_ports()

    def _read_output(self):
        verbose = bool(os.environ.get("STOMP_INTEROP_VERBOSE"))
        for line in iter(self.proc.stdout.readline, b""):
            text = line.decode("utf-8", "replace").rstrip("\n")
            self.log.append(text)
            if verbose:
                print(f"[broker {self.proc.pid}] {text}", flush=True)

    def logs(self) -> str:
        return "\n".join(self.log)

    def _wait_for_ports(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                ports = json.loads(self.port_file.read_text())
                if ports.get("stomp") and ports.get("http"):
                    host, _, port = ports["stomp"].rpartition(":")
                    self.stomp_host, self.stomp_port = host, int(port)
                    self.http_addr = ports["http"]
                    return
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.02)
        rc = self.proc.poll()
        self.stop()
        raise RuntimeError(f"broker did not write its port file (exit code {rc})\n"
                           f"args: {' '.join(self.args)}\n--- broker output ---\n{self.logs()}")

    def stop(self, timeout=10.0):
        """SIGTERM and wait; SIGKILL after timeout. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._dir.cleanup()
        return self.proc.returncode


@pytest.fixture(scope="session")
def broker():
    b = Broker()
    yield b
    rc = b.stop()
    assert rc == 0, f"broker exit code after SIGTERM: {rc}\n{b.logs()}"
