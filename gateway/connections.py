"""Connections that never finish their request headers: uvicorn times out an idle keep-alive connection,
but not one that opens and then sends nothing, or trickles a header byte at a time (each byte resets its
keep-alive timer). This protocol closes a connection whose request headers have not all arrived within
GATEWAY_HEADER_TIMEOUT of its opening or of its last response; the body has its own deadline
(gateway/bodies.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0  # set per server by header_deadline_protocol
    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.cycle is None or self.cycle.response_complete:  # no request of this connection running
            self.transport.close()

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def header_deadline_protocol(timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for one server (uvicorn builds one instance per connection)."""
    return type("HeaderDeadline", (HeaderDeadlineProtocol,), {"header_timeout": timeout})
