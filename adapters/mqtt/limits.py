"""What the MQTT bridge keeps under. MQTT itself sets no rate, so the budgets are Parley's choice.

A device reads a reply as it streams: a few delta events a second show it growing without
flooding a small device's queue (a microcontroller reading at its own pace) or the broker. The
reply streamer coalesces the text that arrives between two events (bot/delivery/stream.py).
"""

from __future__ import annotations

from bot.types import RateBudget, TargetLimits

PLATFORM_KEY = "mqtt"
# One session's events: at most 4 a second, and a short reply's first delta and its done go out
# back to back (a burst of 2).
SESSION_EVENTS_PER_SECOND = 4.0
SESSION_BURST = 2.0
# Every session's events together: far below what a broker carries (mosquitto: tens of thousands
# a second), high enough that 50 sessions streaming at once each keep their own rate.
BROKER_EVENTS_PER_SECOND = 200.0
BROKER_BURST = 50.0
# A reply is one stream of deltas, never split into parts: the engine caps a reply far below this
# (engine.max_reply_chars, 20,000 by default).
MAX_REPLY_CHARS = 1_000_000
# A request larger than this is refused unread (the engine's own input limit, max_input_chars,
# is 4,000 characters by default: at most a few times as many bytes, even as escaped JSON).
MAX_PAYLOAD_BYTES = 256 * 1024
# MQTT topics are at most 65,535 bytes (MQTT 5.0, 1.5.4); Parley's own are far shorter.
MAX_TOPIC_BYTES = 65_535
MAX_TOPIC_LEVELS_CHARS = 200  # mqtt.topic_prefix
MAX_SESSION_CHARS = 64  # a session id: one topic level, and the chat's key in the store
MAX_USER_CHARS = 64  # the "user" of a JSON request
# How long an event waits for the broker connection to come back before it counts as undelivered
# (the reply streamer then retries an interim delta, or gives up on the reply).
PUBLISH_WAIT_S = 10.0

LIMITS = TargetLimits(
    max_chars=MAX_REPLY_CHARS,
    chat=RateBudget(rate=SESSION_EVENTS_PER_SECOND, burst=SESSION_BURST),
    platform=RateBudget(rate=BROKER_EVENTS_PER_SECOND, burst=BROKER_BURST),
    platform_key=PLATFORM_KEY,
)
