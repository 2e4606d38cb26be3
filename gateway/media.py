"""Media URLs to bytes: ``data:`` URIs always; ``http(s)`` and ``file:`` only where the settings allow
them, with size and time limits (a gateway that fetches any URL it is given is an SSRF hole)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gateway.errors import invalid
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    import aiohttp  # imported when a URL is first fetched


# Percent-decoding works through the payload in slices of this many bytes: its scratch arrays stay small.
UNQUOTE_SLICE = 4 * 1024 * 1024
_HEX = np.full(256, -1, dtype=np.int16)
for _digit, _char in enumerate(b"0123456789abcdef"):
    _HEX[_char] = _HEX[bytes([_char]).upper()[0]] = _digit


def _decode_base64(payload: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"data URI is not valid base64 ({error})") from None


def _unquote_slice(data: np.ndarray) -> bytes:
    """``%XX`` escapes decoded, anything else kept (what urllib.parse.unquote_to_bytes does), at C speed:
    the stdlib's splits the payload into one object per escape (a 60 MB URI took 5 GB)."""
    marks = np.flatnonzero(data[:-2] == ord("%")) if len(data) > 2 else np.empty(0, np.intp)
    high, low = _HEX[data[marks + 1]], _HEX[data[marks + 2]]
    valid = (high >= 0) & (low >= 0)
    marks, high, low = marks[valid], high[valid], low[valid]
    if not len(marks):
        return data.tobytes()
    out = data.copy()
    out[marks] = (high * 16 + low).astype(np.uint8)
    keep = np.ones(len(data), dtype=bool)
    keep[marks + 1] = keep[marks + 2] = False
    return out[keep].tobytes()


def unquote(payload: bytes) -> bytes:
    data = np.frombuffer(payload, dtype=np.uint8)
    parts, start = [], 0
    while start < len(data):
        end = min(start + UNQUOTE_SLICE, len(data))
        # An escape never straddles two slices: a '%' in the last two bytes starts the next one.
        tail = payload.rfind(b"%", max(start, end - 2), end)
        if end < len(data) and tail >= 0:
            end = tail if tail > start else end
        parts.append(_unquote_slice(data[start:end]))
        start = end
    return b"".join(parts)


def _decode_percent(payload: str, limit: int) -> bytes:
    encoded = payload.encode()
    # Each escape turns three bytes into one: the decoded size is at least this.
    at_least = len(encoded) - 2 * encoded.count(b"%")
    if at_least > limit:
        raise ValueError(f"data URI decodes to over {limit} bytes, the media limit")
    return unquote(encoded)


async def decode_data_uri(uri: str, settings: GatewaySettings) -> bytes:
    """``data:[<type>][;base64],<payload>``; its decoded size is checked before decoding, and big payloads
    are decoded in a worker thread."""
    header, comma, payload = uri[len("data:") :].partition(",")
    if not comma:
        raise ValueError("data URI has no ',' before its payload")
    limit = settings.media_max_bytes
    big = len(payload) > settings.offload_bytes
    if not header.endswith(";base64"):
        if big:
            return await asyncio.to_thread(_decode_percent, payload, limit)
        return _decode_percent(payload, limit)
    if len(payload) // 4 * 3 - 2 > limit:
        raise ValueError(
            f"data URI of {len(payload)} base64 characters decodes to over {limit} bytes, the media limit"
        )
    if big:
        return await asyncio.to_thread(_decode_base64, payload)
    return _decode_base64(payload)


class MediaFetcher:
    """Resolves the URLs of one gateway; holds its HTTP session (opened on first use, in the loop)."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, where: str) -> bytes:
        """The bytes ``url`` names; any problem is a 400 naming ``where`` (``messages[0][1].content[2]``)."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        try:
            if scheme == "data":
                data = await decode_data_uri(url, self.settings)
            elif scheme in ("http", "https"):
                data = await self._fetch_http(url)
            elif scheme == "file":
                data = await asyncio.to_thread(self._read_file, url)
            else:
                raise ValueError("media URLs must be data:, http(s): or file: URIs")
        except ValueError as error:
            raise invalid(f"{where}: {error}", param=where.split("[", 1)[0]) from None
        if not data:
            raise invalid(f"{where}: the media is empty", param=where.split("[", 1)[0])
        if len(data) > self.settings.media_max_bytes:
            raise invalid(
                f"{where}: media of {len(data)} bytes is over the limit of {self.settings.media_max_bytes}",
                param=where.split("[", 1)[0],
            )
        return data

    async def _fetch_http(self, url: str) -> bytes:
        if not self.settings.allow_url_fetch:
            raise ValueError(
                "fetching http(s) URLs is disabled on this server (GATEWAY_ALLOW_URL_FETCH); send a data: URI"
            )
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        limit = self.settings.media_max_bytes
        timeout = aiohttp.ClientTimeout(total=self.settings.media_fetch_timeout)
        try:
            # No redirects: a redirect could lead anywhere, including to addresses the caller cannot reach.
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise ValueError(f"fetching {url} answered HTTP {response.status}")
                if response.content_length is not None and response.content_length > limit:
                    raise ValueError(f"{url} is {response.content_length} bytes, over the limit of {limit}")
                chunks, size = [], 0
                async for chunk in response.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise ValueError(f"{url} is over the limit of {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise ValueError(f"cannot fetch {url}: {type(error).__name__} {error}".rstrip()) from None

    def _read_file(self, url: str) -> bytes:
        root = self.settings.allowed_local_media_path
        if not root:
            raise ValueError("file: URLs are disabled on this server (GATEWAY_ALLOWED_LOCAL_MEDIA_PATH)")
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError("file: URLs must name a local path")
        path = Path(urllib.parse.unquote(parsed.path)).resolve()
        allowed = Path(root).resolve()
        if not path.is_relative_to(allowed):
            raise ValueError(f"{path} is outside the allowed media directory")
        try:
            size = path.stat().st_size
            if size > self.settings.media_max_bytes:
                raise ValueError(f"{path} is {size} bytes, over the limit of {self.settings.media_max_bytes}")
            return path.read_bytes()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
