"""Prometheus metrics (served on /metrics when [http] is enabled)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_IN = Counter("parley_messages_in_total", "Messages received", ["platform", "kind"])
REPLIES = Counter("parley_replies_total", "Replies finished, by status", ["platform", "status"])
TOKENS_OUT = Counter("parley_tokens_out_total", "Streamed reply pieces (about one per token)")
TIME_TO_FIRST_TOKEN = Histogram(
    "parley_time_to_first_token_seconds",
    "From the LLM request to the first answer token",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
PLATFORM_CALLS = Counter(
    "parley_platform_calls_total", "Send/edit/delete calls to platforms", ["platform", "method"]
)
RATE_LIMITED = Counter("parley_rate_limited_total", "Platform 429 answers", ["platform"])
STT_SECONDS = Histogram("parley_stt_seconds", "Voice note transcription time")
TTS_SECONDS = Histogram("parley_tts_seconds", "Speech synthesis time")
QUEUE_DEPTH = Gauge("parley_queue_depth", "Replies waiting for their turn")
