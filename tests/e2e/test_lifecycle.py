"""Process life with real processes and signals: SIGTERM drains, config changes apply live."""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from threading import Thread

import httpx
import yaml

from gateway.keys import hash_key
from tests.e2e.helpers import USER, stats
from tests.poll import until_sync
from tests.procs import LLAMA, SEARCH_KEY, WANDB_KEY, Proc, base_config, free_port, spawn

NEW_KEY = "sk-gw-test-new"


def within(limit_s: float, check: Callable[[], bool], what: str) -> None:
    """`check` holds within `limit_s` of now: a latency the gateway promises, not a timeout."""
    began = time.monotonic()
    until_sync(check, timeout_s=limit_s, what=what)
    took = time.monotonic() - began
    assert took < limit_s, f"{what} took {took:.2f}s"


def chat(gateway: Proc, key: str) -> int:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": LLAMA, "messages": USER},
        headers={"Authorization": f"Bearer {key}"},
    ).status_code


def gateway_with_grace(fake: Proc, grace_s: float) -> Proc:
    path = Path(tempfile.mkdtemp()) / "gateway.yaml"
    path.write_text(yaml.safe_dump(base_config(fake.url, server__shutdown_grace_s=grace_s)))
    port = free_port()
    return spawn(["serve", "--config", str(path), "--port", str(port)], port, "/healthz", "gateway")


def stream_in_background(gw: Proc, fake: Proc, knobs: dict[str, float]) -> tuple[Thread, list[str]]:
    """A stream read to its end in a thread (its body lands in the list), once upstream has it."""
    body: list[str] = []

    def read() -> None:
        with httpx.stream(
            "POST",
            gw.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {SEARCH_KEY}"},
            json={"model": LLAMA, "messages": USER, "stream": True, "x_fake": knobs},
            timeout=30,
        ) as resp:
            body.append(resp.read().decode())

    reader = Thread(target=read)
    reader.start()
    until_sync(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 1, what="the stream upstream")
    return reader, body


def test_sigterm_drains_in_flight_streams_and_refuses_new_work(fake: Proc) -> None:
    gw = gateway_with_grace(fake, 20)
    try:
        reader, body = stream_in_background(gw, fake, {"chunk_delay_s": 0.25})
        gw.proc.send_signal(signal.SIGTERM)
        until_sync(lambda: httpx.get(gw.url + "/readyz").status_code == 503, what="not ready")
        assert httpx.get(gw.url + "/readyz").json()["status"] == "draining"
        refused = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": LLAMA, "messages": USER},
            headers={"Authorization": f"Bearer {SEARCH_KEY}"},
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["type"] == "server_error"
        assert refused.headers["retry-after"] == "1"
        assert gw.proc.poll() is None  # still serving the stream
        reader.join(timeout=15)
        assert body and body[0].rstrip().endswith("data: [DONE]")  # finished, not cut
        gw.proc.wait(timeout=15)  # and then it exits by itself
        assert stats(fake)["inflight"][WANDB_KEY] == 0
        assert "drained: every request finished" in gw.logs()
    finally:
        gw.stop(signal.SIGKILL)


def test_a_stream_outliving_the_grace_ends_with_an_error_event(fake: Proc) -> None:
    gw = gateway_with_grace(fake, 1)
    try:  # 100 chunks 0.2 s apart: 20 s, far past the grace
        reader, body = stream_in_background(gw, fake, {"chunk_delay_s": 0.2, "tokens": 100})
        gw.proc.send_signal(signal.SIGTERM)
        reader.join(timeout=15)
        assert body, "the stream did not end"
        events = [line for line in body[0].splitlines() if line.startswith("data: ")]
        assert '"code":"shutting_down"' in events[-1], events[-3:]  # the last word, no silence
        assert "[DONE]" not in body[0]
        gw.proc.wait(timeout=15)
        until_sync(lambda: stats(fake)["inflight"][WANDB_KEY] == 0, what="upstream closed")
        assert "1 stream(s) ended with an error event" in gw.logs()
    finally:
        gw.stop(signal.SIGKILL)


def test_keys_change_live_and_a_bad_config_is_refused(fake: Proc) -> None:
    folder = Path(tempfile.mkdtemp())
    keys = folder / "search.keys"
    keys.write_text(hash_key(SEARCH_KEY) + "\n")
    config = base_config(fake.url, server__reload_poll_s=0.2)
    del config["tenants"]["search"]["keys"]
    config["tenants"]["search"]["keys_file"] = "search.keys"
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    gw = spawn(["serve", "--config", str(path), "--port", str(port)], port, "/healthz", "gateway")
    try:
        assert chat(gw, SEARCH_KEY) == 200
        assert chat(gw, NEW_KEY) == 401
        # a new key in the keys file works within a second or two ...
        keys.write_text(f"{hash_key(SEARCH_KEY)}\n{hash_key(NEW_KEY)}\n")
        within(2, lambda: chat(gw, NEW_KEY) == 200, "the added key accepted")
        # ... a removed one is refused as quickly
        keys.write_text(hash_key(NEW_KEY) + "\n")
        within(2, lambda: chat(gw, SEARCH_KEY) == 401, "the removed key refused")
        # an invalid config is refused with a clear log line; the old one stays in force
        path.write_text(path.read_text().replace("account: main", "account: nowhere", 1))
        until_sync(lambda: "config reload refused" in gw.logs(), what="the refusal logged")
        assert "unknown account 'nowhere'" in gw.logs()
        assert chat(gw, NEW_KEY) == 200
    finally:
        gw.stop()


def test_sighup_reloads_at_once(fake: Proc) -> None:
    folder = Path(tempfile.mkdtemp())
    config = base_config(fake.url, server__reload_poll_s=0)  # no polling: only SIGHUP
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    gw = spawn(["serve", "--config", str(path), "--port", str(port)], port, "/healthz", "gateway")
    try:
        config["tenants"]["search"]["keys"].append(hash_key(NEW_KEY))
        config["models"][LLAMA]["aliases"].append("my-llama")
        path.write_text(yaml.safe_dump(config))
        time.sleep(0.5)  # deliberate: a poller (0.2 s in the test above) would have seen it by now
        assert chat(gw, NEW_KEY) == 401  # not polled
        gw.proc.send_signal(signal.SIGHUP)
        within(1, lambda: chat(gw, NEW_KEY) == 200, "the new key accepted")
        resp = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "my-llama", "messages": USER},
            headers={"Authorization": f"Bearer {NEW_KEY}"},
        )
        assert resp.json()["model"] == LLAMA
    finally:
        gw.stop()
