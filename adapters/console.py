"""The local console chat: `parley chat`, and `make run` when no platform token is set.

An adapter like the platforms' (a chat of one person, who owns the bot), though not a
`Platform`: it needs no token and no connection, and `bot.cli` starts it when no platform is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from bot.command_table import START, find
from bot.languages import ENGLISH
from bot.messages import Msg, say
from bot.platform import Services
from bot.types import (
    Attachment,
    AttachmentKind,
    IncomingMessage,
    OutgoingFile,
    RateBudget,
    TargetLimits,
    VoiceClip,
)

PLATFORM = "console"
COMMANDS = (START,)  # the commands only the console has, besides the core's
CONSOLE_CHANNEL = "local"
QUIT_COMMANDS = ("quit", "exit")
# The terminal has no rate limit and no length limit worth splitting at.
_LIMITS = TargetLimits(
    max_chars=1_000_000,
    chat=RateBudget(rate=1000.0, burst=1000.0),
    platform=RateBudget(rate=1000.0, burst=1000.0),
    platform_key="console",
)
_MARKER = " ▌"
# Where a terminal says its language, first found wins (POSIX: LC_ALL overrides the others).
LANGUAGE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")


def console_language(environ: Mapping[str, str]) -> str:
    """The terminal's language as its locale variables name it ("fr_FR.UTF-8"); "" if unset."""
    return next((environ[name] for name in LANGUAGE_VARIABLES if environ.get(name)), "")


class ConsoleTarget:
    """Prints a streamed reply as it grows; the terminal only ever gets appended text."""

    def __init__(
        self,
        out: TextIO,
        voice_dir: Path,
        bot_name: str = "Parley",
        file_dir: Path = Path("parley-files"),
    ) -> None:
        self.out = out
        self.bot_name = bot_name
        self.voice_dir = voice_dir
        self.file_dir = file_dir  # where files the bot sends (exports) are written
        self._shown: dict[str, str] = {}
        self._next_id = 0
        self._parts = 0  # messages of the current reply (a long one continues in a new one)
        self.lang = ENGLISH  # the chat's language, for the target's own words (a voice note's)

    def start_reply(self) -> None:
        self._parts = 0

    @property
    def chat_key(self) -> str:
        return "console:" + CONSOLE_CHANNEL

    @property
    def limits(self) -> TargetLimits:
        return _LIMITS

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    async def send(self, text: str) -> str:
        self._next_id += 1
        message_id = str(self._next_id)
        self._shown[message_id] = ""
        self._write("\n" if self._parts else f"{self.bot_name}: ")
        self._parts += 1
        await self.edit(message_id, text)
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        text = text.removesuffix(_MARKER)
        shown = self._shown.get(message_id, "")
        if text.startswith(shown):
            self._write(text[len(shown) :])
            self._shown[message_id] = text
        # Otherwise the text was rewritten (never happens while streaming): keep what is shown.

    async def finalize(self, message_id: str, text: str) -> str:
        await self.edit(message_id, text)
        return message_id

    async def delete(self, message_id: str) -> None:
        self._shown.pop(message_id, None)

    async def typing(self) -> None:
        return None

    async def queued(self, position: int, lang: str = ENGLISH) -> None:
        self._write(say(Msg.CONSOLE_WAITING, lang=lang, position=position) + "\n")

    async def notice(self, text: str) -> None:
        self._write(f"{text}\n")

    async def send_voice(self, clip: VoiceClip) -> None:
        self.voice_dir.mkdir(parents=True, exist_ok=True)
        path = self.voice_dir / f"reply-{time.strftime('%Y%m%d-%H%M%S')}-{self._next_id}.ogg"
        path.write_bytes(clip.ogg_opus)
        said = say(Msg.CONSOLE_VOICE, lang=self.lang, path=path, seconds=clip.duration_s)
        self._write("\n" + said + "\n")

    async def send_file(self, file: OutgoingFile) -> None:
        """Write the file into `file_dir` (never over an earlier one) and say where it is."""
        path = await asyncio.to_thread(_write_new_file, self.file_dir, file)
        self._write(say(Msg.CONSOLE_FILE, lang=self.lang, path=path) + "\n")


def _write_new_file(folder: Path, file: OutgoingFile) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = Path(file.name).stem, Path(file.name).suffix
    path, number = folder / file.name, 1
    while path.exists():
        number += 1
        path = folder / f"{stem}-{number}{suffix}"
    path.write_bytes(file.data)
    return path


class ConsoleChat:
    """Reads lines from stdin and answers them; Ctrl-C cancels the reply, not the chat."""

    def __init__(
        self,
        services: Services,
        *,
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        voice_dir: Path = Path("voice-replies"),
        file_dir: Path = Path("parley-files"),
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """`environ`: where the terminal's language is read (LC_ALL, LC_MESSAGES, LANG)."""
        self.engine = services.engine
        self.language = console_language(environ)
        self.commands = services.commands
        self.stdin = stdin
        self.out = stdout
        self.target = ConsoleTarget(
            stdout, voice_dir, services.settings.engine.bot_name, file_dir=file_dir
        )
        self.interactive = stdin.isatty()
        self._table = services.commands.table(PLATFORM)
        self._reply: asyncio.Task[None] | None = None
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()

    def _message(self, text: str = "", recording: Attachment | None = None) -> IncomingMessage:
        return IncomingMessage(
            platform=PLATFORM,
            channel_key=CONSOLE_CHANNEL,
            user_id="console",
            user_name="you",
            text=text,
            is_admin=True,  # whoever has the terminal owns the bot
            is_private=True,
            attachments=() if recording is None else (recording,),
            language=self.language,
        )

    def _on_sigint(self) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        else:
            self._lines.put_nowait(None)  # Ctrl-C at the prompt ends the chat

    def _read_stdin(self, loop: asyncio.AbstractEventLoop) -> None:
        # A daemon thread, not to_thread(): a blocked readline must not hold up the exit.
        try:
            for line in iter(self.stdin.readline, ""):
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
        except (OSError, ValueError):  # the terminal went away (or stdin was closed)
            pass
        finally:
            loop.call_soon_threadsafe(self._lines.put_nowait, None)

    def _on_hangup(self) -> None:
        """SIGTERM or SIGHUP: stop the reply in progress and end the chat cleanly."""
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._lines.put_nowait(None)

    async def run(self, voice_file: Path | None = None) -> None:
        """Chat until end of input (Ctrl-D) or Ctrl-C at the prompt."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(sig, self._on_hangup)
        threading.Thread(target=self._read_stdin, args=(loop,), daemon=True).start()
        name = self.engine.settings.engine.bot_name
        if self.interactive:
            lang = await self.engine.language(self._message())
            self.out.write(say(Msg.CONSOLE_WELCOME, lang=lang, name=name) + "\n")
        try:
            if voice_file is not None:
                await self._answer(self._message(recording=_recording(voice_file)))
            while True:
                if self.interactive:
                    self.out.write("\nyou> ")
                    self.out.flush()
                line = await self._lines.get()
                if line is None:
                    break
                line = line.strip()
                if not line:
                    continue
                if line.startswith("/"):
                    name_, _, args = line[1:].partition(" ")
                    if name_ in QUIT_COMMANDS:
                        break
                    command = find(self._table, name_)
                    if command is not None and command.turn:
                        line = args  # /ask: the rest is the message
                    elif command is not None:
                        msg = self._message(line)
                        reply = await self.commands.execute(msg, name_, args)
                        self.out.write(reply.text + "\n")
                        self.target.lang = await self.engine.language(msg)
                        for file in reply.files:
                            await self.target.send_file(file)
                        continue
                await self._answer(self._message(line))
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    async def _answer(self, msg: IncomingMessage) -> None:
        self.target.start_reply()
        self.target.lang = await self.engine.language(msg)
        self._reply = asyncio.create_task(self.engine.handle(msg, self.target))
        try:
            await self._reply
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the chat itself is being stopped
            self.out.write("\n" + say(Msg.CONSOLE_CANCELLED, lang=self.target.lang))
        finally:
            self._reply = None
        self.out.write("\n")
        self.out.flush()


def _recording(path: Path) -> Attachment:
    """A voice file given on the command line, read (up to the limit) when it is transcribed."""
    mime = _mime(path) or ""

    async def read(limit: int) -> bytes:
        return await asyncio.to_thread(_read_at_most, path, limit + 1)  # one more: too large

    kind: AttachmentKind = "video" if mime.startswith("video/") else "audio"
    return Attachment(kind, path.stat().st_size, mime, path.name, reader=read)


def _read_at_most(path: Path, size: int) -> bytes:
    with path.open("rb") as file:
        return file.read(size)


def _mime(path: Path) -> str | None:
    return {
        ".ogg": "audio/ogg",
        ".oga": "audio/ogg",
        ".opus": "audio/ogg",
        ".mp3": "audio/mpeg",
        ".m4a": "audio/mp4",
        ".wav": "audio/wav",
        ".mp4": "video/mp4",
    }.get(path.suffix.lower())
