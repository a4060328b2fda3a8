"""The SDK endpoint's retries, against a real HTTP server that cuts its first answers off mid-body (as a replica
SIGKILLed while writing does) and then answers whole."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayline.serving.deployment import Endpoint

ANSWER = json.dumps({"predictions": [1]}).encode()


class _CutsOffFirstAnswers(BaseHTTPRequestHandler):
    cut_left = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(ANSWER)))
        self.end_headers()
        if type(self).cut_left > 0:
            type(self).cut_left -= 1
            self.close_connection = True  # the headers promised a body that never comes
            return
        self.wfile.write(ANSWER)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _CutsOffFirstAnswers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _endpoint(httpd: ThreadingHTTPServer) -> Endpoint:
    return Endpoint(name="cut", url=f"http://127.0.0.1:{httpd.server_address[1]}", model_name="m")


def test_an_answer_cut_off_mid_body_is_retried(server: ThreadingHTTPServer) -> None:
    _CutsOffFirstAnswers.cut_left = 2
    assert _endpoint(server).predict([{"x": 1.0}], retry_s=10) == {"predictions": [1]}
    assert _CutsOffFirstAnswers.cut_left == 0


def test_without_retries_the_cut_off_answer_is_raised(server: ThreadingHTTPServer) -> None:
    _CutsOffFirstAnswers.cut_left = 1
    with pytest.raises(http.client.IncompleteRead):
        _endpoint(server).predict([{"x": 1.0}], retry_s=0)
