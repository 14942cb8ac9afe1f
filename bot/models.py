"""The models a chat can pick (`llm.models`, `/model NAME`) and whether a model takes images.

A model with servers of its own (`url`, or a pool in `backends`) is answered there and only
there: each distinct list of servers gets one LLM client, a pool with its own routing, health
and slot affinity, shared by the models on those servers (an Ollama serving several). A model
without servers is another model name on the default servers, sent with each request. The
settings refuse a server in two lists: two pools would each count its slots as theirs.

Whether a model takes images: `vision = true` says so; otherwise every one of its servers must
report it, as llama-server started with a multimodal projector does in `/props`
(`modalities.vision`). Only the chat API carries images.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.llm import Api, LLMClient
from bot.llm_server_api import NoAnswer
from bot.llm_settings import LLMSettings, ModelSettings

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"  # the name of the default servers and model
VISION_RECHECK_S = 300.0  # a server restarted with (or without) a projector is noticed this soon
_PROPS_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ChatModel:
    """Where a chat's requests go: a client (its servers) and the model name to send."""

    name: str
    client: LLMClient
    model: str  # sent with each request ("": the server's own)
    vision: bool  # configured to take images (else the servers are asked)
    about: str = ""


class ModelCatalog:
    """The default model and the ones `llm.models` names; `pick(name)` for a chat's choice."""

    def __init__(self, settings: LLMSettings, default: LLMClient) -> None:
        self._settings = settings
        self.default = ChatModel(DEFAULT_MODEL, default, settings.model, settings.vision)
        # One client per list of servers; the default servers' is the app's own.
        self._clients: dict[tuple[str, ...], LLMClient] = {tuple(default.urls): default}
        self._own: list[LLMClient] = []  # the clients the catalog made (and discovers, closes)
        self._models = {
            name: self._entry(name, entry, default) for name, entry in settings.models.items()
        }
        self._vision: dict[str, tuple[bool, float]] = {}  # server URL -> (reports it, when)

    def _entry(self, name: str, entry: ModelSettings, default: LLMClient) -> ChatModel:
        model = entry.model or self._settings.model
        servers = tuple(entry.servers)
        if not servers:
            return ChatModel(name, default, model, entry.vision, entry.about)
        client = self._clients.get(servers)
        if client is None:
            api: Api = "chat" if entry.api == "auto" else entry.api
            # Its own pool: routed over its servers alone. llm.concurrency is the default
            # servers' count; these report their slots (or count DEFAULT_SLOTS each). The
            # model name is each request's (the models on these servers may differ).
            update: dict[str, object] = {
                "base_url": "",
                "fallback_urls": [],
                "backends": list(servers),
                "routing": entry.routing,
                "concurrency": 0,
            }
            if entry.api_key.get_secret_value():
                update["api_key"] = entry.api_key
            client = LLMClient(self._settings.model_copy(update=update), list(servers), api)
            self._clients[servers] = client
            self._own.append(client)
        return ChatModel(name, client, model, entry.vision, entry.about)

    async def discover(self) -> int:
        """Ask the models' own servers how many replies they run at once; their total.

        (The default servers are the app's to discover.)
        """
        counts = await asyncio.gather(*(client.discover() for client in self._own))
        for client, count in zip(self._own, counts, strict=True):
            names = ", ".join(n for n, m in self._models.items() if m.client is client)
            log.info("/model %s: servers of their own, %d more replies at once", names, count)
        return sum(counts)

    @property
    def capacity(self) -> int:
        """Replies the models' own healthy servers run at once (0: none of their own)."""
        return sum(client.capacity for client in self._own)

    def status(self) -> dict[str, object]:
        """Per model with servers of its own: routing and each server's health and slots, as
        /healthz shows them (no URL credentials)."""
        return {
            name: chosen.client.status()
            for name, chosen in self._models.items()
            if chosen.client is not self.default.client
        }

    def on_capacity(self, listener: Callable[[int], None]) -> None:
        """Call `listener(capacity)` when the models' own servers' capacity changes."""
        for client in self._own:
            client.pool.on_capacity(lambda _: listener(self.capacity))

    @property
    def names(self) -> list[str]:
        """Every model a chat can pick, the default first."""
        return [DEFAULT_MODEL, *self._models]

    def find(self, name: str) -> ChatModel | None:
        """The model called `name` (case ignored), or None."""
        name = name.strip().lower()
        return self.default if name == DEFAULT_MODEL else self._models.get(name)

    def pick(self, name: str) -> ChatModel:
        """A chat's model: the one it picked, or the default (also for a name no longer set)."""
        if not name or name == DEFAULT_MODEL:
            return self.default
        chosen = self._models.get(name)
        if chosen is None:
            log.warning("a chat picked the model %r, which llm.models no longer has", name)
            return self.default
        return chosen

    async def sees_images(self, chosen: ChatModel) -> bool:
        """Whether requests to `chosen` may carry images."""
        if chosen.client.api != "chat":
            return False  # a raw completion prompt has no place for a picture
        if chosen.vision:
            return True
        for url in chosen.client.urls:
            if not await self._reports_vision(chosen.client, url):
                return False
        return True

    async def _reports_vision(self, client: LLMClient, url: str) -> bool:
        known = self._vision.get(url)
        if known is not None and time.monotonic() - known[1] < VISION_RECHECK_S:
            return known[0]
        try:
            # Asked with the servers' own session: their API key (the model's, else llm.api_key).
            props = await client.http.props(url, timeout_s=_PROPS_TIMEOUT_S)
        except NoAnswer as exc:
            # Unreachable now: say no, and ask again at the next picture.
            log.info("could not ask a model server whether it takes images: %s", exc)
            return False
        modalities = props.get("modalities")
        reports = isinstance(modalities, dict) and modalities.get("vision") is True
        self._vision[url] = (reports, time.monotonic())
        return reports

    async def close(self) -> None:
        """Close the clients the catalog made."""
        for client in self._own:
            await client.close()
