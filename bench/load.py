"""A small HTTP/1.1 load generator: keep-alive connections, one asyncio loop.

Run in its own process so the client does not share the server's GIL;
each connection sends a request, reads the whole answer, records status
and latency, and goes again until the time is up.
"""
import asyncio
import time


def post(path, host, body):
    """The bytes of one keep-alive POST with a JSON body."""
    return (b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), len(body), body))


async def read_response(reader):
    """``(status, body)`` of one response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def connection(host, port, requests, deadline, samples):
    """One client: send ``requests`` in turn (cycling) until ``deadline``."""
    reader, writer = await asyncio.open_connection(host, port)
    number = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(requests[number % len(requests)])
            status, _ = await read_response(reader)
            samples.append((status, time.perf_counter() - started))
            number += 1
    finally:
        writer.close()


async def drive(host, port, bodies, clients, seconds):
    """Run ``clients`` connections for ``seconds``; returns [(status, latency_s)]."""
    samples = []
    deadline = time.perf_counter() + seconds
    share = [[post("/", host, body) for body in bodies[i::clients]] for i in range(clients)]
    await asyncio.gather(*(connection(host, port, mine, deadline, samples) for mine in share))
    return samples


def run_load(host, port, bodies, clients, seconds):
    """Blocking wrapper for a worker process: (samples, elapsed seconds)."""
    started = time.perf_counter()
    samples = asyncio.run(drive(host, port, bodies, clients, seconds))
    return samples, time.perf_counter() - started
