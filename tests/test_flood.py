"""``xich serve-hooks`` under a bounded flood on loopback: slow-header connections (slowloris), slow bodies and
oversized headers at once, while /health is asked every 50 ms and signed deliveries arrive. It must keep answering
/health and the deliveries, close what stalls, and keep its memory bounded (the server process's RSS, read from
/proc). Bounded in count and time: it stops by itself. The figures are in docs/security.md ("Faults tried").
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from xich.hooks.receiver import GENERIC, sign

import pg_private
from test_hooks import GENERIC_SECRET, SECRET, world  # noqa: F401 (world: a fixture)

SLOW_HEADERS, SLOW_BODIES, BIG_HEADERS = 200, 40, 40  # connections at once
FLOOD_S = 12.0  # how long the slow connections are held (and /health asked)
HEADER_TIMEOUT_S = 5.0  # what the test expects of the server: a request's headers in at most this long


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(world, tmp_path):
    """``xich serve-hooks`` on a free loopback port (generic hook on; no Prefect: a delivery is 'registered')."""
    port = pg_private.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"XICH_DATABASE_URL": f"sqlite:///{tmp_path / 'xich.db'}", "XICH_HOOKS_SECRET": SECRET,
                "XICH_HOOKS_GENERIC_SECRET": GENERIC_SECRET, "XICH_HOOKS_CONFIG": world["mapping"],
                "XICH_HOOKS_ALLOWED_SOURCES": str(world["dir"]), "XICH_HOOKS_BODY_TIMEOUT_S": "3",
                "XICH_CACHE_DIR": str(tmp_path / "cache")})
    proc = subprocess.Popen([sys.executable, "-m", "xich.cli", "serve-hooks", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the receiver did not start"
            time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def slow_headers(port: int, closed: list[float], t0: float) -> None:
    """A request whose headers never end: a byte a second until FLOOD_S; when the server closes it is noted."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        while time.monotonic() - t0 < FLOOD_S:
            writer.write(b"X")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                    closed.append(time.monotonic() - t0)
                    return
            except asyncio.TimeoutError:
                pass
    except (ConnectionError, OSError):
        closed.append(time.monotonic() - t0)
    finally:
        writer.close()


async def slow_body(port: int, answers: list, t0: float) -> None:
    """A POST announcing 100 kB and sending 10 bytes a second: the app's body timeout must answer (408)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /hooks/generic HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        while time.monotonic() - t0 < FLOOD_S:
            writer.write(b"{" * 10)
            await writer.drain()
            try:
                head = await asyncio.wait_for(reader.read(1024), 1.0)
                answers.append(head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1") else "closed")
                return
            except asyncio.TimeoutError:
                pass
        answers.append("no answer")
    except (ConnectionError, OSError):
        answers.append("closed")
    finally:
        writer.close()


async def big_headers(port: int, answers: list, size: int) -> None:
    """A request with a header of ``size`` bytes (over the receiver's 16 KiB)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(1024), 10)
        answers.append(head.split(b" ")[1].decode() if head.startswith(b"HTTP/1.1") else "closed")
    except (ConnectionError, OSError):
        answers.append("closed")
    finally:
        writer.close()


async def probe(port: int, t0: float, health: list, deliveries: list, world: dict) -> None:
    """/health every 50 ms (a new connection each), and a signed generic delivery every 2 s, during the flood."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        next_delivery = 1.0
        while (now := time.monotonic() - t0) < FLOOD_S:
            began = time.monotonic()
            try:
                status = (await client.get("/health")).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            health.append((now, status, time.monotonic() - began))
            if now >= next_delivery:
                next_delivery += 2.0
                body = json.dumps({"model": "shapes", "version": f"v{len(deliveries)}",
                                   "weights_uri": world["weights"]}).encode()
                delivery_id, stamp = str(uuid.uuid4()), str(int(time.time()))
                headers = {GENERIC.delivery_header: delivery_id, GENERIC.timestamp_header: stamp,
                           GENERIC.signature_header: sign(GENERIC_SECRET, delivery_id, stamp, body)}
                try:
                    deliveries.append((await client.post("/hooks/generic", content=body, headers=headers)).status_code)
                except httpx.HTTPError as exc:
                    deliveries.append(type(exc).__name__)
            await asyncio.sleep(0.05)


def test_the_receiver_keeps_answering_under_a_bounded_flood(server, world):
    proc, port = server
    before = [httpx.get(f"http://127.0.0.1:{port}/health", timeout=10) for _ in range(20)]
    rss_before = rss_kib(proc.pid)
    health, deliveries, closed, bodies, bigs, rss = [], [], [], [], [], []

    async def flood():
        t0 = time.monotonic()

        async def sample():
            while time.monotonic() - t0 < FLOOD_S + 1:
                rss.append(rss_kib(proc.pid))
                await asyncio.sleep(0.2)

        await asyncio.gather(*(slow_headers(port, closed, t0) for _ in range(SLOW_HEADERS)),
                             *(slow_body(port, bodies, t0) for _ in range(SLOW_BODIES)),
                             *(big_headers(port, bigs, (64 << 10) if n % 2 else (1 << 20))
                               for n in range(BIG_HEADERS)),
                             probe(port, t0, health, deliveries, world), sample())

    began = time.monotonic()
    asyncio.run(flood())
    took = time.monotonic() - began
    time.sleep(1)
    after = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
    rss_after = rss_kib(proc.pid)
    latencies = sorted(s for _, _, s in health)
    figures = {"took_s": round(took, 1), "health_asked": len(health),
               "health_statuses": sorted({str(s) for _, s, _ in health}),
               "health_median_ms": round(1000 * statistics.median(latencies), 1),
               "health_p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
               "health_max_ms": round(1000 * latencies[-1], 1),
               "before_median_ms": round(1000 * statistics.median(r.elapsed.total_seconds() for r in before), 1),
               "deliveries": deliveries, "slow_bodies": sorted(set(bodies)), "big_headers": sorted(set(bigs)),
               "slow_headers_closed": len(closed), "closed_by_s": round(max(closed), 1) if closed else None,
               "rss_before_mib": round(rss_before / 1024, 1), "rss_peak_mib": round(max(rss) / 1024, 1),
               "rss_after_mib": round(rss_after / 1024, 1)}
    print(json.dumps(figures))
    assert proc.poll() is None and after.status_code == 200
    assert {s for _, s, _ in health} == {200}, figures
    assert deliveries and set(deliveries) <= {202}, figures
    assert set(bodies) == {"408"} and set(bigs) <= {"400", "431", "closed"}, figures  # nothing read past its bounds
    assert len(closed) == SLOW_HEADERS and max(closed) < HEADER_TIMEOUT_S + 2, figures  # every stall closed
    assert max(rss) - rss_before < 50 * 1024 and rss_after - rss_before < 30 * 1024, figures  # KiB
