"""Configuration: a TOML file overridden by `PARLEY_<SECTION>__<KEY>` environment variables.

Secrets (tokens, API keys) are `SecretStr`: they print as `**********` and never reach logs.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.cache_settings import CacheSettings
from bot.errors import ConfigError
from bot.languages import AUTO, FOLLOW, candidates, is_setting, normalize, primary
from bot.llm_settings import LLMSettings
from bot.paths import default_database_path
from bot.section import Section
from bot.tools.settings import ToolsSettings
from bot.urls import url_passwords

VoiceMode = Literal["off", "reply-to-voice", "always"]

# The largest voice note accepted by default: Telegram's getFile limit, the strictest platform's.
DEFAULT_MAX_AUDIO_BYTES = 20 * 1024 * 1024


class EngineSettings(Section):
    """Defaults for every channel; admins override them per channel with `config set`."""

    bot_name: str = "Parley"
    """The bot's name: in its prompt and /help, and the wake word in Discord voice channels."""
    persona: str = "default"
    """default, concise, friendly, teacher, coder, pirate, or any custom text."""
    system_prompt: str = ""
    """Extra instructions appended to the persona."""
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    """Sampling temperature (with the bundled base model 0.3, unless set here)."""
    max_tokens: int = Field(512, ge=1, le=32768)
    """The longest reply, in tokens."""
    history_tokens: int = Field(2048, ge=0)
    """How much of the past conversation the model sees, in tokens (newest turns kept)."""
    memory_tokens: int = Field(256, ge=0)
    """What memory recalls, in tokens: the user's facts from /remember, then older turns of the
    conversation that match the message (full-text search); 0: none."""
    group_context: bool = True
    """Groups: recent messages not addressed to the bot go into the prompt as background."""
    group_context_tokens: int = Field(256, ge=0)
    """The budget for that background, in tokens (newest kept)."""
    voice_mode: VoiceMode = "reply-to-voice"
    """When the bot answers with a voice note: off, reply-to-voice (answer voice with voice),
    always."""
    language: str = AUTO
    """The language Parley speaks (its own messages, command menus, persona presets, voice):
    "auto" is each user's platform language (Telegram's language_code, Discord's locale, the
    console's LANG), or a code such as en or fr for everyone. Untranslated languages get
    English (docs/languages.md)."""
    stt_language: str = FOLLOW
    """The voice notes' language: "follow" is the language Parley speaks in the chat (above), an
    ISO code (e.g. en, de) fixes it, "auto" lets Whisper detect it (trusted only when
    confident)."""
    max_input_chars: int = Field(4000, ge=1)
    """Longer messages are refused with a clear message."""
    max_reply_chars: int = Field(20_000, ge=1)
    """A reply stops here (answer and reasoning together), kept and marked: a cap for a server
    that ignores max_tokens or never ends its stream."""
    max_reply_messages: int = Field(8, ge=1)
    """...or when it fills this many platform messages."""
    user_messages_per_minute: int = Field(20, ge=0)
    """Per user, across chats; more get a polite "slow down"; 0: no limit."""
    blocked_users: list[str] = []
    """"platform:user_id" entries, e.g. "telegram:12345", "discord:4242": ignored everywhere."""

    @field_validator("language")
    @classmethod
    def _language_code(cls, value: str) -> str:
        if not is_setting(value):
            raise ValueError("must be auto or a language code such as en, fr or pt-BR")
        return value if value == AUTO else normalize(value)


class StorageSettings(Section):
    """Where history lives: a SQLite file (`path`), or PostgreSQL when `url` is set."""

    path: str = Field(default_factory=default_database_path)
    """The SQLite database (WAL mode); the logs of llama-server and of the console chat go next
    to it. Default: data/parley.db in a source checkout; installed as a package, parley.db in
    the user's data directory ($XDG_DATA_HOME/parley, else ~/.local/share/parley)."""
    url: SecretStr = SecretStr("")
    """PostgreSQL instead of SQLite, e.g. postgresql://user:password@host:5432/db, shared by several
    bot processes. A secret (it holds the password): prefer the environment variable. Empty:
    SQLite at `path`."""
    pool_size: int = Field(10, ge=1, le=1000)
    """PostgreSQL connections per process (plus one for its turn locks)."""
    retention_days: int = Field(0, ge=0)
    """Delete messages older than this many days; 0: keep them until /reset or /forget."""

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (or leave it empty for SQLite)")
        return value


class STTSettings(Section):
    """Speech to text: faster-whisper, on the CPU, offline."""

    model: str = "base"
    """"base" (multilingual), "tiny.en" (small, English), or a CTranslate2 model folder."""
    cache_dir: str = ""
    """Where the bundled model's parts are joined. Empty: ~/.cache/parley."""
    max_bytes: int = Field(DEFAULT_MAX_AUDIO_BYTES, ge=1)
    """The largest voice note accepted (20 MB: Telegram's download limit)."""
    max_seconds: float = Field(300.0, gt=0)
    """The longest voice note accepted, in seconds."""
    workers: int = Field(1, ge=1, le=8)
    """Transcriptions at once (each uses the CPU fully)."""
    show_transcript: bool = True
    """Post "🎤 <what you said>" before answering."""


class TTSSettings(Section):
    """Synthesised voice replies."""

    backends: list[Literal["edge", "piper", "espeak"]] = ["piper", "espeak"]
    """The voices, tried in order: piper (bundled, offline), espeak-ng (offline), edge-tts
    ("edge": Microsoft's, online; only when listed, e.g. ["piper", "edge", "espeak"] as a
    fallback, or first to prefer it)."""
    edge_voice: str = "en-US-AriaNeural"
    """edge-tts's voice."""
    edge_rate: str = "+0%"
    """edge-tts's speaking rate, e.g. "+10%"."""
    edge_timeout_s: float = Field(5.0, gt=0)
    """edge-tts gives up this quickly when unreachable, then the next voice speaks."""
    piper_model: str = ""
    """A piper .onnx voice. Empty: the bundled joe-us voice."""
    espeak_voice: str = "en"
    """espeak-ng's voice (a language code)."""
    voices: dict[str, list[str]] = {"fr": ["fr-FR-DeniseNeural", "fr"]}
    """The voices of a language, e.g. fr = ["fr-FR-DeniseNeural", "fr", "/voices/fr.onnx"]: each
    backend takes its own kind (edge-tts: a name ending in Neural; piper: a .onnx path;
    espeak-ng: anything else, else the language code itself). A backend without a voice for the
    reply's language is skipped; a language not listed uses the three voices above."""
    max_chars: int = Field(1500, ge=1)
    """Longer replies are spoken up to here (the text is always sent complete)."""

    @field_validator("voices", mode="before")
    @classmethod
    def _voice_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):  # one voice may be given as a plain string
            return {key: [v] if isinstance(v, str) else v for key, v in value.items()}
        return value

    @field_validator("voices")
    @classmethod
    def _voices_by_language(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        checked: dict[str, list[str]] = {}
        for language, names in value.items():
            tag = normalize(language)
            if not tag:
                raise ValueError(f"{language!r} is not a language code (e.g. fr, pt-BR)")
            kinds = [voice_backend(name) for name in names]
            if not all(name.strip() for name in names) or len(set(kinds)) != len(kinds):
                raise ValueError(f"{language}: at most one voice per backend, none empty")
            checked[tag] = [name.strip() for name in names]
        return checked

    def voice(self, backend: str, lang: str) -> str | None:
        """The voice `backend` speaks `lang` with: "" is piper's bundled voice; None: it has
        none for that language (the next backend speaks)."""
        for tag in candidates(lang):
            if tag in self.voices:
                named = [v for v in self.voices[tag] if voice_backend(v) == backend]
                if named:
                    return named[0]
                return primary(tag) if backend == "espeak" else None
        return {"edge": self.edge_voice, "piper": self.piper_model, "espeak": self.espeak_voice}[
            backend
        ]


def voice_backend(name: str) -> Literal["edge", "piper", "espeak"]:
    """Which backend a voice of `tts.voices` is for, by its shape."""
    if name.strip().lower().endswith(".onnx"):
        return "piper"
    if name.strip().endswith("Neural"):
        return "edge"
    return "espeak"


MIN_ADMIN_PASSWORD_CHARS = 8


class HTTPSettings(Section):
    """The operations endpoint: /healthz, /metrics and the admin console (/admin)."""

    enabled: bool = False
    """Serve the endpoint."""
    host: str = "127.0.0.1"
    """Where it listens; on loopback, reach /admin through an SSH tunnel (docs/admin-console.md)."""
    port: int = Field(8080, ge=0, le=65535)
    """Its port."""
    admin: bool = True
    """Serve the admin console at /admin; it stays locked until a password is set."""
    admin_password: SecretStr = SecretStr("")
    """The console's password, for containers (hashed in memory at start); elsewhere
    `parley admin set-password` stores an argon2 hash in a file."""
    admin_password_file: str = ""
    """Where `parley admin set-password` keeps the hash. Empty: "admin-password" beside
    `storage.path`."""
    tls_cert: str = ""
    """A PEM certificate chain: serve HTTPS directly (with `tls_key`)."""
    tls_key: str = ""
    """The PEM private key for `tls_cert`."""
    behind_tls_proxy: bool = False
    """A reverse proxy serves Parley over HTTPS (session cookies are then Secure)."""

    @field_validator("admin_password")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if 0 < len(value.get_secret_value()) < MIN_ADMIN_PASSWORD_CHARS:
            raise ValueError(f"must be at least {MIN_ADMIN_PASSWORD_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _cert_and_key(self) -> HTTPSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @property
    def tls(self) -> bool:
        """True when browsers reach this endpoint over HTTPS (directly or through a proxy)."""
        return bool(self.tls_cert) or self.behind_tls_proxy


class LoggingSettings(Section):
    """How Parley logs; tokens, keys and passwords are redacted at every level."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The threshold."""
    format: Literal["text", "json"] = "text"
    """"text": readable lines; "json": one object per line, for a log collector."""


class PlatformSettings(Section):
    """Base of a platform's section ([telegram], [discord]), defined by its adapter package.

    `NAME` is the TOML table and the environment prefix (`PARLEY_<NAME>__<KEY>`).
    """

    NAME: ClassVar[str] = ""

    token: SecretStr = SecretStr("")
    """The bot's token (a secret); empty: this platform is off."""

    @property
    def enabled(self) -> bool:
        """A platform runs when its token is set."""
        return bool(self.token.get_secret_value())

    @classmethod
    def of(cls, settings: Settings) -> Self:
        """This platform's section of `settings`."""
        section = getattr(settings, cls.NAME, None)
        if not isinstance(section, cls):
            raise LookupError(f"these settings have no [{cls.NAME}] section")
        return section


class Settings(BaseSettings):
    """All of Parley's settings: the core's sections, plus one per platform (`settings_class`)."""

    model_config = SettingsConfigDict(
        env_prefix="PARLEY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    llm: LLMSettings = LLMSettings()
    engine: EngineSettings = EngineSettings()
    storage: StorageSettings = StorageSettings()
    stt: STTSettings = STTSettings()
    tts: TTSSettings = TTSSettings()
    http: HTTPSettings = HTTPSettings()
    logging: LoggingSettings = LoggingSettings()
    tools: ToolsSettings = ToolsSettings()
    cache: CacheSettings = CacheSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first, then what load_settings read from the TOML file, then defaults.
        return (env_settings, init_settings)

    def platform_sections(self) -> list[PlatformSettings]:
        """The platforms' sections, in the order they were composed."""
        values = (getattr(self, name) for name in type(self).model_fields)
        return [value for value in values if isinstance(value, PlatformSettings)]

    def secrets(self) -> list[str]:
        """Every configured secret value (any `SecretStr`, in any section) and the password in
        any URL setting (http://user:password@host), for redaction."""
        found: list[str] = []
        sections = (getattr(self, name) for name in type(self).model_fields)
        for section in sections:
            found += _secret_values(section)
        return list(dict.fromkeys(found))


def _secret_values(model: BaseModel) -> list[str]:
    values: list[str] = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        # Sections nest (llm.server), some are keyed (llm.models.NAME.api_key), URLs come in
        # lists (llm.fallback_urls).
        if isinstance(value, dict):
            value = list(value.values())
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, SecretStr) and item.get_secret_value():
                # A secret URL (storage.url, mqtt.url) is hidden whole, and its password wherever
                # it is shown on its own, as written (percent-encoded) and decoded.
                values += [item.get_secret_value(), *url_passwords(item.get_secret_value())]
            elif isinstance(item, str):
                values += url_passwords(item)
            elif isinstance(item, BaseModel):
                values += _secret_values(item)
    return values


@functools.cache
def settings_class(sections: tuple[type[PlatformSettings], ...] = ()) -> type[Settings]:
    """`Settings` with one more section per platform, as each adapter package defines it."""
    if not sections:
        return Settings
    fields: dict[str, Any] = {
        section.NAME: (section, Field(default_factory=section)) for section in sections
    }
    return create_model("Settings", __base__=Settings, **fields)


def resolve_config_path(cli_path: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """`--config PATH`, else `PARLEY_CONFIG`, else ./config.toml if present, else None."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if cli_path:
        return Path(cli_path)
    if environ.get("PARLEY_CONFIG"):
        return Path(environ["PARLEY_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


# A value is never echoed in an error when a word of its key's name is one of these (api_key,
# webhook_secret; not max_tokens), or when it is a URL with credentials in it: it may be a
# credential, and errors reach logs and CI output.
_SECRET_WORDS = frozenset({"token", "key", "password", "passwd", "secret", "credentials", "auth"})
_URL_CREDENTIALS = re.compile(r"://[^/@\s]*@")


def _may_be_secret(name: str, value: Any) -> bool:
    if _SECRET_WORDS.intersection(name.lower().split("_")):
        return True
    return isinstance(value, str) and bool(_URL_CREDENTIALS.search(value))


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at `loc` (minus its last part) accepts."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _describe(model: type[BaseModel], error: Any) -> str:
    loc: tuple[Any, ...] = tuple(error["loc"])
    key = ".".join(str(part) for part in loc) or "(file)"
    why = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        # An unknown key may be a mistyped secret (telegram.tokn = '123:abc'): no value shown.
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(model, loc), n=1)
        hint = f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""
        return f"config: {key}: unknown key{hint}"
    value = error.get("input")
    if loc and _may_be_secret(str(loc[-1]), value):
        shown = "<hidden>"
    elif isinstance(value, dict):
        shown = "{...}"
    else:
        shown = repr(value)
    return f"config: {key} = {shown}: {why}"


def load_settings(
    path: str | Path | None = None, sections: tuple[type[PlatformSettings], ...] = ()
) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError listing every problem.

    `sections` are the platforms' settings models (`adapters.platforms()` gives them).
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"config: {path}: file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"config: {path}: cannot read: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config: {path}: not valid TOML: {exc}"]) from None
    model = settings_class(sections)
    try:
        return model(**data)
    except ValidationError as exc:
        problems = [_describe(model, err) for err in exc.errors(include_url=False)]
        raise ConfigError(problems) from None
    except ValueError as exc:  # pydantic-settings: an env var holding malformed JSON
        raise ConfigError([f"config: environment: {exc}"]) from None
