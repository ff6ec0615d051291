"""The server's HTTP side: the round's live page, ``/status.json`` and ``/metrics``.

Layout: `lottery.web.http` is the one HTTP listener (`serve_http`, `HttpServer`,
`Access`); ``round.html`` is the page it serves at ``/``, one static file of
plain HTML, CSS and JavaScript (no build step, no external assets) that polls
``/status.json``.
"""

from .http import REQUEST_TIMEOUT, Access, HttpServer, serve_http

__all__ = ["REQUEST_TIMEOUT", "Access", "HttpServer", "serve_http"]
