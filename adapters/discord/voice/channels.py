"""`/join` and `/leave`, and the bot leaving voice channels by itself.

One voice conversation per server (Discord allows a bot one voice connection per guild). The
bot leaves a channel when `/leave` says so, `discord.voice_empty_leave_s` after the last person
left it, after `discord.voice_idle_leave_s` with nobody speaking, when it is disconnected for
good, and at shutdown (within `LEAVE_TIMEOUT_S`, so `parley` keeps its shutdown budget).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import discord
from discord.channel import VocalGuildChannel

from adapters.discord.targets import NOTICE_MENTIONS
from adapters.discord.voice.conversation import (
    TRANSCRIBE_PAUSE_MS,
    VoiceConversation,
    VoiceTurnDeps,
)
from adapters.discord.voice.opus import OpusUnavailable
from adapters.discord.voice.session import VoiceOptions, VoiceSession
from adapters.discord.voice.vad import SegmenterOptions
from bot.channel_config import chat_language
from bot.messages import Msg, say
from bot.types import IncomingMessage

if TYPE_CHECKING:
    from adapters.discord.config import DiscordSettings
    from adapters.discord.rules import AccessRules
    from adapters.discord.voice.conversation import Reply
    from bot.engine import ConversationEngine
    from bot.types import TargetLimits

log = logging.getLogger(__name__)

LEAVE_TIMEOUT_S = 1.0  # one leave at shutdown (parley's whole shutdown has 5 s, bot.cli)
IDLE_CHECK_MAX_S = 30.0  # how often, at most, a conversation's idleness is looked at
_CHANNEL_MENTION = re.compile(r"^<#(\d+)>$")

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class VoiceChannels:
    """The bot's voice conversations, one per server; handlers of /join and /leave."""

    def __init__(
        self,
        *,
        client: discord.Client,
        cfg: DiscordSettings,
        engine: ConversationEngine,
        access: AccessRules,
        language: Callable[[str], Coroutine[Any, Any, str]],
        reply_target: Reply,
        limits: TargetLimits,
        spawn: Spawn,
    ) -> None:
        self._client = client
        self._cfg = cfg
        self._engine = engine
        self._access = access
        self._language = language
        self._reply_target = reply_target
        self._limits = limits
        self._spawn = spawn
        self._calls: dict[int, VoiceConversation] = {}  # guild id -> conversation
        self._locks: dict[int, asyncio.Lock] = {}
        self._empty_timers: dict[int, asyncio.Task[None]] = {}
        self._stopping = False

    def conversation(self, guild_id: int) -> VoiceConversation | None:
        """The conversation in `guild_id`'s voice channel, if the bot is in one."""
        return self._calls.get(guild_id)

    # -- commands (bot.commands handlers: msg, the store's channel id, the arguments) ------

    async def join(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/join [channel]: the caller's voice channel, or the one named."""
        if self._stopping:
            return say(Msg.VOICE_STOPPING, lang=msg.language)
        engine = self._engine
        if engine.transcriber is None or engine.synthesizer is None:
            return say(Msg.VOICE_NO_SPEECH, lang=msg.language)
        text_channel = self._client.get_channel(int(msg.channel_key))
        guild = getattr(text_channel, "guild", None)
        if text_channel is None or not isinstance(guild, discord.Guild):
            return say(Msg.VOICE_NOT_IN_SERVER, lang=msg.language)
        if args:
            voice = _named_channel(guild, args)
            if voice is None:
                return say(Msg.VOICE_NO_SUCH_CHANNEL, lang=msg.language, name=args)
        else:
            voice = _callers_channel(guild, int(msg.user_id))
            if voice is None:
                return say(Msg.VOICE_WHICH_CHANNEL, lang=msg.language)
        if self._cfg.voice_channels and voice.id not in self._cfg.voice_channels:
            return say(Msg.VOICE_NOT_ALLOWED, lang=msg.language, channel=voice.mention)
        permissions = voice.permissions_for(guild.me)
        if not (permissions.connect and permissions.speak):
            return say(Msg.VOICE_NO_PERMISSION, lang=msg.language, channel=voice.mention)
        assert isinstance(text_channel, discord.abc.Messageable)
        async with self._locks.setdefault(guild.id, asyncio.Lock()):
            current = self._calls.get(guild.id)
            if current is not None and current.voice_channel.id == voice.id:
                current.relink(text_channel, text_channel.id)
                return say(Msg.VOICE_ALREADY, lang=msg.language, channel=voice.mention)
            if current is not None:
                await self._leave(guild.id, "moved")
            try:
                await self._start(guild, voice, text_channel)
            except (TimeoutError, discord.ClientException, OpusUnavailable) as exc:
                log.warning("voice: could not join %s: %s", voice, exc)
                return say(Msg.VOICE_JOIN_FAILED, lang=msg.language, channel=voice.mention)
        wake = ""
        if self._cfg.voice_listen == "wake_word":
            wake = say(
                Msg.VOICE_WAKE, lang=msg.language, name=self._engine.settings.engine.bot_name
            )
        joined = Msg.VOICE_JOINED if self._cfg.voice_mirror_text else Msg.VOICE_JOINED_SILENT
        return say(joined, lang=msg.language, channel=voice.mention, wake=wake)

    async def leave(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/leave: out of this server's voice channel."""
        text_channel = self._client.get_channel(int(msg.channel_key))
        guild = getattr(text_channel, "guild", None)
        call = self._calls.get(guild.id) if isinstance(guild, discord.Guild) else None
        if call is None or guild is None:
            return say(Msg.VOICE_NOT_IN_VOICE, lang=msg.language)
        channel = call.voice_channel
        await self._leave(guild.id, "asked")
        return say(
            Msg.VOICE_LEFT,
            lang=msg.language,
            channel=getattr(channel, "mention", say(Msg.VOICE_CHANNEL, lang=msg.language)),
        )

    # -- voice states (the gateway's VOICE_STATE_UPDATE, through discord.py) --------------

    def on_voice_state(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """Someone joined, left or moved: leave a channel nobody is left in."""
        call = self._calls.get(member.guild.id)
        if call is None:
            return
        guild_id = member.guild.id
        if _humans_in(call) == 0:
            if guild_id not in self._empty_timers:
                self._empty_timers[guild_id] = asyncio.create_task(self._leave_when_empty(call))
        else:
            timer = self._empty_timers.pop(guild_id, None)
            if timer is not None:
                timer.cancel()

    async def _leave_when_empty(self, call: VoiceConversation) -> None:
        guild_id = call.guild.id
        try:
            await asyncio.sleep(self._cfg.voice_empty_leave_s)
        except asyncio.CancelledError:
            return
        self._empty_timers.pop(guild_id, None)
        if self._calls.get(guild_id) is call and _humans_in(call) == 0:
            log.info("voice: nobody left in %s: leaving", call.voice_channel)
            await self._leave(guild_id, "empty")

    # -- lifetime --------------------------------------------------------------------------

    async def close(self) -> None:
        """Shutdown: leave every voice channel (each within LEAVE_TIMEOUT_S)."""
        self._stopping = True
        await asyncio.gather(*(self._leave(g, "shutdown") for g in list(self._calls)))

    async def _start(
        self,
        guild: discord.Guild,
        voice: VocalGuildChannel,
        text_channel: discord.abc.Messageable,
    ) -> None:
        cfg, engine = self._cfg, self._engine
        assert engine.transcriber is not None
        short = cfg.voice_early_pause_ms
        early = short < cfg.voice_pause_ms
        options = VoiceOptions(
            # Short pauses are reported so Whisper (and an early answer) can start before the
            # pause has ended the turn.
            segmenter=SegmenterOptions(
                min_silence_ms=cfg.voice_pause_ms,
                pause_reports_ms=tuple(sorted({min(TRANSCRIBE_PAUSE_MS, short), short}))
                if early
                else (),
            ),
            barge_in=cfg.voice_barge_in,
        )
        # The models load now (in threads), not at the first utterance.
        warm = [engine.transcriber.warm_up()]
        if engine.synthesizer is not None:
            warm.append(engine.synthesizer.warm_up())
        session, *_ = await asyncio.gather(VoiceSession.join(voice, options), *warm)
        assert isinstance(session, VoiceSession)
        deps = VoiceTurnDeps(
            handle=engine.handle,
            transcriber=engine.transcriber,
            language=self._language,
            reply_target=self._reply_target,
            access=self._access,
            bot_name=engine.settings.engine.bot_name,
            limits=self._limits,
            wake_word=cfg.voice_listen == "wake_word",
            barge_in=cfg.voice_barge_in,
            mirror_text=cfg.voice_mirror_text,
            early_pause_ms=short if cfg.voice_early_answer and early else None,
            warm=engine.warm,
        )
        call = VoiceConversation(
            session,
            guild=guild,
            text_channel=text_channel,
            text_channel_id=getattr(text_channel, "id", 0),
            deps=deps,
        )
        self._calls[guild.id] = call
        log.info("voice: joined %s (linked to text channel %s)", voice, call.text_channel_id)
        self._spawn(self._converse(call))
        if _humans_in(call) == 0:
            self._empty_timers[guild.id] = asyncio.create_task(self._leave_when_empty(call))

    async def _converse(self, call: VoiceConversation) -> None:
        """Run one conversation to its end, watching it for idleness; say why it ended."""
        idle = asyncio.create_task(self._leave_when_idle(call))
        try:
            await call.run()
        finally:
            idle.cancel()
            guild_id = call.guild.id
            if self._calls.get(guild_id) is call:
                del self._calls[guild_id]
            timer = self._empty_timers.pop(guild_id, None)
            if timer is not None:
                timer.cancel()
        reason = call.left_because or "disconnected"
        goodbye = {
            "empty": Msg.VOICE_LEFT_EMPTY,
            "idle": Msg.VOICE_LEFT_IDLE,
            "disconnected": Msg.VOICE_DISCONNECTED,
        }.get(reason)
        if goodbye is not None and not self._stopping:
            lang = await chat_language(
                self._engine.store,
                self._engine.settings,
                self._cfg.NAME,
                str(call.text_channel_id),
                call.guild.preferred_locale.value,
            )
            channel = getattr(call.voice_channel, "mention", say(Msg.VOICE_CHANNEL, lang=lang))
            with contextlib.suppress(discord.HTTPException):
                await call.text_channel.send(
                    say(goodbye, lang=lang, channel=channel), allowed_mentions=NOTICE_MENTIONS
                )

    async def _leave_when_idle(self, call: VoiceConversation) -> None:
        limit = self._cfg.voice_idle_leave_s
        if not limit:
            return
        while True:
            quiet = call.quiet_s
            if quiet >= limit and not call.answering:
                log.info("voice: nobody spoke in %s for %g s: leaving", call.voice_channel, limit)
                await self._leave(call.guild.id, "idle")
                return
            await asyncio.sleep(min(max(limit - quiet, 0.05), IDLE_CHECK_MAX_S))

    async def _leave(self, guild_id: int, reason: str) -> None:
        call = self._calls.pop(guild_id, None)
        if call is None:
            return
        call.left_because = reason
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await call.leave()
        except TimeoutError:
            # The gateway is gone, say: stop listening anyway (the client's close disconnects).
            log.warning("voice: leaving %s took too long; dropped", call.voice_channel)
            call.session.on_closed()


def _callers_channel(guild: discord.Guild, user_id: int) -> VocalGuildChannel | None:
    """The voice channel `user_id` is in, from the gateway's voice states."""
    for channel in (*guild.voice_channels, *guild.stage_channels):
        if user_id in channel.voice_states:
            return channel
    return None


def _named_channel(guild: discord.Guild, name: str) -> VocalGuildChannel | None:
    """A voice channel by id, mention (<#id>) or name (case ignored)."""
    wanted = name.strip()
    mention = _CHANNEL_MENTION.match(wanted)
    if mention:
        wanted = mention[1]
    channels = (*guild.voice_channels, *guild.stage_channels)
    if wanted.isdigit():
        return next((c for c in channels if c.id == int(wanted)), None)
    folded = wanted.lstrip("#").casefold()
    return next((c for c in channels if c.name.casefold() == folded), None)


def _humans_in(call: VoiceConversation) -> int:
    """People (not bots, not us) in the call's channel, from the gateway's voice states."""
    channel = call.voice_channel
    states = getattr(channel, "voice_states", {})
    me = call.guild.me.id if call.guild.me is not None else None
    count = 0
    for user_id in states:
        member = call.guild.get_member(user_id)
        if user_id != me and not (member is not None and member.bot):
            count += 1
    return count
