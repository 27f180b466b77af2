"""Real processes for end-to-end tests: a Redis server, Celery workers and a gunicorn web server.

Each runs as its own process against the pytest-django test database, the way production runs
them; the test talks to them over HTTP and reads the database to check the outcome.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"Timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A private redis-server, so a test can stop and restart the broker without touching others."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.workdir = workdir
        self.process = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until(lambda: self._ping(client), 10, "redis-server")
        return self

    @staticmethod
    def _ping(client):
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Stack:
    """Environment and process management for one end-to-end scenario."""

    def __init__(self, database_name: str, media_root: Path, redis_server: RedisServer, logdir: Path):
        self.redis = redis_server
        self.logdir = logdir
        self.processes: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database_name}",
                "CELERY_BROKER_URL": redis_server.url,
                "MEDIA_ROOT": str(media_root),
                "PYTHONUNBUFFERED": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                # Each test logs in again; the other rate limits stay as in production.
                "IMAGESEARCH_RATE_LIMITS": "login=100/min",
            }
        )
        self.web_port = None

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.processes.append(process)
        return process

    def start_worker(self, name="worker", concurrency=1) -> subprocess.Popen:
        """A prefork worker; ``concurrency=None`` leaves the number of processes to the app's setting."""
        processes = ["--concurrency", str(concurrency)] if concurrency else []
        return self._spawn(
            name,
            [str(BIN / "celery"), "-A", "imagesearch", "worker", "--pool", "prefork", *processes,
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "-n", f"{name}@%h"],
        )

    def start_web(self) -> str:
        self.web_port = free_port()
        self._spawn(
            "web",
            [str(BIN / "gunicorn"), "imagesearch.wsgi", "--bind", f"127.0.0.1:{self.web_port}", "--workers", "1",
             "--threads", "4", "--timeout", "120"],
        )
        wait_until(self._web_up, 60, "gunicorn")
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def _web_up(self):
        try:
            with closing(socket.create_connection(("127.0.0.1", self.web_port), timeout=1)):
                return True
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_worker_ready(self, name="worker", timeout=180):
        wait_until(lambda: " ready." in self.log(name), timeout, f"celery {name} to be ready")

    @staticmethod
    def kill(process: subprocess.Popen, sig=signal.SIGKILL):
        """Signal a process and its children (a prefork worker's pool); SIGKILL if it lingers."""
        for signum in (sig, signal.SIGKILL):
            try:
                os.killpg(process.pid, signum)
            except ProcessLookupError:
                pass
            try:
                process.wait(20)
                return
            except subprocess.TimeoutExpired:
                continue

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                self.kill(process, signal.SIGTERM)
        self.processes.clear()
