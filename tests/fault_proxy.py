"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3-compatible server (moto), for tests.

Every client that should see the faults points its endpoint at `proxy.endpoint` (e.g.
`AWS_ENDPOINT_URL`); the test sets the schedule and reads back what was injected:

    with FaultProxy(moto_s3.endpoint) as proxy:
        proxy.fail_fraction(0.10, seed=7)          # 10 % of requests, transient faults, seeded
        proxy.fail_next(3, "slowdown")             # the next 3 requests answer 503 SlowDown
        proxy.refuse_everything()                  # every connection is reset on accept
        proxy.heal()                               # back to a faithful proxy
        proxy.injected                             # Counter of the faults injected so far

Faults: `500` (InternalError), `503` (ServiceUnavailable), `slowdown` (503 SlowDown), `drop` (the
request is read, the connection closed without an answer), `reset` (the same with a TCP RST), `lost`
(the request reaches the server and takes effect, then the answer is dropped: the worst case for
non-idempotent calls), `stall` (held `stall_s` seconds, then forwarded). A real TCP server with one
thread per client connection and one upstream connection per client connection (keep-alive both ways).
"""

import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

ERROR_FAULTS = {"500": (500, "InternalError", "We encountered an internal error. Please try again."),
                "503": (503, "ServiceUnavailable", "Service is unable to handle request."),
                "slowdown": (503, "SlowDown", "Please reduce your request rate.")}
CONNECTION_FAULTS = ("drop", "reset", "lost")
TRANSIENT_FAULTS = ("500", "503", "slowdown", "drop", "reset", "lost")
ALL_FAULTS = (*TRANSIENT_FAULTS, "stall")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
              "expect", "content-length"}

Matcher = Callable[[str, str], bool]  # (method, path) -> whether the request is eligible for a fault


class FaultSchedule:
    """Decides, per request, which fault (or None) it gets. Thread-safe; seeded draws are reproducible
    in sequence (which request draws which number depends on the clients' timing)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.heal()

    def heal(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.fraction, self.faults, self.match = 0.0, TRANSIENT_FAULTS, None
            self.rng = random.Random(0)
            self.queued: list[str] = []
            self.queued_match: Matcher | None = None
            self.refusing = False

    def decide(self, method: str, path: str) -> str | None:
        with self._lock:
            if self.queued and (self.queued_match is None or self.queued_match(method, path)):
                return self.queued.pop(0)
            if self.fraction and (self.match is None or self.match(method, path)):
                if self.rng.random() < self.fraction:
                    return self.rng.choice(self.faults)
            return None


class FaultProxy:
    def __init__(self, upstream: str, *, stall_s: float = 2.0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.stall_s = stall_s
        self.schedule = FaultSchedule()
        self._counts_lock = threading.Lock()
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, fault) of every request
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ schedule

    def fail_fraction(self, fraction: float, *, seed: int, faults: tuple[str, ...] = TRANSIENT_FAULTS,
                      match: Matcher | None = None) -> None:
        """From now on, each eligible request fails with probability `fraction`, its fault drawn from `faults`."""
        unknown = set(faults) - set(ALL_FAULTS)
        if unknown or not 0 <= fraction <= 1:
            raise ValueError(f"fault proxy: bad schedule {fraction=} {faults=}")
        with self.schedule._lock:
            self.schedule.fraction, self.schedule.faults = fraction, tuple(faults)
            self.schedule.rng, self.schedule.match = random.Random(seed), match

    def fail_next(self, count: int, fault: str = "503", *, match: Matcher | None = None) -> None:
        """The next `count` eligible requests get `fault` (before any fraction is drawn)."""
        if fault not in ALL_FAULTS:
            raise ValueError(f"fault proxy: unknown fault {fault!r}")
        with self.schedule._lock:
            self.schedule.queued, self.schedule.queued_match = [fault] * count, match

    def refuse_everything(self) -> None:
        with self.schedule._lock:
            self.schedule.refusing = True

    def heal(self) -> None:
        self.schedule.heal()

    # ------------------------------------------------------------ server

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _record(self, method: str, path: str, fault: str | None) -> None:
        with self._counts_lock:
            self.requests += 1
            self.log.append((method, path, fault))
            if fault:
                self.injected[fault] += 1


def _reset(connection: socket.socket) -> None:
    """Close with a TCP RST (linger 0) rather than a FIN: the client sees 'connection reset by peer'."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    owner: FaultProxy
    upstream: http.client.HTTPConnection | None = None

    def log_message(self, *args) -> None:  # the test reads `owner.log`, not stderr
        pass

    def handle(self) -> None:
        if self.owner.schedule.refusing:
            self.owner._record("-", "-", "refused")
            _reset(self.connection)
            return
        try:
            super().handle()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    def _proxy(self) -> None:
        body = self._read_body()
        fault = self.owner.schedule.decide(self.command, self.path)
        if self.owner.schedule.refusing:
            fault = "reset"
        self.owner._record(self.command, self.path, fault)
        if fault in ("drop", "reset"):
            return self._abort(reset=fault == "reset")
        if fault in ERROR_FAULTS:
            return self._answer_error(*ERROR_FAULTS[fault])
        if fault == "stall":
            time.sleep(self.owner.stall_s)
        try:
            status, reason, headers, data = self._forward(body)
        except OSError as err:
            return self._answer_error(502, "BadGateway", f"fault proxy: upstream unreachable: {err}")
        if fault == "lost":
            return self._abort(reset=False)
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            length = next((v for n, v in headers if n.lower() == "content-length"), "0")
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _proxy

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        for attempt in range(2):  # a kept-alive upstream connection may have been closed by the server
            if self.upstream is None:
                self.upstream = http.client.HTTPConnection(self.owner.upstream_host, self.owner.upstream_port,
                                                           timeout=60)
            try:
                self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = self.upstream.getresponse()
                data = response.read()
                if response.will_close:
                    self.upstream.close()
                    self.upstream = None
                return response.status, response.reason, response.getheaders(), data
            except (http.client.HTTPException, OSError):
                self.upstream.close()
                self.upstream = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def _answer_error(self, status: int, code: str, message: str) -> None:
        request_id = f"fault-proxy-{self.owner.requests}"
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                f"<RequestId>{request_id}</RequestId></Error>").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", request_id)
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _abort(self, *, reset: bool) -> None:
        if reset:
            _reset(self.connection)
        self.close_connection = True
