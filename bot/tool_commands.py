"""`/tools`: the tools this chat's model can call, or why there are none."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.channel_config import ChannelSettings
from bot.config import Settings
from bot.messages import Msg, say
from bot.storage import HistoryStore
from bot.types import IncomingMessage

if TYPE_CHECKING:
    from bot.models import ModelCatalog
    from bot.tools.hub import ToolHub

_ABOUT_CHARS = 120  # a tool's description is cut here: its first line, briefly


class ToolCommands:
    """Answers `/tools` from the chat's settings, its model and the running tool servers."""

    def __init__(
        self,
        settings: Settings,
        store: HistoryStore,
        hub: ToolHub | None,
        models: ModelCatalog | None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._hub = hub
        self._models = models

    async def listing(self, msg: IncomingMessage, channel_id: int, args: str) -> str:
        """The tools this chat's model is offered, or why it is offered none."""
        hub = self._hub
        if hub is None:
            return say(Msg.TOOLS_NONE_SET_UP, lang=msg.language)
        chat = await ChannelSettings.load(self._store, self._settings, channel_id)
        # Only the chat API carries tools: a base model (raw completion) never gets them.
        if self._models is not None and self._models.pick(chat.model).client.api != "chat":
            return say(Msg.TOOLS_BASE_MODEL, lang=msg.language)
        if not chat.tools:
            return say(Msg.TOOLS_OFF, lang=msg.language)
        tools = hub.tools()
        if not tools:
            return say(Msg.TOOLS_NOT_READY, lang=msg.language)
        lines = [say(Msg.TOOLS_SHOWN, lang=msg.language)]
        for tool in tools:
            about = _brief(tool.description)
            if about:
                lines.append(
                    say(
                        Msg.TOOL_LINE_ABOUT,
                        lang=msg.language,
                        name=tool.name,
                        server=tool.server,
                        about=about,
                    )
                )
            else:
                lines.append(
                    say(Msg.TOOL_LINE, lang=msg.language, name=tool.name, server=tool.server)
                )
        return "\n".join(lines)


def _brief(description: str) -> str:
    """A description's first line, cut to a glance."""
    first = description.strip().split("\n", 1)[0].strip()
    return first if len(first) <= _ABOUT_CHARS else first[: _ABOUT_CHARS - 1].rstrip() + "…"
