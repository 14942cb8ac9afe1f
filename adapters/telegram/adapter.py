"""The Telegram adapter: python-telegram-bot receives updates, the conversation engine answers.

Long polling by default; a webhook when `telegram.webhook_url` is set. The PTB `Application`
stays in here: the engine sees `IncomingMessage` and answers through `TelegramReplyTarget`.
Each message is answered in its own task, so a slow reply never holds up other chats (the
engine keeps each chat's order itself).
"""

from __future__ import annotations

import functools
import logging
import secrets
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import telegram.error
from telegram import Message, Update
from telegram.ext import Application, ContextTypes, MessageHandler, filters

from adapters.telegram.commands import menus
from adapters.telegram.config import TelegramSettings
from adapters.telegram.files import FileDownloads
from adapters.telegram.limits import MAX_DOWNLOAD_BYTES
from adapters.telegram.polling import Ticket, UpdatePoller
from adapters.telegram.rules import (
    conversation_key,
    is_addressed,
    is_private,
    may_use,
    media_of,
    parse_command,
    strip_mention,
    topic_id,
)
from adapters.telegram.targets import DRAFT_PREFIX, TelegramReplyTarget, chat_limits
from adapters.telegram.updates import TolerantUpdatesRequest
from adapters.telegram.webhook import WebhookServer
from bot.command_table import CommandReply, find
from bot.delivery.budgets import Priority
from bot.errors import ConfigError, DeliveryError, MessageNotStored, RetryAfter, StorageError
from bot.languages import turn_language
from bot.messages import Msg, say
from bot.platform import NOTICE_GRACE_S, STOP_GRACE_S
from bot.repair import InterruptedReplies
from bot.storage.reply_parts import OpenPart
from bot.types import Attachment, Delivery, IncomingMessage
from bot.update_tasks import UpdateTasks

if TYPE_CHECKING:
    from bot.platform import Services

log = logging.getLogger(__name__)

PLATFORM = "telegram"
POLL_TIMEOUT_S = 30  # long-poll length of getUpdates (Telegram allows up to 50)
UPDATES = [Update.MESSAGE]  # the only update type the bot acts on

# What a target raises when Telegram cannot be written to: logged, as the user cannot be told.
_UNDELIVERED = (DeliveryError, RetryAfter, ConnectionError)

# Every user message but commands and service messages (joins, pins...): what Parley cannot
# read (a photo, a sticker) still gets an answer saying so.
_MESSAGES = filters.UpdateType.MESSAGE & ~filters.StatusUpdate.ALL


class TelegramAdapter:
    """Connects the engine to one Telegram bot; `await start()` ... `await stop()`."""

    def __init__(
        self,
        services: Services,
        *,
        poll_timeout_s: int = POLL_TIMEOUT_S,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._settings = services.settings
        self._tg = TelegramSettings.of(services.settings)
        self._engine = services.engine
        self._commands = services.commands
        self._poll_timeout_s = poll_timeout_s
        self._application: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._webhook: WebhookServer | None = None
        self._poller: UpdatePoller | None = None
        self._files: FileDownloads | None = None
        self._tasks = UpdateTasks("Telegram", stop_grace_s)
        self._table = services.commands.table(PLATFORM)
        self._repairs = InterruptedReplies(
            services.engine.store,
            PLATFORM,
            self._rewrite,
            max_chars=self._tg.max_message_chars,
            settings=services.settings,
        )

    @property
    def connected(self) -> bool:
        """True while updates are being received (polling or webhook); for /healthz."""
        app = self._application
        if app is None or not app.running:
            return False
        if self._tg.webhook_url:
            return self._webhook is not None
        return self._poller is not None and self._poller.running

    async def start(self) -> None:
        """Log in, register the commands and start receiving; returns once running."""
        token = self._tg.token.get_secret_value()
        if not token:
            raise ConfigError(["config: telegram.token is empty"])
        # httpx logs every request URL at INFO, and PTB's URLs contain the token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        builder = (
            Application.builder()
            .token(token)
            .base_url(self._tg.api_base_url)
            .base_file_url(self._tg.file_base_url)
        )
        # Updates come through UpdatePoller (confirmed once stored) or the webhook server.
        builder = builder.updater(None)
        if not self._tg.webhook_url:
            # One connection, as PTB's default for getUpdates; undecodable updates are skipped.
            builder = builder.get_updates_request(TolerantUpdatesRequest(connection_pool_size=1))
        application = builder.build()
        application.add_handler(
            MessageHandler(filters.UpdateType.MESSAGE & filters.COMMAND, self._on_command)
        )
        application.add_handler(MessageHandler(_MESSAGES & ~filters.COMMAND, self._on_message))
        application.add_error_handler(self._on_error)
        self._application = application
        self._files = FileDownloads(application.bot)
        try:
            await self._run(application)
        except telegram.error.InvalidToken:
            await self.stop()
            raise ConfigError(["config: telegram.token: Telegram does not accept it"]) from None
        except BaseException:
            await self.stop()
            raise
        log.info("Telegram: running as @%s", application.bot.username)
        self._repairs.start()

    async def _run(self, application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        await application.initialize()
        # One menu per language: Telegram shows each user the menu of their language_code.
        for language_code, commands in menus(self._table, self._settings.engine.language):
            if commands:
                await application.bot.set_my_commands(commands, language_code=language_code)
            else:  # a menu of an earlier run, for a language this one does not speak
                await application.bot.delete_my_commands(language_code=language_code)
        await application.start()
        if self._tg.webhook_url:
            await self._start_webhook(application)
        else:
            self._poller = UpdatePoller(
                application, timeout_s=self._poll_timeout_s, allowed_updates=UPDATES
            )
            await self._poller.start()

    async def stop(self) -> None:
        """Stop receiving, let replies in progress finish (up to a grace period), log out."""
        await self._repairs.stop()
        application, self._application = self._application, None
        if application is None:
            return
        if self._poller is not None:
            await self._poller.stop()
            self._poller = None
        if self._webhook is not None:
            await self._webhook.stop()
            self._webhook = None
        if application.running:
            await application.stop()
        await self._tasks.drain()
        await self._engine.scheduler.queue_notices.settle(NOTICE_GRACE_S)
        if self._files is not None:
            await self._files.close()
            self._files = None
        await application.shutdown()

    # -- receiving -------------------------------------------------------------------------

    async def _start_webhook(self, application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        # Without a configured secret, a random one per run still keeps forged POSTs out.
        secret = self._tg.webhook_secret.get_secret_value() or secrets.token_urlsafe(32)
        self._webhook = WebhookServer(
            application,
            host=self._tg.webhook_listen,
            port=self._tg.webhook_port,
            path=urlsplit(self._tg.webhook_url).path,
            secret=secret,
        )
        await self._webhook.start()
        await application.bot.set_webhook(
            self._tg.webhook_url, secret_token=secret, allowed_updates=UPDATES
        )

    async def _on_message(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        bot = context.bot
        if not is_addressed(message, bot.id, bot.username):
            # Group chatter: never answered, but what was said around the bot is context for
            # the next message addressed to it (the engine keeps it if group_context is on).
            if may_use(self._tg, message.from_user.id, message.chat_id):
                self._tasks.spawn(self._observe(message))
            return
        if not may_use(self._tg, message.from_user.id, message.chat_id):
            self._tasks.spawn(self._tell(message, say(Msg.REFUSED, lang=self._language(message))))
            return
        self._tasks.spawn(self._answer(message, bot.username, ticket=self._claim()))

    async def _on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None or message.text is None:
            return
        if message.from_user.is_bot:
            return  # like their messages: two bots must not answer each other without end
        command = parse_command(message.text, context.bot.username)
        if command is None:
            return
        known = find(self._table, command.name)
        if known is None and not (is_private(message) or command.addressed):
            return  # in a group, an unknown bare /command is probably for another bot
        if not may_use(self._tg, message.from_user.id, message.chat_id):
            self._tasks.spawn(self._tell(message, say(Msg.REFUSED, lang=self._language(message))))
            return
        if known is not None and known.turn:  # /ask: its text is a message to answer
            self._tasks.spawn(
                self._answer(message, context.bot.username, text=command.args, ticket=self._claim())
            )
            return
        self._tasks.spawn(self._run_command(message, command.name, command.args))

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram update handling failed", exc_info=context.error)

    # -- answering -------------------------------------------------------------------------

    def _claim(self) -> Ticket | None:
        """The update being handled now, claimed: it is confirmed once its message is stored."""
        receiver = self._poller or self._webhook
        ticket = receiver.tickets.current if receiver is not None else None
        if ticket is not None:
            ticket.claim()
        return ticket

    async def _answer(
        self,
        message: Message,
        bot_username: str,
        text: str | None = None,
        ticket: Ticket | None = None,
    ) -> None:
        target = self._target(message)
        try:
            if text is None:
                text = strip_mention(message.text or message.caption or "", bot_username)
            # Not stored yet: Telegram keeps the unconfirmed update (until `keep_until`).
            delivery = (
                Delivery()
                if ticket is None
                else Delivery(stored=ticket.stored, held=ticket.hold, keep_until=ticket.keep_until)
            )
            incoming = self._incoming(message, text, self._attachments(message))
            await self._engine.handle(incoming, target, delivery)
        except MessageNotStored as exc:
            assert ticket is not None  # only a turn whose update Telegram keeps raises it
            log.info("Telegram: update %d not stored (%s): trying again", ticket.update_id, exc)
            ticket.not_stored()
            ticket = None
        except _UNDELIVERED as exc:
            log.warning("reply to chat %s not delivered: %s", message.chat_id, exc)
        # One update's error boundary: log it, tell the user, keep polling.
        except Exception:
            log.exception("Telegram: handling a message in chat %s failed", message.chat_id)
            await self._tell(message, say(Msg.MESSAGE_FAILED, lang=self._language(message)))
        finally:
            if ticket is not None:
                ticket.stored()  # answered, refused or failed otherwise: nothing to redeliver
            await target.close()

    async def _observe(self, message: Message) -> None:
        """Hand group chatter to the engine as background: no reply, no typing, no LLM call."""
        text = message.text or message.caption or ""
        if text.strip():
            await self._engine.observe(self._incoming(message, text))

    async def _run_command(self, message: Message, name: str, args: str) -> None:
        msg = self._incoming(message, message.text or "")
        if not await self._first_delivery(msg):
            log.info("Telegram: /%s in chat %s came again; run already", name, message.chat_id)
            return
        try:
            reply = await self._commands.execute(msg, name, args)
        # One command's error boundary: log it, tell the user.
        except Exception:
            log.exception("Telegram: /%s in chat %s failed", name, message.chat_id)
            reply = CommandReply(say(Msg.MESSAGE_FAILED, lang=self._language(message)))
        await self._tell(message, reply.text)
        for file in reply.files:
            try:
                await self._target(message).send_file(file)
            except _UNDELIVERED as exc:
                log.warning("file to chat %s not delivered: %s", message.chat_id, exc)
                refused = say(Msg.FILE_REFUSED_TELEGRAM, lang=await self._commands.language(msg))
                await self._tell(message, refused)

    async def _first_delivery(self, msg: IncomingMessage) -> bool:
        """Claim a command's update before it runs, so a redelivery does not run it twice (a
        process killed before it confirmed the update); a store that cannot say runs it."""
        if msg.handled_key is None:
            return True
        try:
            return await self._engine.store.claim(PLATFORM, msg.handled_key)
        except StorageError:
            return True

    async def _tell(self, message: Message, text: str) -> None:
        """A plain answer outside the engine's replies (command results, refusals)."""
        try:
            await self._target(message).notice(text)
        except _UNDELIVERED as exc:
            log.warning("message to chat %s not delivered: %s", message.chat_id, exc)

    def _attachments(self, message: Message) -> tuple[Attachment, ...]:
        """What the message carries besides text, each readable through `getFile`."""
        assert self._files is not None
        # Of a photo's sizes, the largest the picture limit takes.
        largest = min(MAX_DOWNLOAD_BYTES, self._settings.llm.max_image_bytes)
        return tuple(
            Attachment(
                media.kind,
                size=media.size,
                mime=media.mime,
                name=media.name,
                max_bytes=MAX_DOWNLOAD_BYTES,
                reader=self._files.reader(media.file_id, media.size) if media.file_id else None,
            )
            for media in media_of(message, largest)
        )

    def _incoming(
        self, message: Message, text: str, attachments: tuple[Attachment, ...] = ()
    ) -> IncomingMessage:
        user = message.from_user
        assert user is not None  # the handlers skip messages without a sender
        replied = message.reply_to_message
        return IncomingMessage(
            platform=PLATFORM,
            # A forum topic is a conversation of its own.
            channel_key=conversation_key(message),
            user_id=str(user.id),
            user_name=user.full_name,
            text=text,
            is_admin=user.id in self._tg.admin_ids,
            reply_to=str(replied.message_id) if replied is not None else None,
            message_id=str(message.message_id),
            is_private=is_private(message),
            attachments=attachments,
            language=user.language_code or "",
        )

    def _language(self, message: Message) -> str:
        """The language of a notice outside a turn (a refusal, an error): the bot's setting, else
        the sender's; the chat's own setting is not read for these (the store may be what
        failed, and a refused user's chat is not stored)."""
        user = message.from_user
        code = user.language_code if user is not None else None
        return turn_language(self._settings.engine.language, code or "")

    def _target(self, message: Message) -> TelegramReplyTarget:
        private = is_private(message)
        return TelegramReplyTarget(
            message.get_bot(),
            chat_id=message.chat_id,
            limits=chat_limits(self._tg, is_private=private),
            scheduler=self._engine.scheduler,  # every call under the bot's shared budgets
            use_drafts=private and self._tg.stream == "draft",
            # In a group the answer quotes the question, so it is clear whom it answers.
            reply_to_message_id=None if private else message.message_id,
            thread_id=topic_id(message),  # every reply, notice and voice note lands in the topic
        )

    async def _rewrite(self, part: OpenPart, text: str) -> None:
        """Finish a message of an interrupted reply: an edit, or a new message where the part
        was a draft preview (Telegram drops those by itself)."""
        assert self._application is not None
        chat, _, topic = part.channel_key.partition(":")
        chat_id = int(chat)
        target = TelegramReplyTarget(
            self._application.bot,
            chat_id=chat_id,
            # Private chats have the user's (positive) id, groups and channels negative ones.
            limits=chat_limits(self._tg, is_private=chat_id > 0),
            scheduler=self._engine.scheduler,
            thread_id=int(topic) if topic else None,
        )
        scheduler = self._engine.scheduler
        if part.message_id.startswith(DRAFT_PREFIX):
            post = functools.partial(target.send, text)
            await scheduler.call(target, post, priority=Priority.COMPLETE, what="repair")
        else:
            edit = functools.partial(target.edit, part.message_id, text)
            await scheduler.call(target, edit, priority=Priority.COMPLETE, what="repair")

    # -- tasks -----------------------------------------------------------------------------
