"""The review server: the stdlib's ThreadingHTTPServer on 127.0.0.1, one random token per start.

Who may ask: the page is served to ``/?token=T`` only; that response sets the token as an
HttpOnly, SameSite=Strict cookie so the page's ``<img>`` requests carry it without the token in
every image URL, and the page's script sends it in the ``X-Diffspec-Token`` header on API calls.
A decision (POST) needs the header: a cookie alone is not enough, because another site's form
could send the cookie but cannot set a custom header without a CORS preflight this server never
answers. Every other request without the token, in the cookie or the header, is 403.

What it serves: the page's static files (a fixed list, shipped in the package), JSON about the
catalog, and image files looked up by fingerprint (see :mod:`diffspec.review.data`): no part of
a request is ever used as a path.

Decisions go through :class:`~diffspec.review.decisions.DecisionLog`: the answer to a POST is
sent only once its row is durable in the catalog.
"""

from __future__ import annotations

import json
import secrets
import threading
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from diffspec.catalog.store import Catalog
from diffspec.catalog.verdicts import DECISIONS, Decision
from diffspec.errors import DiffspecError, ReviewError
from diffspec.review.data import ReviewData
from diffspec.review.decisions import DecisionLog
from diffspec.spec.loader import LoadedSpec

HOST = "127.0.0.1"
TOKEN_HEADER = "X-Diffspec-Token"
COOKIE = "diffspec_review"
STATIC = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}
MAX_BODY = 4096


def _static(name: str) -> bytes:
    return resources.files("diffspec.review").joinpath("static").joinpath(name).read_bytes()


class ReviewServer:
    """Serve a catalog for review; ``start()`` in a thread (tests, notebooks) or ``run()`` to block.

    ``stop()`` stops taking requests, lets the decisions already taken become durable, merges
    the session's parts and closes the socket; it is safe to call twice."""

    def __init__(self, loaded: LoadedSpec, catalog: Catalog, *, port: int = 0, token: str | None = None) -> None:
        if not catalog.exists() or not catalog.parts("images"):
            raise ReviewError(
                f"nothing to review under {catalog.output}: the catalog has no images yet (run `diffspec apply` first)"
            )
        self.loaded = loaded
        self.catalog = catalog
        self.token = token or secrets.token_urlsafe(24)
        self.data = ReviewData(loaded, catalog)
        try:
            self.httpd = _Httpd((HOST, port), _Handler)
        except OSError as exc:
            raise ReviewError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}") from None
        self.httpd.review = self
        self.log = DecisionLog(catalog)
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/?token={self.token}"

    @property
    def session_id(self) -> str:
        return self.log.session_id

    def start(self) -> ReviewServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="diffspec-review", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C, or SIGTERM turned into one by the CLI), then stop."""
        self.start()
        try:
            stop = threading.Event()
            while not stop.wait(0.5):  # a short wait, so a signal lands in this thread promptly
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
        self.log.close()  # decisions already taken are written (and answered) first
        self.httpd.server_close()

    def __enter__(self) -> ReviewServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ---- requests ------------------------------------------------------------------------------
    def decide(self, fingerprint: str, decision: str) -> dict[str, Any]:
        fact = self.data.fact(fingerprint)
        if fact is None:
            raise _NotFound(f"no live image with fingerprint {fingerprint!r}")
        done: Decision | None
        if decision == "undo":
            done = self.log.undo(fingerprint, fact.class_name)
        elif decision in DECISIONS:
            done = decision
            self.log.record(fingerprint, fact.class_name, done)
        else:
            raise ReviewError(f"unknown decision {decision!r}; use accept, reject, clear or undo")
        return {
            "saved": done is not None,
            "decision": done,
            "image": self.data.details(fingerprint, list(self.log.history(fingerprint))),
            "counts": self.data.class_counts(fact.class_name).to_dict(),
        }

    def session(self) -> dict[str, Any]:
        from diffspec.review.data import LIST_FILTERS

        return {
            "dataset": self.loaded.spec.dataset,
            "session_id": self.session_id,
            "filters": list(LIST_FILTERS),
            "classes": [c.to_dict() for c in self.data.classes()],
        }


class _NotFound(Exception):
    pass


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True
    review: ReviewServer


class _Handler(BaseHTTPRequestHandler):
    server: _Httpd
    server_version = "diffspec-review"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the page is the interface; a line per image request would drown the URL

    # ---- auth ----------------------------------------------------------------------------------
    def _given_tokens(self) -> list[str]:
        """The header's and the cookie's token (the URL's is for the page only)."""
        given = []
        if header := self.headers.get(TOKEN_HEADER):
            given.append(header)
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie is no token
            pass
        if COOKIE in cookie:
            given.append(cookie[COOKIE].value)
        return given

    def _allowed(self, candidates: list[str]) -> bool:
        token = self.server.review.token
        return any(secrets.compare_digest(c.encode(), token.encode()) for c in candidates)

    # ---- responses -----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the page URL holds the token
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    # ---- routes --------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        try:
            if url.path == "/":
                if not self._allowed(query.get("token", [])):
                    return self._error(HTTPStatus.FORBIDDEN, "open the URL `diffspec review` printed (with its token)")
                cookie = f"{COOKIE}={self.server.review.token}; HttpOnly; SameSite=Strict; Path=/"
                return self._send(200, _static("index.html"), "text/html; charset=utf-8", {"Set-Cookie": cookie})
            if not self._allowed(self._given_tokens()):
                return self._error(HTTPStatus.FORBIDDEN, "missing or wrong token")
            self._route_get(url.path, query)
        except _NotFound as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except DiffspecError as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug, said plainly to the page rather than a dropped connection
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}: {exc}")

    do_HEAD = do_GET

    def _route_get(self, path: str, query: dict[str, list[str]]) -> None:
        review = self.server.review
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "static" and parts[1] in STATIC:
            return self._send(200, _static(parts[1]), STATIC[parts[1]])
        if parts == ["api", "session"]:
            return self._json(200, review.session())
        if parts == ["api", "images"]:
            cls = (query.get("class") or [""])[0]
            wanted = (query.get("filter") or ["all"])[0]
            return self._json(200, {"class": cls, "filter": wanted, "images": review.data.images(cls, wanted)})
        if len(parts) >= 3 and parts[:2] == ["api", "images"]:
            fp = parts[2]
            if len(parts) == 3:
                details = review.data.details(fp, review.log.history(fp))
                if details is None:
                    raise _NotFound(f"no live image with fingerprint {fp!r}")
                return self._json(200, details)
            if parts[3:] == ["file"]:
                found = review.data.image_file(fp)
                if found is None:
                    raise _NotFound(f"no image file for fingerprint {fp!r}")
                return self._send(200, found[0].read_bytes(), found[1])
            if parts[3:] == ["masks.png"]:
                png = review.data.masks_png(fp)
                if png is None:
                    raise _NotFound(f"no kept masks for fingerprint {fp!r}")
                return self._send(200, png, "image/png")
        raise _NotFound(f"nothing at {path}")

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        url = urlsplit(self.path)
        header = self.headers.get(TOKEN_HEADER)
        if not header or not self._allowed([header]):
            return self._error(HTTPStatus.FORBIDDEN, f"a decision needs the token in the {TOKEN_HEADER} header")
        if url.path != "/api/decisions":
            return self._error(HTTPStatus.NOT_FOUND, f"nothing to post at {url.path}")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.BAD_REQUEST, f"a decision is a JSON body of at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length))
            fingerprint, decision = str(body["fingerprint"]), str(body["decision"])
        except (ValueError, KeyError, TypeError):
            return self._error(
                HTTPStatus.BAD_REQUEST, 'send {"fingerprint": ..., "decision": accept|reject|clear|undo}'
            )
        if decision not in (*DECISIONS, "undo"):
            return self._error(
                HTTPStatus.BAD_REQUEST, f"unknown decision {decision!r}; use accept, reject, clear or undo"
            )
        try:
            self._json(200, self.server.review.decide(fingerprint, decision))
        except _NotFound as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except DiffspecError as exc:  # the session closed, or the catalog refused the write: not saved
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
