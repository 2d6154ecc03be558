"""What a server (or a proxy in front of it) answers is parsed on the agent's hot path:
any bytes, JSON nested past the parser's recursion limit included, are a bad answer
(None / False / an error response), never an exception out of the transport."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from volley.cli import app
from volley.plan import JsonServiceSpec
from volley.request import check_http_response
from volley.wire.json_service import answer_ok
from volley.wire.stream import parse_sse_event

DEEP = [b"[" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b"[" * 3000 + b"]" * 3000]
answers = st.one_of(
    st.sampled_from(DEEP),
    st.binary(max_size=300),
    st.sampled_from([b"NaN", b'{"outputs": NaN}', b'{"a": ' + b"9" * 5000 + b"}", b"\xff"]),
)


def test_deep_json_answers_are_bad_answers() -> None:
    for body in DEEP:
        assert parse_sse_event(b"data: " + body, "TOKEN") is None
        assert check_http_response(body, None, 1) is False
        assert check_http_response(body + b"tail", len(body), 1) is False


FIELDS = st.one_of(
    st.sampled_from(["a", "a.b", "0", "-1", "a." + "9" * 5000, "a.-" + "9" * 30, "..", ""]),
    st.text(alphabet="ab01-.", max_size=12),
)


@settings(max_examples=200, deadline=None)
@given(answers, st.integers(0, 3), FIELDS)
def test_any_answer_is_parsed_or_refused(body: bytes, outputs: int, field: str) -> None:
    ev = parse_sse_event(b"data: " + body, "TOKEN")
    assert ev is None or ev.final in (True, False)
    assert check_http_response(body, None, outputs) in (True, False)
    spec = JsonServiceSpec(path="/p", template="{}", expect_field=field)
    assert answer_ok(200, body, spec) in (True, False)


def test_a_huge_list_index_in_expect_field_is_no_match() -> None:
    spec = JsonServiceSpec(path="/p", template="{}", expect_field="a." + "9" * 5000)
    assert answer_ok(200, b'{"a": [1, 2]}', spec) is False
    assert answer_ok(200, b'{"a": [1, 2]}', JsonServiceSpec(template="{}", expect_field="a.-2"))


class _DeepServer(http.server.BaseHTTPRequestHandler):
    """Ready, then every JSON answer nested past the parser's recursion limit."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"" if "health" in self.path else DEEP[0]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_preflight_on_a_server_answering_deep_json_is_one_line(tmp_path: Path) -> None:
    """The server's metadata/config/model list nested 100,000 deep: `volley run` says
    what is malformed in one line (exit 2), not a RecursionError traceback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DeepServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        target = f"127.0.0.1:{server.server_address[1]}"
        argv = ["run", "--protocol", "http", "--target", target, "--model", "m"]
        argv += ["--rate", "5", "--duration", "1s", "--agent", "127.0.0.1:1"]
        res = CliRunner().invoke(app, [*argv, "--out", str(tmp_path)])
    finally:
        server.shutdown()
        server.server_close()
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 2 and "malformed" in res.stderr, res.output
    assert res.stderr.strip().count("\n") == 0
