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
    gateway_url: str = "wss://gateway.discord.gg/"
    message_content: bool = True  # privileged intent: chat by mention/DM needs it
    guild_ids: list[int] = Field(
        default_factory=list
    )  # instant per-guild command sync; empty: global sync
    admin_ids: list[int] = Field(default_factory=list)
    admin_role_ids: list[int] = Field(default_factory=list)
    allowed_user_ids: list[int] = Field(default_factory=list)
    allowed_channel_ids: list[int] = Field(default_factory=list)
    max_message_chars: int = Field(MAX_MESSAGE_CHARS, ge=16)
    channel_edits: float = Field(CHANNEL_EDITS, gt=0)  # edits per `channel_window_s`, a channel
    channel_window_s: float = Field(CHANNEL_WINDOW_S, gt=0)
    global_rate: float = Field(GLOBAL_RATE, gt=0)  # requests per second for the whole bot
    # Sharding across processes (discord.py's AutoShardedClient): Discord sends each guild's
    # events to shard (guild_id >> 22) % shard_count, DMs to shard 0. 0: one unsharded session.
    shard_count: int = Field(0, ge=0, le=4096)
    # The shards this process runs (each of 0..shard_count-1 in exactly one process); empty: all.
    shard_ids: list[int] = Field(default_factory=list)
    # Voice channels (/join, /leave; README "Voice channels").
    voice_channels: list[int] = Field(default_factory=list)  # /join may enter these; empty: any
    voice_listen: Literal["free", "wake_word"] = "free"  # wake_word: only "<bot name>, ..."
    voice_barge_in: bool = True  # someone speaking stops the bot's speech
    voice_mirror_text: bool = True  # both sides' words also in the text channel /join came from
    # A pause this long ends an utterance: the speaker's turn is over. 500 ms, as OpenAI's
    # realtime API's server VAD (`silence_duration_ms`); most of the answer's latency.
    voice_pause_ms: int = Field(500, ge=200, le=3000)
    voice_empty_leave_s: float = Field(10.0, ge=0)  # leave once nobody else is there this long
    voice_idle_leave_s: float = Field(900.0, ge=0)  # leave after this long unspoken to; 0: never

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
