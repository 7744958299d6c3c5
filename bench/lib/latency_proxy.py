"""A TCP proxy on 127.0.0.1 for the restore benchmarks: optionally terminates TLS (pgBackRest's
S3 client speaks only HTTPS) and optionally adds a fixed delay to every HTTP request, as a
remote S3 region's round trip would.

The delay is applied when a chunk from the client starts with an HTTP method (a new request on the
connection), before it is forwarded; responses pass through untouched. Both tools' requests are
small GETs/HEADs/LISTs, so each request pays the delay once, whichever tool sends it.

Runs in its own process (its event loop must not share a GIL with the benchmark's driver, which
times the tools: in one process, a proxy relaying hundreds of MiB/s slowed the calls it timed and
capped the faster tool); `stop()` ends that process by its PID.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import multiprocessing
import signal
from typing import Optional

METHODS = (b"GET ", b"PUT ", b"HEAD ", b"POST ", b"DELETE ")


def self_signed_cert(directory: str) -> tuple[str, str]:
    """A throwaway certificate and key for 127.0.0.1 (openssl, one day)."""
    cert, key = os.path.join(directory, "proxy.crt"), os.path.join(directory, "proxy.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class LatencyProxy:
    """The proxy's process, seen from the benchmark: `port`, `requests` (HTTP requests relayed so
    far), `stop()`."""

    def __init__(self, upstream_port: int, delay_s: float = 0.0, tls: Optional[tuple[str, str]] = None):
        ctx = multiprocessing.get_context("spawn")
        self._requests = ctx.Value("q", 0)
        ports = ctx.Queue()
        self._proc = ctx.Process(target=_serve, args=(upstream_port, delay_s, tls, self._requests, ports),
                                 daemon=True)
        self._proc.start()
        try:
            self.port = ports.get(timeout=30)
        except Exception:
            self.stop()
            raise RuntimeError("proxy did not start") from None

    @property
    def requests(self) -> int:
        return self._requests.value

    def stop(self) -> None:
        """Ends the proxy's process (SIGTERM by PID, then SIGKILL): every connection goes with it."""
        if self._proc.pid is not None and self._proc.is_alive():
            os.kill(self._proc.pid, signal.SIGTERM)
            self._proc.join(10)
            if self._proc.is_alive():
                os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.join(10)


def _serve(upstream_port: int, delay_s: float, tls: Optional[tuple[str, str]], requests, ports) -> None:
    """The proxy process: accepts on an ephemeral port of 127.0.0.1, reports it, relays forever."""
    context = None
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, client_side: bool) -> None:
            try:
                while chunk := await src.read(1 << 18):
                    if client_side and chunk.startswith(METHODS):
                        with requests.get_lock():
                            requests.value += 1
                        if delay_s:
                            await asyncio.sleep(delay_s)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:  # noqa: BLE001 - already closed
                    pass

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        ports.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())
