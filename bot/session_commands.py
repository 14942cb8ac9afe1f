"""/session: a chat's named conversations, started, listed, resumed and exported."""

from __future__ import annotations

import asyncio
import time

from bot.command_table import CommandReply
from bot.messages import Msg, Phrase, phrase, say
from bot.sessions import AUTO_NAME, EXPORT_MAX_MESSAGES, export_markdown, normalise_name
from bot.storage import MAIN_SESSION, HistoryStore, Session
from bot.types import IncomingMessage


class SessionCommands:
    """The handlers of /session new|list|resume|export."""

    def __init__(self, store: HistoryStore, bot_name: str) -> None:
        self.store = store
        self.bot_name = bot_name

    async def new(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/session new [NAME]: a fresh conversation; the current one is kept."""
        sessions = await self.store.sessions(channel_id)
        taken = {session.name for session in sessions}
        if args:
            name = normalise_name(args)
            if name is None:
                return say(Msg.SESSION_BAD_NAME, lang=msg.language)
        else:
            number = len(sessions) + 1
            while AUTO_NAME.format(n=number) in taken:
                number += 1
            name = AUTO_NAME.format(n=number)
        before = next((s.name for s in sessions if s.current), MAIN_SESSION)
        started = await self.store.new_session(
            channel_id, name, actor_id=msg.user_id, actor_name=msg.user_name
        )
        if started is None:
            return say(Msg.SESSION_EXISTS, lang=msg.language, name=name)
        return say(Msg.SESSION_STARTED, lang=msg.language, name=name, before=before)

    async def listing(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/session list: the chat's conversations, the current one marked."""
        sessions = await self.store.sessions(channel_id)
        lines = [say(Msg.SESSIONS, lang=msg.language)]
        lines += [_session_line(session, msg.language) for session in sessions]
        lines.append(say(Msg.SESSIONS_HINT, lang=msg.language))
        return "\n".join(lines)

    async def resume(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """/session resume NAME: back to an earlier conversation."""
        name = normalise_name(args)
        session = None
        if name is not None:
            session = await self.store.switch_session(
                channel_id, name, actor_id=msg.user_id, actor_name=msg.user_name
            )
        if session is None:
            return say(Msg.SESSION_UNKNOWN, lang=msg.language, name=args)
        return say(
            Msg.SESSION_RESUMED, lang=msg.language, name=session.name, messages=_messages(session)
        )

    async def export(self, msg: IncomingMessage, channel_id: int, args: str) -> str | CommandReply:
        """/session export: the current conversation as a Markdown file."""
        current = next(s for s in await self.store.sessions(channel_id) if s.current)
        rows = await self.store.session_messages(channel_id, current.id, EXPORT_MAX_MESSAGES)
        if not rows:
            return say(Msg.EXPORT_EMPTY, lang=msg.language, name=current.name)
        file = await asyncio.to_thread(  # a long conversation is megabytes of text to build
            export_markdown,
            rows,
            session=current.name,
            chat=say(
                Msg.EXPORT_CHAT, lang=msg.language, platform=msg.platform, chat=msg.channel_key
            ),
            bot_name=self.bot_name,
            lang=msg.language,
        )
        return CommandReply(say(Msg.EXPORT_READY, lang=msg.language, name=current.name), (file,))


def _messages(session: Session) -> Phrase:
    return phrase(Msg.MESSAGES, count=session.messages)


def _session_line(session: Session, lang: str) -> str:
    if session.last_at:
        when = time.strftime("%Y-%m-%d", time.gmtime(session.last_at))
        line = say(
            Msg.SESSION_LINE_DATED,
            lang=lang,
            name=session.name,
            messages=_messages(session),
            when=when,
        )
    else:
        line = say(Msg.SESSION_LINE, lang=lang, name=session.name, messages=_messages(session))
    return line + (say(Msg.SESSION_CURRENT, lang=lang) if session.current else "")
