"""The `[discord]` settings section (environment: `PARLEY_DISCORD__<KEY>`)."""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, model_validator

from adapters.discord.limits import CHANNEL_EDITS, CHANNEL_WINDOW_S, GLOBAL_RATE, MAX_MESSAGE_CHARS
from bot.config import PlatformSettings


class DiscordSettings(PlatformSettings):
    """A Discord bot: its token, endpoints, intents, who may use it, and its rate limits."""

    NAME: ClassVar[str] = "discord"

    api_base_url: str = "https://discord.com/api/v10"
    """The REST API's base, for API proxies."""
    gateway_url: str = "wss://gateway.discord.gg/"
    """The gateway, for gateway proxies."""
    message_content: bool = True
    """The privileged Message Content intent, needed to chat by mention and in DMs."""
    guild_ids: list[int] = Field(default_factory=list)
    """Sync slash commands to these servers at once; empty: global sync (up to an hour)."""
    admin_ids: list[int] = Field(default_factory=list)
    """Users allowed to change settings (`/config set`), besides those with Manage Server."""
    admin_role_ids: list[int] = Field(default_factory=list)
    """Roles allowed to change settings."""
    allowed_user_ids: list[int] = Field(default_factory=list)
    """Users who may talk to the bot; empty: everyone (admins always may)."""
    allowed_channel_ids: list[int] = Field(default_factory=list)
    """Channels the bot answers in; empty: every channel."""
    max_message_chars: int = Field(MAX_MESSAGE_CHARS, ge=16)
    """Characters per message (Discord's limit)."""
    channel_edits: float = Field(CHANNEL_EDITS, gt=0)
    """Edits per `channel_window_s` in one channel."""
    channel_window_s: float = Field(CHANNEL_WINDOW_S, gt=0)
    """The window `channel_edits` counts over, in seconds."""
    global_rate: float = Field(GLOBAL_RATE, gt=0)
    """Requests per second for the whole bot (all its processes)."""
    shard_count: int = Field(0, ge=0, le=4096)
    """Shards across every process (discord.py's AutoShardedClient): Discord sends each server's
    events to shard `(guild_id >> 22) % shard_count`, DMs to shard 0. 0: one unsharded session."""
    shard_ids: list[int] = Field(default_factory=list)
    """The shards this process runs (each of 0..shard_count-1 in exactly one process); empty: all
    (docs/scaling-out.md)."""
    voice_channels: list[int] = Field(default_factory=list)
    """Voice channel ids `/join` may enter; empty: any (docs/voice-channels.md)."""
    voice_listen: Literal["free", "wake_word"] = "free"
    """In a voice channel, "free": answer everything said; "wake_word": only what starts with the
    bot's name."""
    voice_barge_in: bool = True
    """Someone starting to speak stops the bot's speech."""
    voice_mirror_text: bool = True
    """Write both sides' words in the text channel `/join` was run in."""
    # 500 ms, as OpenAI's realtime API's server VAD (`silence_duration_ms`).
    voice_pause_ms: int = Field(500, ge=200, le=3000)
    """A pause this long ends an utterance: the speaker's turn is over (most of the answer's
    latency; lower: quicker answers, more sentences cut in two)."""
    voice_early_answer: bool = True
    """Start answering at the first short pause (`voice_early_pause_ms`) instead of at
    `voice_pause_ms`: the answer is heard once the pause reaches `voice_pause_ms`, or at once if
    the words so far are a whole sentence or question; if the speaker goes on, it is dropped
    unheard (or cut off as in a barge-in) and the whole utterance is answered. About 0.3 s
    quicker; costs the CPU of each dropped guess (Whisper, the LLM, speech), and an answer may
    start before you finish."""
    voice_early_pause_ms: int = Field(150, ge=100, le=3000)
    """The short pause at which, with `voice_early_answer`, what was said so far is answered
    (Whisper starts on it a little sooner); used when shorter than `voice_pause_ms`. Lower:
    earlier answers, more of them dropped when people pause mid-sentence."""
    voice_empty_leave_s: float = Field(10.0, ge=0)
    """Leave the voice channel this long after the last person left it."""
    voice_idle_leave_s: float = Field(900.0, ge=0)
    """Leave after this long with nobody speaking; 0: never."""

    @model_validator(mode="after")
    def _shards(self) -> Self:
        if self.shard_ids and not self.shard_count:
            raise ValueError("shard_ids needs shard_count (the total across every process)")
        wrong = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
        if wrong:
            raise ValueError(f"shard_ids must lie in 0..{self.shard_count - 1}, not {wrong}")
        if len(set(self.shard_ids)) != len(self.shard_ids):
            raise ValueError("shard_ids lists a shard twice")
        return self
