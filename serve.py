"""A page that shows the age of every face in a photo or in the camera, each with the error
the model's own test run made at that age, served from this machine.

    python train_loop.py serve --model runs/default/model.keras   # open the address printed

    server, url = serve.start("runs/default/model.keras")  # in a thread (the notebook)
    server.stop()

The server is the standard library's http.server. It answers the page (page/index.html,
read once when it starts), and one JSON endpoint: POST /api/predict, whose body is a JPEG or
PNG picture's bytes (or a multipart form's field `image`). Its ages are those of `predict
--crop auto` (photos.predict_picture). A picture is read in memory, answered and forgotten:
nothing is written to disk, and nothing is sent anywhere else.
"""

import argparse
import hashlib
import ipaddress
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from base64 import b64encode
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import tensorflow as tf

import photos
from evaluation import predict_ages
from readout import add_tta_argument, load_model, tta_from_arguments

# The page's folder: its files are read once, when the server starts, and served from
# memory; no request names a file on disk.
PAGE = Path(__file__).resolve().parent / "page"
API = "/api/predict"
# The command's line in `python train_loop.py --help`.
HELP = "a page of the ages of the faces in photos and the camera, served from here"

# Limits, checked in this order: connections open at once (more are closed unanswered),
# seconds a client may take to send its request, bytes of a body, requests waiting for
# the model or in its hands (more are answered 503), pictures predicted at once (the model
# and the cores are shared by all), and pixels of a picture (photos.MAX_PIXELS, from its
# header, before it is decoded).
CONNECTIONS = 64
TIMEOUT = 30
MAX_BODY = 20 * 2**20
WAITING = 16
WORKERS = 2

# What a picture without a face is told.
NO_FACE = (
    "No face found. The detector looks for faces turned towards the camera, at least a "
    "sixteenth of the picture's shorter side (and 24 pixels) wide; a face lit from the "
    "front and looking at the camera is found best."
)

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}


class RequestError(Exception):
    """A request refused with an HTTP status and a message for its JSON {"error": ...}."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.status, self.headers = status, dict(headers)


# ---------------------------------------------------------------------------------------
# The page's files
# ---------------------------------------------------------------------------------------


class PageFile(NamedTuple):
    """A file of the page, held in memory."""

    body: bytes
    content_type: str
    headers: dict


def _inline_hashes(html, tag):
    """The CSP sources ('sha256-...') of the inline <script> or <style> blocks of a page:
    the browser runs those and nothing else."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(
        f"'sha256-{b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
        for block in blocks
    )


def _security_headers(html):
    """Headers that keep the page to itself: its own inline script and style, pictures
    from the page and the camera, requests to this server only."""
    policy = (
        "default-src 'none'; "
        f"script-src {_inline_hashes(html, 'script')}; "
        f"style-src {_inline_hashes(html, 'style')}; "
        "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def page_files(folder=PAGE):
    """{URL path: PageFile} of the regular files directly inside the page's folder (its
    index.html also at "/"), read now: requests never touch the disk."""
    files = {}
    for path in sorted(Path(folder).iterdir()):
        suffix = path.suffix.lower()
        if path.is_symlink() or not path.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = path.read_bytes()
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
        if suffix == ".html":
            headers = _security_headers(body.decode("utf-8"))
        files[f"/{path.name}"] = PageFile(body, CONTENT_TYPES[suffix], headers)
    if "/index.html" not in files:
        raise FileNotFoundError(f"{folder}: no index.html, the page")
    files["/"] = files["/index.html"]
    return files


# ---------------------------------------------------------------------------------------
# The ages of a picture
# ---------------------------------------------------------------------------------------


class Ages:
    """The model and the errors its test run measured, shared by every request, and the
    bounds of the work: WORKERS threads predict the pictures (each keeps its own face
    detector, photos._cascade), WAITING more pictures may wait for them."""

    def __init__(self, model_path, tta=True):
        self.model = load_model(model_path)
        self.errors = photos.error_table(model_path, tta)
        self.tta = tta
        self.workers = ThreadPoolExecutor(WORKERS, thread_name_prefix="ages")
        self.slots = threading.BoundedSemaphore(WORKERS + WAITING)
        self._warm_up()

    def _warm_up(self):
        """Trace the model's readout for a picture taken as it is and for a face's frames
        before the first request, which would otherwise wait for it."""
        size = self.model.image_size
        for count in (1, len(photos.FRAME_VARIANTS)):
            images = tf.zeros((count, size, size, 3), tf.float32)
            predict_ages(self.model, images, 64, self.tta, self.model.age_widening)

    def answer(self, contents):
        """The JSON answer {"faces": [...], "width", "height", ...} of a picture's bytes;
        ValueError (PictureTooLarge) for a picture that cannot be read."""
        started = time.perf_counter()
        found = self.workers.submit(
            photos.predict_picture, self.model, contents, self.tta, "auto"
        ).result()
        faces = [self._face(row, found) for row in found.rows if row.age is not None]
        answer = {
            "faces": faces,
            "width": found.width,
            "height": found.height,
            "crop": found.rows[0].crop,
            "errors_from": self.errors.source,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if not faces:
            answer["message"] = NO_FACE
        return answer

    def _face(self, row, found):
        """The JSON of one face: its box in the picture's pixels, its age and notes."""
        as_is = row.box is None
        box = (0, 0, found.width, found.height) if as_is else row.box
        notes = photos.row_notes(row, self.errors, min(found.height, found.width))
        return {
            "box": [int(value) for value in box],
            "age": round(row.age, 3),
            "text": notes.text,
            "error": notes.error._asdict() if notes.error else None,
            "warnings": list(notes.warnings),
            "crop": row.crop,
            "frame": None if as_is else [int(value) for value in row.frame],
            "eyes_found": None if as_is else row.eyes is not None,
        }


def picture_bytes(body, content_type):
    """The picture in a request's body: the body itself, or the field `image` of a
    multipart form."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not boundary:
        raise RequestError(400, "a multipart form without a boundary")
    delimiter = b"--" + str(boundary).encode("latin-1")
    for part in body.split(delimiter)[1:-1]:
        head, _, data = part.partition(b"\r\n\r\n")
        fields = BytesHeaderParser().parsebytes(head.lstrip(b"\r\n") + b"\r\n\r\n")
        if fields.get_param("name", header="content-disposition") == "image":
            return data[:-2] if data.endswith(b"\r\n") else data
    raise RequestError(400, "a multipart form without a field named image")


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """GET the page's files, POST a picture to /api/predict; anything else is refused
    with a JSON {"error": ...}."""

    server_version = "age-page"
    sys_version = ""
    timeout = TIMEOUT  # seconds: a client that stalls is dropped

    def do_GET(self):
        self._get(with_body=True)

    def do_HEAD(self):
        self._get(with_body=False)

    def do_POST(self):
        try:
            self._post()
        except RequestError as refusal:
            self._refuse(refusal.status, str(refusal), refusal.headers)
        except Exception as error:  # A bug must not take the server down: say so.
            self.log_error("answering %s: %r", self.path, error)
            self._refuse(
                500, f"the server failed on this picture ({type(error).__name__})"
            )

    def __getattr__(self, name):
        # Every other method (PUT, DELETE, OPTIONS, anything) is answered 405, not 501.
        if name.startswith("do_"):
            return self._wrong_method
        raise AttributeError(name)

    def _path(self):
        return urlsplit(self.path).path

    def _get(self, with_body):
        path = self._path()
        if path == API:
            return self._wrong_method()
        page = self.server.pages.get(path)
        if page is None:
            return self._refuse(404, f"no such page: {path[:200]}")
        self._send(200, page.body, page.content_type, page.headers, with_body)

    def _wrong_method(self):
        path = self._path()
        if path == API:
            allowed = "POST"
        elif path in self.server.pages:
            allowed = "GET, HEAD"
        else:
            return self._refuse(404, f"no such page: {path[:200]}")
        self._refuse(
            405,
            f"{self.command[:20]} is not answered here: {allowed}",
            {"Allow": allowed},
        )

    def _post(self):
        path = self._path()
        if path != API:
            if path in self.server.pages:
                return self._wrong_method()
            raise RequestError(404, f"no such page: {path[:200]}")
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "send the picture with a Content-Length")
        length = self._content_length()
        if length > MAX_BODY:
            raise RequestError(
                413, f"a body of {length:,} bytes: the limit is {MAX_BODY:,} bytes"
            )
        if length == 0:
            raise RequestError(400, "an empty body: send a JPEG or PNG picture's bytes")
        if not self.server.ages.slots.acquire(blocking=False):
            raise RequestError(503, "busy: try again in a moment", {"Retry-After": "1"})
        try:
            body = self._read(length)
            contents = picture_bytes(body, self.headers.get("Content-Type", ""))
            try:
                answer = self.server.ages.answer(contents)
            except photos.PictureTooLarge as error:
                raise RequestError(413, f"the picture is too large: {error}") from None
            except ValueError as error:
                raise RequestError(
                    400, f"not a picture that can be read: {error}"
                ) from None
        finally:
            self.server.ages.slots.release()
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _content_length(self):
        text = self.headers.get("Content-Length")
        if text is None:
            raise RequestError(411, "send the picture with a Content-Length")
        if not text.strip().isdigit():
            raise RequestError(
                400, f"a Content-Length that is no number: {text[:40]!r}"
            )
        return int(text)

    def _read(self, length):
        try:
            body = self.rfile.read(length)
        except (TimeoutError, socket.timeout):
            raise RequestError(
                408, f"the body took over {TIMEOUT} s to arrive"
            ) from None
        if len(body) < length:
            raise RequestError(400, f"the body ended after {len(body):,} bytes")
        return body

    def _refuse(self, status, message, headers=None):
        body = json.dumps({"error": message}).encode()
        # The request's body, if any, is not read: the connection ends with the answer.
        self.close_connection = True
        self._send(status, body, "application/json", headers, self.command != "HEAD")

    def _send(self, status, body, content_type, headers=None, with_body=True):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if content_type == "application/json":
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None):
        # http.server's own refusals (a malformed request line, headers too long): JSON.
        reason = message or self.responses.get(code, ("refused",))[0]
        if getattr(self, "command", None) is None:
            self.command = ""
        # A request line too malformed to name its version still gets a status line.
        self.request_version = "HTTP/1.0"
        self._refuse(code, reason)

    def version_string(self):
        return self.server_version

    def log_message(self, format, *arguments):
        if not self.server.quiet:
            super().log_message(format, *arguments)


class PageServer(ThreadingHTTPServer):
    """The page's HTTP server: a thread per connection, at most CONNECTIONS at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address, ages, pages, quiet=False):
        self.ages, self.pages, self.quiet = ages, pages, quiet
        self.connections = threading.BoundedSemaphore(CONNECTIONS)
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, Handler)

    def server_bind(self):
        # As HTTPServer binds, without its reverse lookup of the host's name, which can
        # wait for seconds on a machine without a network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self):
        """The page's address, as a browser on this machine opens it."""
        host, port = self.server_address[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def process_request(self, request, client_address):
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)  # Too many at once: closed unanswered.
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def stop(self):
        """Stop serving (from another thread than serve_forever's) and close the socket."""
        self.shutdown()
        self.server_close()

    def server_close(self):
        super().server_close()
        self.ages.workers.shutdown(wait=False, cancel_futures=True)


def make_server(model_path, host="127.0.0.1", port=8000, quiet=False, tta=True):
    """A PageServer of a model, listening on host:port (port 0: any free port), not yet
    serving (call serve_forever)."""
    ages = Ages(model_path, tta)
    try:
        return PageServer((host, port), ages, page_files(), quiet)
    except OSError as error:
        reason = error.strerror or str(error)
        raise ValueError(f"cannot listen on {host}:{port} ({reason})") from None


def start(model_path, port=0, host="127.0.0.1", quiet=True, tta=True):
    """Serve a model's page from a background thread: (server, its address). Stop it with
    server.stop(). In Colab, google.colab.output.serve_kernel_port_as_iframe(
    server.server_address[1]) shows the page in the notebook."""
    server = make_server(model_path, host, port, quiet, tta)
    threading.Thread(target=server.serve_forever, name="age-page", daemon=True).start()
    return server, server.url


# ---------------------------------------------------------------------------------------
# The `serve` command of train_loop.py
# ---------------------------------------------------------------------------------------


def _port(text):
    """A --port value: 0 (any free port) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port from 0 to 65535, got {text!r}")
    return int(text)


def add_serve_arguments(parser):
    """The arguments of `python train_loop.py serve`."""
    parser.add_argument("--model", required=True, help="a model.keras file")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 "
        "lets other machines of the network in)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="default: 8000; 0 picks a free one"
    )
    add_tta_argument(parser)


def _is_loopback(host):
    """True when `host` can be reached from this machine only."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve_command(arguments, parser):
    """`serve`: the page, until Ctrl-C."""
    server = make_server(
        arguments.model,
        arguments.host,
        arguments.port,
        tta=tta_from_arguments(arguments),
    )
    print(f"The page is at {server.url} (Ctrl-C stops it)", flush=True)
    if not _is_loopback(arguments.host):
        print(
            f"warning: listening on {arguments.host}: other machines can reach the page",
            file=sys.stderr,
        )
    print(
        f"errors at each age: {server.ages.errors.source}", file=sys.stderr, flush=True
    )
    # A kill (SIGTERM) stops the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
