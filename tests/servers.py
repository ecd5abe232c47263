"""Real servers on 127.0.0.1 for the tests: an HTTP archive server with misbehaving modes, and MLflow."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import requests

MODES = ("ok", "drop", "wrong", "slow", "stall")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadedServer:
    """A test HTTP server on 127.0.0.1, served by a thread while its ``with`` block runs (``httpd``, ``thread``)."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ArchiveServer(ThreadedServer):
    """Serves the files of ``root`` at ``/MODE/NAME``, honouring ``Range: bytes=N-`` requests.

    Modes: ``ok``; ``drop`` (the first full request of each file sends half and closes the
    connection); ``wrong`` (other bytes of the same length); ``slow`` (``slow_seconds`` to send a
    file, in 20 pieces); ``stall`` (a few bytes, then nothing for ``stall_seconds``). Any other path
    is a 404. ``requests`` records (path, Range header) of every GET.
    """

    def __init__(self, root: Path, *, slow_seconds: float = 2.0, stall_seconds: float = 5.0) -> None:
        self.root = root
        self.slow_seconds = slow_seconds
        self.stall_seconds = stall_seconds
        self.requests: list[tuple[str, str | None]] = []
        self.dropped: dict[str, int] = {}
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, mode: str, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{mode}/{name}"

    def gets(self, path_part: str) -> int:
        return sum(path_part in path for path, _ in self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                _, mode, name = ([*self.path.split("/", 2), "", ""])[:3]
                path = server.root / name
                if mode not in MODES or not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                data = path.read_bytes()
                if mode == "wrong":
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
                start = int(m[1]) if (m := re.match(r"bytes=(\d+)-", self.headers.get("Range") or "")) else 0
                drop = mode == "drop" and start == 0 and name not in server.dropped
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(data, start, mode, drop, name)

            def _send(self, data: bytes, start: int, mode: str, drop: bool, name: str) -> None:
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                body = data[start:]
                if drop:
                    server.dropped[name] = len(body) // 2
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                elif mode == "stall":
                    self.wfile.write(body[:100])
                    self.wfile.flush()
                    time.sleep(server.stall_seconds)
                elif mode == "slow":
                    step = len(body) // 20 + 1
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                        time.sleep(server.slow_seconds / 20)
                else:
                    self.wfile.write(body)

        return Handler


class MlflowServer:
    """``mlflow server`` with a SQLite backend and local artifacts, on a free port of 127.0.0.1."""

    def __init__(self, root: Path, mlflow: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        self.command = [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> MlflowServer:
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.uri}/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"mlflow server did not start in 120 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class FaultyServer(ThreadedServer):
    """Serves one file (``data``) at ``/BEHAVIOUR`` the way a broken or hostile server would.

    Behaviours: ``ok``; ``huge`` (the file, then junk without end, no Content-Length); ``huge-declared``
    (``Content-Length`` of 300 MiB); ``short`` (half the file, no Content-Length, then closes); ``bad-206``
    (half the file at first; a resume is answered with a ``206`` whose range starts at 0; a request without a
    range gets the whole file); ``length-abc`` (``Content-Length: abc``); ``two-lengths`` (two different
    ``Content-Length`` headers); ``bad-range-total`` (a resume answered with a range beyond the file).
    ``requests`` records (path, Range header) of every GET; ``sent`` the bytes written per path.
    """

    JUNK_LIMIT = 64 << 20  # a runaway client still stops here

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.requests: list[tuple[str, str | None]] = []
        self.sent: dict[str, int] = {}
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{behaviour}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the connection closes after each answer

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                behaviour, ranged = self.path.strip("/"), self.headers.get("Range")
                server.requests.append((self.path, ranged))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(behaviour, ranged, server.data)

            def _write(self, body: bytes) -> None:
                self.wfile.write(body)
                server.sent[self.path] = server.sent.get(self.path, 0) + len(body)

            def _head(self, status: int, *headers: tuple[str, str]) -> None:
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()

            def _answer(self, behaviour: str, ranged: str | None, data: bytes) -> None:
                if behaviour in ("huge", "huge-declared"):
                    declared = [("Content-Length", str(300 << 20))] if behaviour == "huge-declared" else []
                    self._head(200, *declared)
                    self._write(data)
                    while server.sent[self.path] < server.JUNK_LIMIT:
                        self._write(bytes(1 << 16))
                elif behaviour == "short" or (
                    behaviour in ("bad-206", "bad-range-total") and ranged is None and server.gets(behaviour) == 1
                ):
                    self._head(200, *([("Content-Length", str(len(data)))] if behaviour != "short" else []))
                    self._write(data[: len(data) // 2])
                elif behaviour == "bad-206" and ranged:
                    self._head(206, ("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}"))
                    self._write(data)
                elif behaviour == "bad-range-total" and ranged:
                    self._head(206, ("Content-Range", f"{ranged.replace('=', ' ')}{len(data) * 9}/{len(data) * 10}"))
                    self._write(bytes(len(data) * 9))
                elif behaviour == "length-abc":
                    self._head(200, ("Content-Length", "abc"))
                    self._write(data)
                elif behaviour == "two-lengths":
                    self._head(200, ("Content-Length", str(len(data))), ("Content-Length", str(len(data) + 5)))
                    self._write(data)
                elif behaviour in ("ok", "bad-206", "bad-range-total"):
                    self._head(200, ("Content-Length", str(len(data))))
                    self._write(data)
                else:
                    self.send_error(404, "Not Found")

        return Handler

    def gets(self, behaviour: str) -> int:
        return sum(path == f"/{behaviour}" for path, _ in self.requests)
