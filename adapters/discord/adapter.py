"""Parley on Discord (discord.py 2.x): gateway messages and slash commands in, streamed replies out.

Chat: in DMs every message is a turn; in servers a message that mentions the bot (or its role)
or replies to one of its messages. History is per channel, and a thread is its own channel.

Redirection: `start()` points discord.py's REST and gateway at `discord.api_base_url` and
`discord.gateway_url` for the whole process (adapters/discord/compat.py: no per-client option)
and `stop()` restores them: one Discord adapter per process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands

import adapters.discord.sharding as sharding
from adapters.discord.commands import CatalogTranslator, build_command_tree
from adapters.discord.compat import redirect_endpoints, require_libraries, skip_unreadable_events
from adapters.discord.config import DiscordSettings
from adapters.discord.rest import DiscordRest
from adapters.discord.rules import (
    AccessRules,
    content_type,
    is_background,
    is_turn,
    kind_of,
    readable_text,
)
from adapters.discord.targets import (
    NOTICE_MENTIONS,
    ChannelTarget,
    Clock,
    InteractionTarget,
    channel_limits,
    rewrite_message,
)
from adapters.discord.voice.channels import VoiceChannels
from bot.command_table import CommandReply
from bot.errors import ConfigError, DeliveryError, RetryAfter
from bot.languages import speech_language, turn_language
from bot.messages import Msg, say
from bot.platform import NOTICE_GRACE_S, STOP_GRACE_S
from bot.repair import InterruptedReplies
from bot.storage.reply_parts import OpenPart
from bot.types import Attachment, IncomingMessage, TargetLimits
from bot.update_tasks import UpdateTasks

if TYPE_CHECKING:
    from bot.platform import Services

log = logging.getLogger(__name__)

PLATFORM = "discord"
GUILD_READY_TIMEOUT_S = 2.0  # discord.py's default quiet time after the last GUILD_CREATE
DEVELOPER_PORTAL = "https://discord.com/developers/applications"
MSG_INTENT_REFUSED = (
    "discord.message_content: Discord refused the Message Content intent (gateway close 4014). "
    "Turn on 'Message Content Intent' under Bot > Privileged Gateway Intents for this "
    f"application in the Discord Developer Portal ({DEVELOPER_PORTAL}), or set "
    "discord.message_content = false: the bot then only sees DMs and messages that mention it."
)
MSG_TOKEN_REFUSED = (
    "discord.token: Discord rejected the bot token (401 Unauthorized). Copy it again from "
    f"Bot > Token in the Discord Developer Portal ({DEVELOPER_PORTAL})."
)


class _Client(discord.Client):
    """discord.py's client with Parley's message handler."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        super().__init__(**options)
        self._adapter = adapter
        skip_unreadable_events(self)  # one malformed event would keep the bot offline

    async def on_message(self, message: discord.Message) -> None:
        self._adapter.on_message(message)

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        self._adapter.on_voice_state(member, before, after)


class _ShardedClient(_Client, discord.AutoShardedClient):
    """The same client running this process's shards of the bot (`discord.shard_count`)."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        shared = self._adapter.shared_gateway
        if shared is None or shard_id is None:
            await super().before_identify_hook(shard_id, initial=initial)
        else:  # the IDENTIFY bucket is the bot's, shared with its other processes
            await shared.before_identify(shard_id, initial=initial)


class DiscordAdapter:
    """Connects the engine to Discord; `await start()` once, `await stop()` at shutdown."""

    def __init__(
        self,
        services: Services,
        *,
        guild_ready_timeout: float = GUILD_READY_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._settings = services.settings
        self._cfg = DiscordSettings.of(services.settings)
        self._access = AccessRules(self._cfg)
        self._engine = services.engine
        self._commands = services.commands
        self._guild_ready_timeout = guild_ready_timeout
        self._stopping = False
        self._clock = clock
        self._limits: TargetLimits = channel_limits(self._cfg)
        self._client: _Client | None = None
        self._tree: app_commands.CommandTree[discord.Client] | None = None
        self._rest: DiscordRest | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._tasks = UpdateTasks("Discord", stop_grace_s)
        self._restore_endpoints: Callable[[], None] | None = None
        self._voice: VoiceChannels | None = None  # /join, /leave: adapters/discord/voice/
        self.shared_gateway: sharding.SharedGateway | None = None  # budgets of a sharded bot
        self._repairs = InterruptedReplies(
            services.engine.store,
            PLATFORM,
            self._rewrite,
            max_chars=self._cfg.max_message_chars,
            settings=services.settings,
        )

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the gateway session is up; for /healthz."""
        client, gateway = self._client, self._gateway
        return (
            client is not None
            and gateway is not None
            and not gateway.done()  # connect() ended for good: no reconnect is coming
            and client.is_ready()
            and not client.is_closed()
        )

    async def start(self) -> None:
        """Log in, sync the slash commands and connect; returns once the bot is ready.

        Raises ConfigError when Discord refuses the token or the message content intent, or
        when the installed discord.py lacks what Parley relies on.
        """
        require_libraries()
        token = self._cfg.token.get_secret_value()
        if not token:
            raise ConfigError(["discord.token: empty; set it to the bot token to use Discord"])
        self._restore_endpoints = redirect_endpoints(self._cfg.api_base_url, self._cfg.gateway_url)
        client_class = _ShardedClient if sharding.is_sharded(self._cfg) else _Client
        client = client_class(
            self,
            intents=self._intents(),
            guild_ready_timeout=self._guild_ready_timeout,
            allowed_mentions=NOTICE_MENTIONS,
            **sharding.client_options(self._cfg),
        )
        self._client = client
        language = self._settings.engine.language
        self._tree = build_command_tree(client, self, self._commands.table(PLATFORM), language)
        await self._tree.set_translator(CatalogTranslator(language))
        self._voice = VoiceChannels(
            client=client,
            cfg=self._cfg,
            engine=self._engine,
            access=self._access,
            language=self._stt_language,
            reply_target=self._voice_reply_target,
            limits=self._limits,
            spawn=self._tasks.spawn,
        )
        self._commands.provide("join", self._voice.join)
        self._commands.provide("leave", self._voice.leave)
        try:
            self.shared_gateway = await sharding.open_shared(self._settings, self._cfg)
            if self.shared_gateway is not None:
                self.shared_gateway.gate_library(client.http)
            try:
                await client.login(token)
            except discord.LoginFailure:
                raise ConfigError([MSG_TOKEN_REFUSED]) from None
            self._rest = DiscordRest(self._cfg.api_base_url, token, client.http.user_agent)
            await self._rest.open()
            if self.shared_gateway is not None:
                self._rest.global_gate = self.shared_gateway.rest
                await self.shared_gateway.learn_limits(client)
            await self._sync_commands()
            self._gateway = asyncio.create_task(client.connect(), name="discord-gateway")
            await self._until_ready()
        except BaseException:
            await self.stop()
            raise
        self._gateway.add_done_callback(_log_gateway_end)
        log.info(
            "Discord: connected as %s (%d servers) %s",
            client.user,
            len(client.guilds),
            sharding.describe(self._cfg),
        )
        self._repairs.start()

    async def stop(self) -> None:
        """Stop taking turns, let replies in progress finish (up to a grace period), disconnect."""
        self._stopping = True
        await self._repairs.stop()
        # Voice channels are left at once (the turn in progress keeps its grace for its text).
        leaving = asyncio.create_task(self._leave_voice())
        await self._tasks.drain()
        await self._engine.scheduler.queue_notices.settle(NOTICE_GRACE_S)
        await leaving
        if self._client is not None:
            await self._client.close()
        if self._gateway is not None:
            await asyncio.gather(self._gateway, return_exceptions=True)
        if self._rest is not None:
            await self._rest.close()
        if self.shared_gateway is not None:
            await self.shared_gateway.close()
            self.shared_gateway = None
        if self._restore_endpoints is not None:
            self._restore_endpoints()
            self._restore_endpoints = None

    async def _leave_voice(self) -> None:
        if self._voice is None:
            return
        self._commands.withdraw("join", self._voice.join)
        self._commands.withdraw("leave", self._voice.leave)
        await self._voice.close()

    def _intents(self) -> discord.Intents:
        intents = discord.Intents.none()
        intents.guilds = True  # channels, threads and roles, for permissions and mentions
        intents.voice_states = True  # who is in which voice channel: /join, leaving when empty
        intents.guild_messages = True
        intents.dm_messages = True
        intents.message_content = self._cfg.message_content
        return intents

    async def _sync_commands(self) -> None:
        """Register the slash commands: per guild (instant) for `guild_ids`, else globally.

        A bulk overwrite with unchanged commands is idempotent on Discord's side, so syncing at
        every start keeps the registered commands in step with the code.
        """
        assert self._tree is not None
        if not self._cfg.guild_ids:
            synced = await self._tree.sync()
            log.info("Discord: %d global slash commands synced", len(synced))
            return
        for guild_id in self._cfg.guild_ids:
            guild = discord.Object(guild_id)
            self._tree.copy_global_to(guild=guild)
            try:
                synced = await self._tree.sync(guild=guild)
            except discord.Forbidden as exc:
                raise ConfigError(
                    [f"discord.guild_ids: cannot register commands in server {guild_id}: {exc}"]
                ) from None
            log.info("Discord: %d slash commands synced to server %d", len(synced), guild_id)

    async def _until_ready(self) -> None:
        assert self._client is not None and self._gateway is not None
        ready = asyncio.create_task(self._client.wait_until_ready())
        await asyncio.wait({ready, self._gateway}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            return
        ready.cancel()
        error = self._gateway.exception()
        if isinstance(error, discord.PrivilegedIntentsRequired):
            raise ConfigError([MSG_INTENT_REFUSED]) from None
        if isinstance(error, discord.ConnectionClosed) and error.code == 4004:
            raise ConfigError([MSG_TOKEN_REFUSED]) from None
        raise RuntimeError("the Discord gateway closed before READY") from error

    # -- voice channels --------------------------------------------------------------------

    @property
    def voice(self) -> VoiceChannels | None:
        """The bot's voice conversations (None before `start()`)."""
        return self._voice

    def on_voice_state(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """A gateway VOICE_STATE_UPDATE: someone joined, left or moved between voice channels."""
        if self._voice is not None:
            self._voice.on_voice_state(member, before, after)

    async def _stt_language(self, channel_key: str) -> str:
        """Whisper's language for the voice turns of a text channel (they are its conversation):
        its `stt_language`, by default its language (else the server's preferred locale)."""
        store = self._commands.store
        channel_id = await store.channel_id(PLATFORM, channel_key)
        settings = await self._commands.channel_settings(channel_id)
        channel = self._client.get_channel(int(channel_key)) if self._client else None
        guild = getattr(channel, "guild", None)
        lang = turn_language(settings.language, _locale(guild.preferred_locale) if guild else "")
        return speech_language(settings.stt_language, lang)

    def _voice_reply_target(self, message: discord.Message) -> ChannelTarget:
        """The reply target of a voice turn's written transcript, as for a chat message."""
        assert self._rest is not None and self._client is not None
        return ChannelTarget(
            rest=self._rest,
            http=self._client.http,
            message=message,
            limits=self._limits,
            clock=self._clock,
        )

    # -- chat messages ---------------------------------------------------------------------

    def on_message(self, message: discord.Message) -> None:
        """A gateway MESSAGE_CREATE: answer it in its own task when it is a turn for us."""
        assert self._client is not None and self._client.user is not None
        if self._stopping:
            return
        me = self._client.user
        turn = is_turn(message, me)
        # Server chatter not addressed to the bot is never answered, but it is context for the
        # next message that is (the engine keeps it if group_context is on).
        if not turn and not is_background(message, me):
            return
        channel = message.channel
        if self._access.allowed(message.author.id, channel.id, getattr(channel, "parent_id", None)):
            self._tasks.spawn(self._answer(message) if turn else self._observe(message))

    async def _observe(self, message: discord.Message) -> None:
        """Hand server chatter to the engine as background: no reply, no typing, no LLM call."""
        assert self._client is not None and self._client.user is not None
        text = readable_text(message, self._client.user)
        if not text:
            return
        await self._engine.observe(
            IncomingMessage(
                platform=PLATFORM,
                channel_key=str(message.channel.id),  # a thread is a conversation of its own
                user_id=str(message.author.id),
                user_name=message.author.display_name,
                text=text,
                message_id=str(message.id),
                language=_message_language(message),
            )
        )

    async def _answer(self, message: discord.Message) -> None:
        assert self._rest is not None and self._client is not None
        target = ChannelTarget(
            rest=self._rest,
            http=self._client.http,
            message=message,
            limits=self._limits,
            scheduler=self._engine.scheduler,  # every call under the bot's shared budgets
            clock=self._clock,
        )
        try:
            await self._answer_message(message, target)
        # One message's error boundary: log it, tell the user, keep the gateway going.
        except Exception:
            log.exception("Discord: handling a message in channel %s failed", message.channel.id)
            lang = turn_language(self._settings.engine.language, _message_language(message))
            try:
                await target.notice(say(Msg.MESSAGE_FAILED, lang=lang))
            except (DeliveryError, RetryAfter, OSError) as exc:
                log.warning("Discord: could not tell the user: %s", exc)
        finally:
            await target.close()

    async def _answer_message(self, message: discord.Message, target: ChannelTarget) -> None:
        assert self._client is not None and self._client.user is not None
        author = message.author
        manage_guild = isinstance(author, discord.Member) and author.guild_permissions.manage_guild
        reference = message.reference
        msg = IncomingMessage(
            platform=PLATFORM,
            channel_key=str(message.channel.id),
            user_id=str(author.id),
            user_name=author.display_name,
            text=readable_text(message, self._client.user),
            is_admin=self._access.is_admin(author, manage_guild=manage_guild),
            reply_to=str(reference.message_id) if reference and reference.message_id else None,
            message_id=str(message.id),
            is_private=message.guild is None,
            attachments=self._attachments(message),
            language=_message_language(message),
        )
        await self._engine.handle(msg, target)

    def _attachments(self, message: discord.Message) -> tuple[Attachment, ...]:
        """What the message carries besides text: its stickers, then its files, each readable
        from its URL (with a cap: the size a message claims is not trusted)."""
        assert self._rest is not None
        stickers = [Attachment("sticker", name=sticker.name) for sticker in message.stickers]
        files = [
            Attachment(
                kind_of(attachment),
                size=attachment.size,
                mime=content_type(attachment),
                name=attachment.filename,
                reader=functools.partial(self._rest.download, attachment.url),
            )
            for attachment in message.attachments
        ]
        return (*stickers, *files)

    # -- slash commands (CommandHandler) ---------------------------------------------------

    async def ask(self, interaction: discord.Interaction, prompt: str, voice: bool) -> None:
        """/ask: defer at once (Discord wants an answer within 3 s), then stream the reply."""
        assert self._rest is not None and self._client is not None
        if not await self._admit(interaction) or not await _defer(interaction, ephemeral=False):
            return
        assert interaction.channel_id is not None
        target = InteractionTarget(
            rest=self._rest,
            http=self._client.http,
            interaction=interaction,
            channel=self._client.get_partial_messageable(interaction.channel_id),
            limits=self._limits,
            scheduler=self._engine.scheduler,  # every call under the bot's shared budgets
            clock=self._clock,
        )
        # "/ask voice:true" asks for a spoken reply whatever the channel's voice mode.
        msg = dataclasses.replace(self._interaction_message(interaction, prompt), wants_voice=voice)
        self._tasks.spawn(self._handle(msg, target))

    async def _handle(self, msg: IncomingMessage, target: InteractionTarget) -> None:
        try:
            await self._engine.handle(msg, target)
        finally:
            await target.close()

    async def run_command(
        self, interaction: discord.Interaction, name: str, args: str, *, ephemeral: bool
    ) -> None:
        """Any other command: the engine's reply text, split at the message limit."""
        if not await self._admit(interaction) or not await _defer(interaction, ephemeral=ephemeral):
            return
        msg = dataclasses.replace(
            self._interaction_message(interaction, f"/{name} {args}".strip()),
            private_reply=ephemeral,  # only the caller sees the answer
        )
        try:
            reply = await self._commands.execute(msg, name, args)
        # One interaction's error boundary: log it, tell the user.
        except Exception:
            log.exception("Discord: /%s failed", name)
            lang = turn_language(self._settings.engine.language, msg.language)
            reply = CommandReply(say(Msg.COMMAND_FAILED, lang=lang))
        assert self._rest is not None and self._client is not None
        assert interaction.channel_id is not None
        # The answer goes under the bot's budgets like every other call (a 429 pauses them).
        target = InteractionTarget(
            rest=self._rest,
            interaction=interaction,
            channel=self._client.get_partial_messageable(interaction.channel_id),
            limits=self._limits,
            scheduler=self._engine.scheduler,
            clock=self._clock,
            ephemeral=ephemeral,
        )
        lang = await self._commands.language(msg)
        try:
            # Discord refuses an empty message: an answer without text says it is done.
            await target.answer(reply.text, empty=say(Msg.DONE, lang=lang))
            for file in reply.files:
                try:
                    await target.send_file(file)
                except DeliveryError as exc:
                    log.warning("Discord: a file was not delivered: %s", exc)
                    await target.notice(say(Msg.FILE_REFUSED_DISCORD, lang=lang))
        except (DeliveryError, OSError) as exc:  # refused, or past the deadline: nobody to tell
            log.warning("Discord: the answer to /%s was not delivered: %s", name, exc)

    async def _admit(self, interaction: discord.Interaction) -> bool:
        """Whether the user may use the bot here; refuses (privately) when not."""
        if self._stopping:
            return False  # shutting down: Discord tells the user the bot did not respond
        parent_id = getattr(interaction.channel, "parent_id", None)
        channel_id = interaction.channel_id
        if channel_id is not None and self._access.allowed(
            interaction.user.id, channel_id, parent_id
        ):
            return True
        lang = turn_language(self._settings.engine.language, _interaction_language(interaction))
        await interaction.response.send_message(
            say(Msg.NOT_ALLOWED_HERE, lang=lang), ephemeral=True
        )
        return False

    def _interaction_message(self, interaction: discord.Interaction, text: str) -> IncomingMessage:
        user = interaction.user
        manage_guild = interaction.guild_id is not None and interaction.permissions.manage_guild
        return IncomingMessage(
            platform=PLATFORM,
            channel_key=str(interaction.channel_id),
            user_id=str(user.id),
            user_name=user.display_name,
            text=text,
            is_admin=self._access.is_admin(user, manage_guild=manage_guild),
            message_id=str(interaction.id),
            is_private=interaction.guild_id is None,
            language=_interaction_language(interaction),
        )

    async def _rewrite(self, part: OpenPart, text: str) -> None:
        """Finish a message of an interrupted reply (adapters/discord/targets.rewrite_message)."""
        assert self._rest is not None
        await rewrite_message(
            self._rest,
            self._engine.scheduler,
            self._limits,
            int(part.channel_key),
            int(part.message_id),
            text,
        )


def _locale(locale: discord.Locale | None) -> str:
    return locale.value if locale is not None else ""


def _interaction_language(interaction: discord.Interaction) -> str:
    """The user's language: their Discord client's locale, else the server's preferred one."""
    return _locale(interaction.locale) or _locale(interaction.guild_locale)


def _message_language(message: discord.Message) -> str:
    """A gateway message carries no user locale: the server's preferred one ("" in a DM)."""
    return _locale(message.guild.preferred_locale) if message.guild is not None else ""


async def _defer(interaction: discord.Interaction, *, ephemeral: bool) -> bool:
    """Acknowledge the interaction ("thinking…"); False when Discord no longer accepts it."""
    try:
        await interaction.response.defer(ephemeral=ephemeral, thinking=True)
    except discord.NotFound:
        log.warning("Discord: a slash command could not be acknowledged in time")
        return False
    return True


def _log_gateway_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Discord: the gateway connection ended", exc_info=task.exception())
