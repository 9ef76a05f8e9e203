"""Load and abuse tests of `OpenAICompatibleServer` on 127.0.0.1, with the real `HFBackend` on the tiny random model."""
import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from optima_nb.backends import HFBackend
from optima_nb.serving import OpenAICompatibleServer
from optima_nb.models import load_tokenizer, tiny_random_model

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def backend():
    model, tok = tiny_random_model(load_tokenizer())
    return HFBackend(model, tok, max_batch_size=64)


def post(server, body=None, raw=None, timeout=120):
    "(status, parsed body) of one POST; a reset or refused connection raises."
    conn = http.client.HTTPConnection(*server.httpd.server_address[:2], timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=raw if raw is not None else json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_200_concurrent_clients_all_answered_none_reset(backend):
    "200 clients connect at once: every one gets a status code (200 or 503), no connection is reset or refused."
    n = 200
    start = threading.Barrier(n)
    def client(i):
        start.wait(timeout=60)
        try: return post(server, {"messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 2, "temperature": 0})[0]
        except (ConnectionError, OSError) as e: return type(e).__name__
    with OpenAICompatibleServer(backend, max_wait_s=0.05) as server:
        t0 = time.monotonic()
        with ThreadPoolExecutor(n) as ex: statuses = list(ex.map(client, range(n)))
        elapsed = time.monotonic() - t0
    errors = [s for s in statuses if not isinstance(s, int)]
    assert not errors, f"{len(errors)} of {n} connections failed: {sorted(set(errors))}"
    assert set(statuses) <= {200, 503} and statuses.count(200) >= n // 2, statuses
    assert elapsed < 240


def test_bad_requests_do_not_fail_the_good_ones_in_their_batch(backend):
    good = {"messages": MSGS, "max_tokens": 2, "temperature": 0}
    bad = [{"messages": [{"role": "user", "content": 5}]}, {"messages": []}, {"messages": MSGS, "seed": 2**70},
           {"messages": MSGS, "max_tokens": 10**9}, {"messages": MSGS, "max_tokens": 0}, [1, 2], "hi"]
    bodies = [good] * 8 + bad
    with OpenAICompatibleServer(backend, max_wait_s=0.2) as server:
        with ThreadPoolExecutor(len(bodies)) as ex: results = list(ex.map(lambda b: post(server, b), bodies))
    assert [s for s, _ in results] == [200] * 8 + [400] * len(bad), results
    assert all(r["error"]["message"] for _, r in results[8:])
    assert len({r["choices"][0]["message"]["content"] for _, r in results[:8]}) == 1   # greedy: the same text each time


def test_max_tokens_above_the_context_is_refused(backend):
    with OpenAICompatibleServer(backend) as server:
        limit = server.max_tokens_limit
        status, body = post(server, {"messages": MSGS, "max_tokens": limit + 1})
        assert status == 400 and "max_tokens" in body["error"]["message"]
        assert post(server, {"messages": MSGS, "max_tokens": 1})[0] == 200


def _raw(server, data: bytes, pause: float = 0.0) -> bytes:
    with socket.create_connection(server.httpd.server_address[:2], timeout=30) as s:
        s.sendall(data)
        time.sleep(pause)
        return b"".join(iter(lambda: s.recv(65536), b""))


def test_protocol_errors_get_status_codes(backend):
    with OpenAICompatibleServer(backend, read_timeout_s=0.5, max_body_bytes=10_000) as server:
        assert _raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.0 411")
        assert _raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n{}").startswith(b"HTTP/1.0 413")
        assert _raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{", pause=1.0).startswith(b"HTTP/1.0 408")
        assert _raw(server, b"POST /v1/chat", pause=1.0).startswith(b"HTTP/1.0 408")
        assert post(server, raw=b"{not json")[0] == 400
        assert post(server, {"messages": MSGS, "max_tokens": 1})[0] == 200     # still serving


def test_prompt_plus_max_tokens_above_the_context_is_refused(backend):
    with OpenAICompatibleServer(backend) as server:
        n_prompt = len(backend.encode(MSGS))
        status, body = post(server, {"messages": MSGS, "max_tokens": server.max_tokens_limit - n_prompt + 1})
        assert status == 400 and "exceeds the context" in body["error"]["message"], body
        assert post(server, {"messages": MSGS, "max_tokens": 1})[0] == 200
