"""What the `ugpnet` process prints: text, as the verbs print it, or JSON lines (`--log-format json`).

In json mode every line the driver writes to stdout or stderr is one JSON object with at least
`time` (UTC, ISO 8601), `level`, `message` and `verb`, plus `run_id` once the run has one and the
fields a line carries (a run summary's counts and per-stage figures under `summary`). The verbs keep
printing text: sys.stdout and sys.stderr are replaced by line catchers that hand each printed line
to Python logging, so every line, a verb's, a library's or a traceback, goes through one formatter.
Python logging records (the root logger, and Ray's loggers once `init_ray` has started Ray) use the
same handler. Ray's workers get Ray's own `LoggingConfig(encoding="JSON")` (their logs stay in the
Ray session's log files: they are not sent to the driver in json mode).

Levels of printed lines: INFO on stdout, WARNING on stderr, ERROR for the CLI's errors and for
tracebacks; a Ray text log line keeps its own level.
"""

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

FORMATS = ("text", "json")
OUTPUT_LOGGER = "ugpnet.output"
TRACEBACK_START = "Traceback (most recent call last):"
# Ray's own console format (ray._private.log): "2026-01-02 03:04:05,678\tINFO worker.py:1 -- message"
RAY_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\t(?P<level>[A-Z]+) (?P<source>\S+) -- "
                           r"(?P<message>.*)$", re.S)
# Ray's C++ (glog) lines, written straight to file descriptor 2: "[2026-01-02 03:04:05,678 E 12 12] file.cc:1: …"
NATIVE_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[DIWEF]) \d+ \d+\] "
                         r"(?P<source>\S+?):? (?P<message>.*)$", re.S)
NATIVE_LEVELS = {"D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# stderr lines that report a failure rather than a warning or a note
ERROR_LINE = re.compile(r"^ugpnet[\w -]*: (error|run failed|not committing)\b")


@dataclass
class DriverLogs:
    """The active json-mode session: where lines go and what every line carries."""

    verb: str | None = None
    context: dict = field(default_factory=dict)  # run_id and the like, once known
    streams: dict = field(default_factory=dict)  # "stdout"/"stderr" → the real stream
    handler: logging.Handler | None = None
    ray_handlers: list | None = None  # the "ray" logger's handlers before init_ray took it over


_active: DriverLogs | None = None


def add_option(parser) -> None:
    """--log-format on a parser; SUPPRESS so that a verb's parser does not hide the top-level value."""
    import argparse

    parser.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS,
                        help="text: lines as printed; json: one JSON object per line (default: text)")


def requested_format(argv: list[str]) -> str:
    """--log-format from a command line, before the full parse, so that its errors are JSON too."""
    import argparse

    scan = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    scan.add_argument("--log-format", choices=FORMATS, default="text")
    known, _ = scan.parse_known_args(argv)
    return known.log_format


@contextlib.contextmanager
def driver_output(log_format: str):
    """Everything printed inside, as `log_format` says; text changes nothing."""
    global _active
    if log_format != "json" or _active is not None:
        yield
        return
    session = DriverLogs(streams={"stdout": sys.stdout, "stderr": sys.stderr})
    catchers = {name: LineCatcher(name, stream) for name, stream in session.streams.items()}
    native = [DescriptorCatcher(fd, name) for fd, name in ((1, "stdout"), (2, "stderr"))]
    for catcher in native:  # the records go to a copy of the descriptor, never back into its pipe
        session.streams[catcher.name] = catcher.divert(session.streams[catcher.name])
    session.handler = OutputHandler(session)
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger(OUTPUT_LOGGER).propagate)
    _route_root_logger(session.handler)
    output = logging.getLogger(OUTPUT_LOGGER)
    output.addHandler(session.handler)
    output.setLevel(logging.DEBUG)
    output.propagate = False
    logging.captureWarnings(True)
    _active = session
    sys.stdout, sys.stderr = catchers["stdout"], catchers["stderr"]
    try:
        yield
    finally:
        for catcher in [*native, *catchers.values()]:
            catcher.close()
        sys.stdout, sys.stderr = catchers["stdout"].original, catchers["stderr"].original
        logging.captureWarnings(False)
        output.removeHandler(session.handler)
        root.setLevel(saved[0])
        root.handlers = saved[1]
        output.propagate = saved[2]
        if session.ray_handlers is not None:
            logging.getLogger("ray").handlers = session.ray_handlers
        for catcher in native:
            catcher.release()
        _active = None


def bind(**values) -> None:
    """Fields every later line carries (verb, run_id); nothing in text mode."""
    if _active is None:
        return
    if "verb" in values:
        _active.verb = values.pop("verb")
    _active.context.update({key: value for key, value in values.items() if value is not None})


def emit(text: str, level: int = logging.INFO, stream: str = "stdout", **fields) -> None:
    """One line (or block) of driver output: printed as is in text mode; in json mode one record that
    also carries `fields` (a summary's counts, say)."""
    if _active is None:
        print(text, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
        return
    logging.getLogger(OUTPUT_LOGGER).log(level, text, extra={"stream": stream, "fields": fields})


def progress_bars_wanted(log_format: str, interactive: bool) -> bool:
    """Ray Data's progress bars: for a person at a terminal only; in json they would break the lines,
    and in a log file they are carriage-return noise."""
    return log_format == "text" and interactive


def init_ray(**kwargs) -> None:
    """ray.init for the CLI: in json mode Ray's workers log JSON (Ray's LoggingConfig) and stay off the
    driver's output, and Ray's driver loggers go through this module's handler."""
    import ray
    from ray.data import DataContext

    log_format = "json" if _active is not None else "text"
    if not progress_bars_wanted(log_format, interactive=sys.stderr.isatty()):
        DataContext.get_current().enable_progress_bars = False
    if _active is None:
        ray.init(**kwargs)
        return
    kwargs.setdefault("logging_config", ray.LoggingConfig(encoding="JSON"))
    kwargs.setdefault("log_to_driver", False)
    _active.ray_handlers = list(logging.getLogger("ray").handlers)
    ray.init(**kwargs)
    # LoggingConfig also gives the driver's root and "ray" loggers a handler of Ray's own, at INFO:
    # take them back, so the driver's lines keep one format (and are not printed twice).
    _route_root_logger(_active.handler)
    logging.getLogger("ray").handlers = [_active.handler]


PROJECT_LOGGER = "pipelines"
WORKER_LINE_FORMAT = "%(levelname)s %(name)s -- %(message)s"


def project_info_in_worker() -> None:
    """In a Ray worker: let this project's INFO records through (a model actor's start-up decisions:
    the batch it measured, whether it compiled), and only this project's. Ray gives a worker's root
    logger a handler at INFO only under a LoggingConfig (json mode: the records join its JSON lines);
    otherwise the root keeps Python's WARNING and those lines were dropped. Then this logger gets a
    stderr handler of its own: Ray writes a worker's stderr to its log file (worker-*.err) and, with
    log_to_driver, to the driver's console."""
    logger = logging.getLogger(PROJECT_LOGGER)
    logger.setLevel(logging.INFO)
    if logging.getLogger().handlers or logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(WORKER_LINE_FORMAT))
    logger.addHandler(handler)


def _route_root_logger(handler: logging.Handler) -> None:
    """The root logger writes through `handler` alone, at WARNING, as Python's last-resort handler
    does: libraries' warnings and errors, not their chatter."""
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


class OutputHandler(logging.Handler):
    """Writes each record as one JSON line to the real stdout or stderr (stderr unless the record says)."""

    def __init__(self, session: DriverLogs):
        super().__init__()
        self.session = session
        self.setFormatter(JsonLineFormatter(session))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.session.streams[getattr(record, "stream", "stderr")]
            line = self.format(record)
            with self.lock:
                stream.write(line + "\n")
                stream.flush()
        except Exception:
            self.handleError(record)


class JsonLineFormatter(logging.Formatter):
    def __init__(self, session: DriverLogs):
        super().__init__()
        self.session = session

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        when = datetime.fromtimestamp(record.created, UTC)
        entry = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                 "level": record.levelname, "message": message, "verb": self.session.verb,
                 **self.session.context}
        if record.name != OUTPUT_LOGGER:
            entry["logger"] = record.name
        entry.update(getattr(record, "fields", None) or {})
        data = _json_value(message)
        if data is not None:  # a verb that prints JSON (--dry-run, demo): also as a value, not only text
            entry["data"] = data
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _json_value(message: str):
    if not message.startswith(("{", "[")):
        return None
    try:
        return json.loads(message)
    except ValueError:
        return None


class LineCatcher(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: each finished write (up to a newline) becomes one record;
    a traceback, written frame by frame, is held until its last line and becomes one ERROR record."""

    def __init__(self, name: str, original):
        super().__init__()
        self.name, self.original = name, original
        self._pending = ""
        self._traceback: list[str] | None = None
        self._lock = threading.RLock()
        self._inside = threading.local()  # set while this thread hands a line to logging

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False  # what reads this gets JSON lines, not a terminal: no colours, no progress bars

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self):
        return self.original.encoding

    def write(self, text: str) -> int:
        if getattr(self._inside, "value", False):  # logging itself reporting a failure: no loop
            return self.original.write(text)
        with self._lock:
            self._pending += text
            if self._pending.endswith("\n"):
                chunk, self._pending = self._pending[:-1], ""
                self._take(chunk)
        return len(text)

    def flush(self) -> None:
        self.original.flush()

    def close(self) -> None:
        """Hands on what is still held (a line without its newline, an unfinished traceback)."""
        with self._lock:
            if self._pending:
                chunk, self._pending = self._pending, ""
                self._take(chunk)
            if self._traceback:
                self._log(logging.ERROR, "\n".join(self._traceback))
                self._traceback = None
        self.original.flush()

    def _take(self, chunk: str) -> None:
        if self._traceback is None and not chunk.startswith(TRACEBACK_START):
            self._log(*self._level_of(chunk))
            return
        self._traceback = (self._traceback or []) + [chunk]
        last_line = chunk.rsplit("\n", 1)[-1]
        # A traceback ends with the exception's own line, the first one that is not indented.
        if last_line[:1] not in ("", " ", "\t") and not last_line.startswith(TRACEBACK_START):
            text, self._traceback = "\n".join(self._traceback), None
            self._log(logging.ERROR, text)

    def _level_of(self, chunk: str) -> tuple[int, str, dict]:
        ray_line = RAY_TEXT_LINE.match(chunk)
        if ray_line:
            return _level_named(ray_line["level"]), ray_line["message"], {"logger": "ray",
                                                                          "source": ray_line["source"]}
        native = NATIVE_LINE.match(chunk)
        if native:
            return NATIVE_LEVELS[native["level"]], native["message"], {"logger": "ray.native",
                                                                       "source": native["source"]}
        ray_json = _json_value(chunk)
        if isinstance(ray_json, dict) and {"levelname", "message"} <= ray_json.keys():
            # a line of Ray's own JSON formatter (its LoggingConfig handler, before init_ray replaces it)
            source = f"{ray_json.get('filename')}:{ray_json.get('lineno')}"
            return _level_named(ray_json["levelname"]), str(ray_json["message"]), {"logger": "ray", "source": source}
        if self.name == "stdout":
            return logging.INFO, chunk, {}
        return (logging.ERROR if ERROR_LINE.match(chunk) else logging.WARNING), chunk, {}

    def _log(self, level: int, text: str, fields: dict | None = None) -> None:
        self._inside.value = True
        try:
            logging.getLogger(OUTPUT_LOGGER).log(level, text, extra={"stream": self.name, "fields": fields or {}})
        finally:
            self._inside.value = False


def _level_named(name: str) -> int:
    level = logging.getLevelName(str(name))
    return level if isinstance(level, int) else logging.INFO


class DescriptorCatcher:
    """File descriptor 1 or 2 on a pipe: what native code (Ray's C++ core) writes there bypasses
    sys.stdout/sys.stderr; a thread reads it line by line into a LineCatcher of the same stream."""

    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name
        self._saved = os.dup(fd)
        read_end, write_end = os.pipe()
        os.dup2(write_end, fd)
        os.close(write_end)
        self._copy = None
        self._lines = None
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name=f"ugpnet-{name}-lines", daemon=True)

    def divert(self, stream):
        """The stream records should be written to: `stream`, unless it writes to this descriptor
        (then a new stream on the saved original, as the pipe would loop the records back here)."""
        try:
            same = stream.fileno() == self.fd
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            same = False
        if same:
            stream.flush()
            self._copy = os.fdopen(os.dup(self._saved), "w", buffering=1, encoding=stream.encoding or "utf-8",
                                   errors="backslashreplace")
            stream = self._copy
        self._lines = LineCatcher(self.name, stream)
        self._thread.start()
        return stream

    def _pump(self) -> None:
        with os.fdopen(self._read_end, "rb") as pipe:
            for raw in pipe:
                self._lines.write(raw.decode("utf-8", errors="replace").rstrip("\n") + "\n")

    def close(self) -> None:
        """Puts the original descriptor back; the thread then reads what is left and ends."""
        try:
            sys.__stdout__.flush() if self.fd == 1 else sys.__stderr__.flush()
        except (OSError, ValueError, AttributeError):
            pass
        os.dup2(self._saved, self.fd)
        os.close(self._saved)
        # A child process that inherited the pipe may keep it open: then do not wait for it.
        self._thread.join(timeout=2)
        if self._lines is not None:
            self._lines.close()

    def release(self) -> None:
        if self._copy is not None:
            self._copy.close()
