"""Per-channel settings: the configured defaults overridden by what admins set with `config set`.

Every key's default is the `[engine]` field of the same name, except `tools`, whose default is
`tools.enabled`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from bot.config import EngineSettings, Settings, VoiceMode
from bot.errors import StorageError
from bot.languages import turn_language

if TYPE_CHECKING:
    from bot.storage import HistoryStore

MODEL_KEY = "model"  # the chat setting /model stores (and audits)
TOOLS_KEY = "tools"  # the chat setting that offers the configured tools to the model

# Keys `config set` accepts, with the one-line help `config show` prints.
CHANNEL_KEYS: dict[str, str] = {
    "persona": "persona preset or custom text",
    "system_prompt": "extra instructions added to the persona",
    "temperature": "sampling temperature, 0 to 2",
    "max_tokens": "longest reply, in tokens",
    "history_tokens": "how much past conversation the model sees, in tokens",
    "memory_tokens": "how much remembered context (facts, older turns) the model sees, in tokens",
    "group_context": "groups: show the model recent messages not addressed to it (true/false)",
    "group_context_tokens": "how much of that group background the model sees, in tokens",
    "voice_mode": "off | reply-to-voice | always",
    "language": "the language I speak here: auto (each user's own), or a code like en, fr",
    "stt_language": "voice note language: follow (the one above), a code (e.g. en, de), or auto",
    TOOLS_KEY: "let the model call the configured tools: on | off",
}
_ENGINE_KEYS = tuple(key for key in CHANNEL_KEYS if key != TOOLS_KEY)
_ON_OFF: TypeAdapter[bool] = TypeAdapter(bool)  # on/off, true/false, yes/no, 1/0


def channel_defaults(settings: Settings) -> dict[str, Any]:
    """Each `config set` key's value in a chat that never set it."""
    defaults = {key: getattr(settings.engine, key) for key in _ENGINE_KEYS}
    defaults[TOOLS_KEY] = settings.tools.enabled
    return defaults


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """The settings one reply uses, resolved at the time the reply starts."""

    persona: str
    system_prompt: str
    temperature: float
    max_tokens: int
    history_tokens: int
    memory_tokens: int
    group_context: bool
    group_context_tokens: int
    voice_mode: VoiceMode
    language: str
    stt_language: str
    tools: bool  # the model is offered the configured tools
    # The model the chat picked with /model (llm.models); "": the default. Not a `config set`
    # key: /model checks the name against the configuration.
    model: str = ""

    @classmethod
    def resolve(cls, settings: Settings, overrides: dict[str, Any]) -> ChannelSettings:
        """The configured defaults (`settings`) with a chat's `overrides`."""
        values = channel_defaults(settings)
        values.update({k: v for k, v in overrides.items() if k in CHANNEL_KEYS})
        model = overrides.get(MODEL_KEY)
        return cls(**values, model=model if isinstance(model, str) else "")

    @classmethod
    async def load(
        cls, store: HistoryStore, settings: Settings, channel_id: int
    ) -> ChannelSettings:
        """A chat's settings as they are now (read fresh: another process may have changed them)."""
        return cls.resolve(settings, await store.channel_settings(channel_id))


async def chat_language(
    store: HistoryStore, settings: Settings, platform: str, channel_key: str, user: str
) -> str:
    """The language to speak in a chat to a user whose platform language is `user`: the chat's
    `language` setting (else `engine.language`) unless "auto", else `user`; English when none
    names one. With the store failing, the chat's setting is unknown: `engine.language` then."""
    try:
        channel_id = await store.channel_id(platform, channel_key)
        setting = (await ChannelSettings.load(store, settings, channel_id)).language
    except StorageError:  # the store logged it; the turn reports it where it matters
        setting = settings.engine.language
    return turn_language(setting, user)


def parse_channel_value(settings: Settings, key: str, raw: str) -> Any:
    """Validate a `config set` value with the same rules as the config file; ValueError says why."""
    if key not in CHANNEL_KEYS:
        raise ValueError(f"unknown key {key!r}; keys: {', '.join(CHANNEL_KEYS)}")
    try:
        if key == TOOLS_KEY:
            return _ON_OFF.validate_python(raw.strip())
        engine = settings.engine.model_dump()
        checked = EngineSettings.model_validate({**engine, key: raw.strip()})
    except ValidationError as exc:
        raise ValueError(exc.errors(include_url=False)[0]["msg"]) from None
    return getattr(checked, key)
