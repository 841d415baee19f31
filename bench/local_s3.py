"""A local S3-compatible server for the data benchmarks and the tests: moto's server (``requirements-test.txt``) in
its own process on 127.0.0.1 and a free port, with the environment S3 clients (s3fs/botocore) need to reach it.

    with LocalS3() as s3:            # starts the server, sets AWS_* in os.environ (child processes inherit them)
        s3.make_bucket("data")       # s3://data/... is now readable and writable
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time


def forget_s3_clients() -> None:
    """Drop fsspec's cached S3 file systems: a cached one keeps the endpoint it was created with."""
    try:
        import s3fs
    except ImportError:
        return
    s3fs.S3FileSystem.clear_instance_cache()


class LocalS3:
    """moto's S3 server in a subprocess; ``env`` is what a client needs (fake credentials, the endpoint URL)."""

    def __init__(self, start_timeout: float = 60.0):
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._saved_env: dict[str, str | None] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> "LocalS3":
        with socket.socket() as probe:  # a port nothing listens on now (the OS picks it)
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the local S3 server (moto) exited with code {self.process.returncode}; is "
                                   "moto[server] installed (requirements-test.txt)?")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"the local S3 server did not listen on port {self.port} within {self.start_timeout} s")
        for key, value in self.env.items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        forget_s3_clients()
        return self

    def stop(self) -> None:
        """Stop the server and restore the environment."""
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        forget_s3_clients()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def filesystem(self):
        """An s3fs file system talking to this server (a fresh instance, not fsspec's cached one)."""
        import s3fs

        return s3fs.S3FileSystem(key="local", secret="local", endpoint_url=self.endpoint, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        """Create a bucket; returns ``s3://name``."""
        self.filesystem().mkdir(name)
        return f"s3://{name}"

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
