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
# The LLM side: replies generating now against what the servers take, per backend.
LLM_SLOTS_IN_USE = Gauge("parley_llm_slots_in_use", "Replies generating now (holding an LLM slot)")
LLM_SLOTS_TOTAL = Gauge("parley_llm_slots", "Replies the LLM servers generate at once")
LLM_BACKEND_SLOTS = Gauge("parley_llm_backend_slots", "Slots of one LLM server", ["backend"])
LLM_BACKEND_IN_FLIGHT = Gauge(
    "parley_llm_backend_in_flight", "Our requests one LLM server holds now", ["backend"]
)
LLM_BACKEND_HEALTHY = Gauge(
    "parley_llm_backend_healthy", "1 while an LLM server answers", ["backend"]
)
LLM_SLOT_AFFINITY = Counter(
    "parley_llm_slot_affinity_total",
    "Replies by where they landed: hit (the slot caching the chat's prompt), moved, new",
    ["result"],
)
ANSWER_CACHE = Counter(
    "parley_answer_cache_total", "Answer cache look-ups, by result: hit or miss", ["result"]
)
LLM_PROMPT_TOKENS = Counter(
    "parley_llm_prompt_tokens_total",
    "Prompt tokens by llama.cpp's timings: cached (reused from the slot) or processed",
    ["kind"],
)
