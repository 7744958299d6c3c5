"""A TCP proxy on 127.0.0.1 for the restore benchmarks: optionally terminates TLS (pgBackRest's
S3 client speaks only HTTPS) and optionally adds a fixed delay to every HTTP request, as a
remote S3 region's round trip would.

The delay is applied when a chunk from the client starts with an HTTP method (a new request on the
connection), before it is forwarded; responses pass through untouched. Both tools' requests are
small GETs/HEADs/LISTs, so each request pays the delay once, whichever tool sends it.

Runs its own event loop in a daemon thread; `stop()` closes the listener and every connection.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import threading
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
    def __init__(self, upstream_port: int, delay_s: float = 0.0, tls: Optional[tuple[str, str]] = None):
        self.upstream_port = upstream_port
        self.delay_s = delay_s
        self.requests = 0
        self._ssl = None
        if tls is not None:
            self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._ssl.load_cert_chain(*tls)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: Optional[asyncio.AbstractServer] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("proxy did not start")
        self.port = self._server.sockets[0].getsockname()[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: bool) -> None:
            try:
                while chunk := await src.read(1 << 16):
                    if delay and chunk.startswith(METHODS):
                        self.requests += 1
                        if self.delay_s:
                            await asyncio.sleep(self.delay_s)
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

    def stop(self) -> None:
        """Closes the listener, cancels every connection and ends the thread."""
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
            except Exception:  # noqa: BLE001 - stopping anyway
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
