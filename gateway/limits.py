"""Per-field limits on a parsed body, checked before schema validation builds anything from it: entries
per list, token ids per item, characters per text, nesting. Each refusal is a 400 naming where
(``messages[0][1].content[2].text has 2000000 characters, over the limit of 1048576``).

Lists of token ids are measured, never walked: their cost is their length."""

from __future__ import annotations

from typing import Any

from gateway.errors import invalid
from gateway.settings import GatewaySettings

# Deeper than any request schema goes (a conversation list: body, messages, conversation, message,
# content, part, image_url, url = 8).
MAX_DEPTH = 16
# Strings that are media references: their limits are the media's (gateway/media.py).
_MEDIA_KEYS = frozenset({"url", "image_url", "video_url"})


def check_limits(body: dict[str, Any], settings: GatewaySettings) -> None:
    """Refuse ``body`` (a parsed JSON object) if any field is over its limit."""
    for key, value in body.items():
        _check(value, str(key), str(key), key in _MEDIA_KEYS, 1, settings)


def _check(value: Any, where: str, field: str, media: bool, depth: int, settings: GatewaySettings) -> None:
    if depth > MAX_DEPTH:
        raise invalid("request nested too deeply", param=field)
    if isinstance(value, str):
        if not media and len(value) > settings.max_text_chars:
            raise invalid(
                f"{where} has {len(value)} characters, over the limit of {settings.max_text_chars}",
                param=field,
            )
    elif isinstance(value, list):
        if value and type(value[0]) is int:
            if len(value) > settings.max_token_ids:
                raise invalid(
                    f"{where} has {len(value)} token ids, over the limit of {settings.max_token_ids}",
                    param=field,
                )
            # All of them: a mixed list would give the schema one error per entry (millions).
            if not all(type(entry) is int for entry in value):
                raise invalid(f"{where} mixes token ids with other values: token ids are integers", field)
            return
        if len(value) > settings.max_items:
            raise invalid(f"{where} has {len(value)} entries, over the limit of {settings.max_items}", field)
        for index, entry in enumerate(value):
            _check(entry, f"{where}[{index}]", field, media, depth + 1, settings)
    elif isinstance(value, dict):
        for key, entry in value.items():
            _check(entry, f"{where}.{key}", field, media or key in _MEDIA_KEYS, depth + 1, settings)
