"""Admission by expected wait: a request that would wait longer than its step's budget is refused when it
arrives, not when the budget has passed (issue 19, item 3).

Counting requests is not enough: 256 queued long texts are minutes of work, 256 short ones a second. So a
preprocess instance measures how fast the model step takes its requests (ServiceRate: tokens per second
while some of them waited, smoothed), and before it tokenises a request divides the tokens queued ahead of
it by that rate (expected_wait). Over the budget (the model step's queue timeout x ``expected_wait_share``)
it refuses at once; the model step's own queue timeout (backend.backpressure.QueueBound) stays as the
backstop for what the estimate got wrong. Measured where the requests wait, the rate holds every cost of
serving them (Triton's hand-over, unpacking, answering), not only the forwards: timed around the forwards
alone, short texts waited twice the budget.

Text and media are measured apart (``KINDS``): a vision token costs the vision tower's work on top of the
language model's, so one rate for both misjudged text after image or video work (a bulk job's images
ahead of live queries): "expected wait 10.2 s" for about a second of text. Each kind's wait is its tokens
ahead over its own rate, and a kind whose rate is not measured yet refuses nothing.

Pure and clock-free: callers pass the times, so the tests need no server, no sleep and no thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The kinds of work measured apart: a request whose rows hold no image or video is text, any other media.
TEXT = "text"
MEDIA = "media"
KINDS = (TEXT, MEDIA)

# Samples before the rate counts: a cold server's first forwards (allocation, warm-up of caches) are slower
# than its steady state, and nothing is refused before a rate is known.
MIN_SAMPLES = 3


# A rate sample of at least this many tokens has the full weight ``smoothing``; a smaller one proportionally
# less. A few tokens that waited long say little about the rate: a 26-token text that waited 0.7 s behind
# another instance's video once took the estimate from ~5,000 to 277 tokens/s, and the next 4,400 tokens
# queued were refused as "expected wait 15.8 s" (they took under a second).
FULL_WEIGHT_TOKENS = 1024


@dataclass
class ServiceRate:
    """Tokens served per second while busy, over the recent work: sums of tokens and of busy seconds that
    decay by ``smoothing`` per sample of FULL_WEIGHT_TOKENS or more (a smaller sample decays them less), so
    that the rate is tokens over time across about the last FULL_WEIGHT_TOKENS / smoothing tokens, not an
    average of ratios that a tiny sample could skew.

    A sample is some tokens served over a busy spell. Spells that overlap count their common time once (a
    sample counts from its start or from the previous sample's end, whichever is later); idle time is no
    sample's, so an idle server keeps the rate it had."""

    smoothing: float = 0.2
    tokens: float = 0.0
    seconds: float = 0.0
    samples: int = 0
    _last_finished: float = float("-inf")

    def done(self, tokens: int, started: float, finished: float) -> None:
        """``tokens`` were served from ``started`` to ``finished`` (seconds, any one clock)."""
        busy = max(0.0, finished - max(started, self._last_finished))
        self._last_finished = max(self._last_finished, finished)
        keep = 1.0 - self.smoothing * min(1.0, max(0, tokens) / FULL_WEIGHT_TOKENS)
        self.tokens = keep * self.tokens + tokens
        self.seconds = keep * self.seconds + busy
        self.samples += 1

    def per_second(self) -> float | None:
        """Tokens per second, or None while too little has been measured (admit everything then)."""
        if self.samples < MIN_SAMPLES or self.seconds <= 0.0 or self.tokens <= 0.0:
            return None
        return self.tokens / self.seconds


def expected_wait(tokens_ahead: float, tokens_per_second: float | None) -> float | None:
    """Seconds until the work queued ahead is done at the measured rate; None when no rate is known."""
    if tokens_per_second is None or tokens_per_second <= 0.0:
        return None
    return max(0.0, tokens_ahead) / tokens_per_second


def _seconds_by_kind(
    tokens_by_kind: Mapping[str, float], rates: Mapping[str, ServiceRate]
) -> dict[str, float] | None:
    """Each kind's tokens at that kind's rate, in seconds (kinds without tokens left out); None when some kind
    has tokens and no rate yet."""
    seconds: dict[str, float] = {}
    for kind, tokens in tokens_by_kind.items():
        if tokens <= 0:
            continue
        wait = expected_wait(tokens, rates[kind].per_second())
        if wait is None:
            return None
        seconds[kind] = wait
    return seconds


def expected_wait_of(tokens_ahead: Mapping[str, float], rates: Mapping[str, ServiceRate]) -> float | None:
    """Seconds until the work queued ahead is done, each kind's tokens at that kind's rate; None when some
    kind has tokens ahead and no rate yet."""
    seconds = _seconds_by_kind(tokens_ahead, rates)
    return None if seconds is None else sum(seconds.values())


def split_spell(
    drained: Mapping[str, int], rates: Mapping[str, ServiceRate], seconds: float
) -> dict[str, float] | None:
    """The seconds of a spell, per kind answered in it: all of them for one kind; for several, shared in
    proportion to what each kind's tokens cost at its rate, None when one of them has no rate yet (the
    spell teaches nothing)."""
    kinds = [kind for kind, tokens in drained.items() if tokens > 0]
    if len(kinds) == 1:
        return {kinds[0]: seconds}
    costs = _seconds_by_kind(drained, rates)
    total = 0.0 if costs is None else sum(costs.values())
    if costs is None or total <= 0.0:
        return None
    return {kind: seconds * cost / total for kind, cost in costs.items()}
