"""The overview's numbers, read from the same Prometheus registry that /metrics serves.

`MetricsHistory` samples the registry's totals every few seconds and keeps an hour of samples.
Each chart point is the change over the minute up to that sample (replies in that minute, mean
time to first token of the replies in it, ...), as Prometheus' `rate(...[1m])` would show it:
one reply in a five-second sample is not "12 a minute".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

SAMPLE_EVERY_S = 5.0
KEEP_SAMPLES = 720  # an hour at SAMPLE_EVERY_S
WINDOW_S = 60.0  # each point covers the minute before it

# The metric families of bot/metrics.py the overview reads (sample names as exposed).
REPLIES = "parley_replies_total"
MESSAGES_IN = "parley_messages_in_total"
TOKENS_OUT = "parley_tokens_out_total"
RATE_LIMITED = "parley_rate_limited_total"
QUEUE_DEPTH = "parley_queue_depth"
TTFT = "parley_time_to_first_token_seconds"
STT = "parley_stt_seconds"
TTS = "parley_tts_seconds"
ANSWER_CACHE = "parley_answer_cache_total"
_WANTED = {
    REPLIES,
    MESSAGES_IN,
    TOKENS_OUT,
    RATE_LIMITED,
    QUEUE_DEPTH,
    ANSWER_CACHE,
    *(f"{name}_{part}" for name in (TTFT, STT, TTS) for part in ("sum", "count")),
}


@dataclass(frozen=True, slots=True)
class Totals:
    """The registry's values at one moment, summed over labels."""

    at: float
    values: dict[str, float]
    replies_by_status: dict[str, float]
    cache_by_result: dict[str, float]  # answer cache look-ups: "hit", "miss"

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)


def read_totals(registry: CollectorRegistry, *, now: float | None = None) -> Totals:
    """Sum every sample the overview uses across its labels (blocking but quick)."""
    values: dict[str, float] = {}
    by_status: dict[str, float] = {}
    by_result: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name not in _WANTED:
                continue
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
            if sample.name == REPLIES:
                status = sample.labels.get("status", "")
                by_status[status] = by_status.get(status, 0.0) + sample.value
            elif sample.name == ANSWER_CACHE:
                result = sample.labels.get("result", "")
                by_result[result] = by_result.get(result, 0.0) + sample.value
    return Totals(time.time() if now is None else now, values, by_status, by_result)


Point = tuple[float, float | None]  # (unix time, value or None when nothing happened)


@dataclass(frozen=True, slots=True)
class Series:
    """One chart: its points, a title and a unit."""

    key: str
    title: str
    unit: str
    points: list[Point]


def _per_minute(name: str) -> Callable[[Totals, Totals], float | None]:
    def rate(a: Totals, b: Totals) -> float | None:
        span = b.at - a.at
        return max(0.0, b.get(name) - a.get(name)) * 60.0 / span if span > 0 else None

    return rate


def _mean(name: str) -> Callable[[Totals, Totals], float | None]:
    def mean(a: Totals, b: Totals) -> float | None:
        count = b.get(f"{name}_count") - a.get(f"{name}_count")
        return (b.get(f"{name}_sum") - a.get(f"{name}_sum")) / count if count > 0 else None

    return mean


CHARTS: tuple[tuple[str, str, str, Callable[[Totals, Totals], float | None]], ...] = (
    ("replies", "Replies a minute", "/min", _per_minute(REPLIES)),
    ("ttft", "Time to first token (mean)", "s", _mean(TTFT)),
    ("rate_limited", "Platform 429s a minute", "/min", _per_minute(RATE_LIMITED)),
    ("stt", "Transcription time (mean)", "s", _mean(STT)),
    ("tts", "Speech synthesis time (mean)", "s", _mean(TTS)),
)


class MetricsHistory:
    """Samples the registry on a timer; `series()` turns the samples into chart points."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        every_s: float = SAMPLE_EVERY_S,
        keep: int = KEEP_SAMPLES,
    ) -> None:
        self.registry = registry
        self.every_s = every_s
        self._samples: deque[Totals] = deque(maxlen=keep)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self.sample()
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            self.sample()

    def sample(self) -> Totals:
        totals = read_totals(self.registry)
        self._samples.append(totals)
        return totals

    def latest(self) -> Totals:
        """The registry right now (not a stored sample)."""
        return read_totals(self.registry)

    def series(self) -> list[Series]:
        """One point per sample: the change over the WINDOW_S before it (less at the start)."""
        samples = list(self._samples)
        pairs: list[tuple[Totals, Totals]] = []
        start = 0
        for end in range(1, len(samples)):
            while samples[end].at - samples[start + 1].at >= WINDOW_S:
                start += 1
            pairs.append((samples[start], samples[end]))
        return [
            Series(key, title, unit, [(b.at, fn(a, b)) for a, b in pairs])
            for key, title, unit, fn in CHARTS
        ]
