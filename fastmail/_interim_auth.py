# mypy: ignore-errors
"""INTERIM (engine bring-up only, replaced by fastmail._auth): a minimal auth_http client on
fastmail._poll.Loop, one HTTP/1.0 connection per request, for testing the session engine."""

from __future__ import annotations

import os
import socket

from fastmail.auth_http import AuthResult, ResponseReader, build_request, interpret, reader_error


class _Call:
    def __init__(self, client, session, auth, request):
        self.client = client
        self.session = session
        self.auth = auth
        self.request = request
        self.reader = ResponseReader()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.timer = client.loop.call_later(client.timeout_s, self._timeout)
        try:
            self.sock.connect((client.host, client.port))
        except BlockingIOError:
            pass
        except OSError as e:
            client.loop.call_soon(
                self._done,
                AuthResult(
                    "error",
                    log_message=f"connect() failed ({e.errno}: {os.strerror(e.errno)})",
                    log_level="error",
                ),
            )
            return
        client.loop.add_writer(self.sock, self._send)

    def _send(self):
        self.client.loop.remove_writer(self.sock)
        try:
            self.sock.send(self.request)
        except OSError as e:
            self._done(
                AuthResult(
                    "error",
                    log_message=f"connect() failed ({e.errno}: {os.strerror(e.errno)})",
                    log_level="error",
                )
            )
            return
        self.client.loop.add_reader(self.sock, self._read)

    def _read(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self._done(
                AuthResult(
                    "error",
                    log_message=f"recv() failed ({e.errno}: {os.strerror(e.errno)})",
                    log_level="error",
                )
            )
            return
        if not data:
            self._done(AuthResult("error"))
            return
        if not self.reader.feed(data):
            return
        if self.reader.error:
            self._done(reader_error(self.reader, self.client.peer))
            return
        if getattr(self, "trace", None) is not None:
            self.trace.auth_answer(self.reader.headers)
        res = interpret(self.reader.headers, self.auth, self.client.peer)
        if res.user is not None:
            self.auth.user = res.user
        if res.passwd is not None:
            self.auth.passwd = res.passwd
        self._done(res)

    def _timeout(self):
        self._done(
            AuthResult(
                "error",
                log_message=f"auth http server {self.client.peer} timed out (110: Connection timed out)",
                log_level="error",
            )
        )

    def _close(self):
        self.timer.cancel()
        loop = self.client.loop
        loop.remove_reader(self.sock)
        loop.remove_writer(self.sock)
        self.sock.close()

    def _done(self, res):
        if self.session is None:
            return
        s, self.session = self.session, None
        self._close()
        s.completed(1, res)

    def cancel(self):
        if self.session is not None:
            self.session = None
            self._close()


class InterimAuthClient:
    def __init__(self, loop, conf, resolver=None):
        url = conf.auth_http
        self.loop = loop
        self.host, self.port = url.host, url.port
        self.path = url.uri.encode() or b"/"
        self.host_header = url.host_header.encode()
        self.timeout_s = conf.auth_http_timeout / 1000
        self.extra = [(k.encode(), v.encode()) for k, v in conf.auth_http_header]
        self.peer = f"{url.host}:{url.port}"

    def ask(self, session, auth, client_ip, client_host, pp, ssl_info, trace=None):
        req = build_request(
            auth,
            uri_path=self.path,
            host_header=self.host_header,
            client_ip=client_ip,
            client_host=client_host,
            extra_headers=self.extra,
            ssl_info=ssl_info,
            keepalive=False,
            proxy_protocol=pp,
        )
        if trace is not None:
            trace.auth_request(req)
        c = _Call(self, session, auth, req)
        c.trace = trace
        return c

    def cancel(self, call):
        call.cancel()

    def close(self):
        pass
