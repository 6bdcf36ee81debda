"""Load driver properties that need a server whose slowness and failures we control.

FAKE: a tiny local stdlib HTTP server that sleeps or fails on purpose (the real service cannot be made to hold a request
for exactly 1 s, or to fail every fourth one), and keeps every request it got. The properties: open-loop sends keep
their Poisson schedule while the server is slow (latency is measured from the scheduled time), the duration bound
holds with requests still in flight, sent = ok + rejected + errors with every kind of outcome present, and an edits
workload sends the images the server made back as OpenAI's multipart form (bytes as received are checked here; the
real form parser takes them in tests/service/test_bench_serve.py).
"""

from __future__ import annotations

import io
import json
import threading
import time
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from bench.loadgen import LoadSpec, run_load
from bench.stats import request_stats
from bench.workload import EDITS_PATH, Lora, Workload, prepare_edits


class FakeServer:
    """POST: sleeps `delay_s`; with `by_seed`, a JSON body's seed % 4 picks 200 / 503 / 500 / hang. Keeps every
    request as (path, content type, body bytes) in `received`."""

    def __init__(self, delay_s: float = 0.0, by_seed: bool = False):
        self.delay_s, self.by_seed = delay_s, by_seed
        self.arrivals: list[float] = []
        self.received: list[tuple[str, str, bytes]] = []
        self._stop = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict) -> None:
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                fake.arrivals.append(time.time())
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                fake.received.append((self.path, self.headers["Content-Type"], raw))
                kind = json.loads(raw)["seed"] % 4 if fake.by_seed else 0
                try:
                    if kind == 1:
                        err = json.dumps({"error": {"code": "queue_full"}}).encode()
                        return self._send(503, err, {"Content-Type": "application/json", "Retry-After": "1"})
                    if kind == 2:
                        return self._send(500, json.dumps({"error": {"code": "internal"}}).encode(), {})
                    fake._stop.wait(30 if kind == 3 else fake.delay_s)
                    headers = {"Content-Type": "image/png", "X-Batch-Size": "3", "X-Inference-Ms": "812.5"}
                    self._send(200, b"\x89PNG fake", {**headers, "X-Queue-Wait-Ms": "4.0", "X-Peak-Memory-MB": "0"})
                except OSError:  # the client gave up (timeout, cancellation): nothing to answer
                    pass

        ThreadingHTTPServer.request_queue_size = 128
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


WORKLOAD = Workload(width=256, height=256, steps=8)


def test_open_loop_keeps_its_schedule_while_the_server_is_slow():
    spec = LoadSpec(mode="open", rate=20.0, requests=20, duration_s=10.0, drain_s=10.0, arrival_seed=7)
    with FakeServer(delay_s=1.0) as server:
        phases = run_load(server.url, WORKLOAD, spec)
    recs = [r.as_dict() for r in phases["measure"].records]
    assert len(recs) == 20 and all(r["outcome"] == "ok" for r in recs)
    t0 = phases["measure"].start_t
    offsets = [r["scheduled_t"] - t0 for r in sorted(recs, key=lambda r: r["index"])]
    from bench.loadgen import LoadDriver

    expected = LoadDriver("http://x", WORKLOAD, spec).arrival_offsets(20.0, 20)
    assert offsets == pytest.approx(expected, abs=0.01)  # the seeded Poisson schedule, not the server's pace
    assert expected[-1] < 3.0  # 20 arrivals at 20/s: all scheduled well before 20 x 1 s of serial service
    assert max(r["sent_t"] - r["scheduled_t"] for r in recs) < 0.25  # sent on time although each answer takes 1 s
    assert max(r["sent_t"] for r in recs) < min(r["done_t"] for r in recs) + 2.0
    assert all(r["latency_s"] >= 1.0 for r in recs)  # measured from the schedule, includes the full service time
    assert request_stats(recs)["batch_latency_s"] == pytest.approx(0.8125)


def test_closed_loop_would_hide_the_same_slowness():
    """Contrast: one closed-loop client only ever sends when the previous answer came back (coordinated omission)."""
    spec = LoadSpec(mode="closed", concurrency=1, requests=20, duration_s=2.5, drain_s=5.0)
    with FakeServer(delay_s=1.0) as server:
        phases = run_load(server.url, WORKLOAD, spec)
    recs = phases["measure"].records
    assert 2 <= len(recs) <= 3 and all(r.latency_s < 1.5 for r in recs)


def test_duration_bound_holds_and_cancelled_requests_count_as_errors():
    spec = LoadSpec(mode="closed", concurrency=3, requests=100, duration_s=0.5, drain_s=0.5, timeout_s=60)
    with FakeServer(delay_s=5.0) as server:
        start = time.monotonic()
        phases = run_load(server.url, WORKLOAD, spec)
        elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 0.5 + 0.5  # duration + drain + slack; the server would have taken 5 s
    s = request_stats([r.as_dict() for r in phases["measure"].records])
    assert s["sent"] == 3 and s["ok"] == 0 and s["errors"] == 3
    assert {r.outcome for r in phases["measure"].records} == {"cancelled"}


def test_counts_reconcile_with_every_outcome():
    """seed % 4: 0 ok, 1 -> 503 (rejected), 2 -> 500 (error), 3 -> hangs past the client timeout (error)."""
    workload = Workload(width=256, height=256, steps=8, mode="varied", seed=0)  # seeds 0, 1, 2, ...
    spec = LoadSpec(mode="closed", concurrency=4, requests=20, duration_s=30, timeout_s=0.5, warmup_requests=4)
    with FakeServer(delay_s=0.05, by_seed=True) as server:
        phases = run_load(server.url, workload, spec)
        arrivals = len(server.arrivals)
    assert len(phases["warmup"].records) == 4  # seeds 0-3, excluded from the measured phase
    recs = [r.as_dict() for r in phases["measure"].records]
    s = request_stats(recs)
    assert (s["sent"], s["ok"], s["rejected"], s["errors"]) == (20, 5, 5, 10)
    assert s["sent"] == s["ok"] + s["rejected"] + s["errors"] and arrivals == 24
    assert {r["outcome"] for r in recs} == {"ok", "rejected", "error", "timeout"}
    ok = [r for r in recs if r["outcome"] == "ok"]
    assert all(r["batch_size"] == 3 and r["inference_ms"] == 812.5 and r["status"] == 200 for r in ok)
    rejected = [r for r in recs if r["outcome"] == "rejected"]
    assert all(r["status"] == 503 and r["code"] == "queue_full" and r["retry_after"] == "1" for r in rejected)
    from bench.loadgen import summarize

    summary = summarize(phases["measure"].records)  # the reliability tests' view of the same records
    assert (summary["sent"], summary["ok"], summary["rejected"], summary["error"]) == (20, 5, 5, 10)


def _in_flight_at(records, t: float) -> int:
    return sum(r.sent_t <= t < r.done_t for r in records)


@pytest.mark.parametrize("cooldown", [True, False])
def test_cooldown_keeps_the_load_on_until_the_last_measured_answer(cooldown):
    """3 clients, 5 measured requests, 0.3 s each: the 2 measured requests of the second round run alongside a third,
    unmeasured one with cooldown (a batching server would see full batches to the end); without it they run 2 of 3."""
    spec = LoadSpec(mode="closed", concurrency=3, requests=5, duration_s=30, cooldown=cooldown)
    with FakeServer(delay_s=0.3) as server:
        phases = run_load(server.url, WORKLOAD, spec)
        arrivals = len(server.arrivals)
    measured = phases["measure"].records
    assert len(measured) == 5 and all(r.outcome == "ok" for r in measured)
    cool = phases["cooldown"].records if cooldown else []
    assert ("cooldown" in phases) == cooldown and arrivals == 5 + len(cool)
    last_done = max(r.done_t for r in measured)
    everything = measured + cool
    assert _in_flight_at(everything, last_done - 0.1) == (3 if cooldown else 2)
    if cooldown:  # sent only after the measured share was used up, and never more than the clients that were free
        assert 1 <= len(cool) <= 3 and min(r.sent_t for r in cool) >= max(r.sent_t for r in measured)
        assert all(r.phase == "cooldown" for r in cool)
    s = request_stats([r.as_dict() for r in measured])
    assert s["sent"] == s["ok"] == 5


def _form(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body -> {field name: (file name or None, bytes)}."""
    message = BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    assert message.is_multipart(), content_type
    return {
        part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
        for part in message.get_payload()
    }


def test_an_inpaint_workload_sends_the_images_it_had_made_back_as_openai_multipart():
    ink, film = Lora("ink", 0.8), Lora("film")
    workload = Workload(256, 256, 4, mode="varied", seed=5, task="inpaint", loras=(ink, film), strength=0.5)
    with pytest.raises(ValueError, match="prepare_edits"):
        workload.request(0)
    spec = LoadSpec(mode="closed", concurrency=2, requests=3)
    with FakeServer() as server:
        workload = prepare_edits(server.url, workload, count=2)
        phases = run_load(server.url, workload, spec)
        received = list(server.received)
    made = [json.loads(raw) for path, _, raw in received if path == "/generate"]
    assert sorted(b["seed"] for b in made) == [5, 6]  # two distinct inputs, sent before the run
    assert all((b["width"], b["height"], b["output_format"]) == (256, 256, "png") and "lora" not in b for b in made)
    assert workload.inputs == (b"\x89PNG fake", b"\x89PNG fake")  # the server's answers, as they came
    edits = [_form(ctype, raw) for path, ctype, raw in received if path == EDITS_PATH]
    assert len(edits) == 3 and all(r.outcome == "ok" for r in phases["measure"].records)
    for form in edits:
        text = {k: v.decode() for k, (name, v) in form.items() if name is None}
        assert text["size"] == "256x256" and text["n"] == "1" and text["strength"] == "0.5"
        assert text["num_inference_steps"] == "4" and text["response_format"] == "b64_json"
        assert json.loads(text["lora"]) == [{"name": "ink", "scale": 0.8}, {"name": "film"}]
        index = int(text["seed"]) - 5  # varied prompts: request i has seed + i and input i % 2
        assert form["image"] == (f"input-{index % 2}.png", b"\x89PNG fake")
        alpha = np.asarray(Image.open(io.BytesIO(form["mask"][1])).getchannel("A"))
        assert alpha.shape == (256, 256) and alpha[128, 128] == 0 and alpha[0, 0] == alpha[255, 255] == 255
        assert (alpha == 0).mean() == pytest.approx(0.25)  # the middle half of each side is repainted
    assert sorted(int(form["seed"][1]) for form in edits) == [5, 6, 7]
    tags = workload.row_tags()
    assert tags == {"task": "inpaint", "adapter": "film+ink", "lora": "ink:0.8, film", "strength": 0.5, "dit_steps": 2}


def test_an_edit_without_mask_or_strength_leaves_both_to_the_service():
    workload = Workload(256, 256, 8, task="edit", inputs=(b"png",))
    req = workload.request(0)
    assert req.path == EDITS_PATH and set(req.files) == {"image"}
    assert "strength" not in req.body and "lora" not in req.body and workload.dit_steps() == 8
    assert Workload(task="edit", strength=0.6).dit_steps() == 5  # diffusers: 8 - int(8 - 4.8)
    with pytest.raises(ValueError, match="strength"):
        Workload(strength=0.5)  # generation has no strength
