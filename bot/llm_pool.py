"""The LLM servers as a pool: how many replies each takes, which are healthy, where a reply goes.

No network here (bot/llm.py does the HTTP): this is the bookkeeping behind routing and the
prompt-cache affinity with llama.cpp's slots. A llama-server slot keeps the KV cache of the last
prompt it processed, so a channel whose next turn lands on the same slot only pays for the new
tokens (`cache_prompt`). The pool knows which of its own requests hold which slot, so it can pin a
channel's turn to that slot (`id_slot`) only when the slot is free: llama-server makes a request
for a busy slot wait for it, and the pool never waits for a slot while another one is free.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from bot.urls import redact_url

Routing = Literal["least-busy", "failover"]

# Replies at once for a server that does not report its slots (vLLM, Ollama, OpenAI...): enough to
# use a batching server's throughput a little, few enough not to pile up waits at a small one.
# Set llm.concurrency to change it (README "Behind an existing llama.cpp or vLLM server").
DEFAULT_SLOTS = 4
# Channels whose last slot is remembered: beyond that, the least recently active are forgotten.
_HOMES_KEPT = 10_000

# Where a reply landed: "hit" the slot caching its chat's prompt, "moved" another slot (its own
# was busy or taken), "new" a chat without a slot yet, "shared" unpinned because another client
# uses the server, "off" no affinity asked for.
AffinityResult = Literal["hit", "moved", "new", "shared", "off"]
# After seeing another client's request on a server, pin no slot there for this long: a pinned
# request waits for its slot while another client holds it, however many slots are free.
SHARED_HOLD_S = 60.0
# A slot released this recently may still show as processing in /slots (the server finishing).
_JUST_RELEASED_S = 1.0


@dataclass(eq=False)
class Backend:
    """One OpenAI-compatible server, as the pool sees it."""

    url: str  # base URL, no trailing slash
    index: int  # position in the configuration (failover order)
    slots: int = DEFAULT_SLOTS  # how many of our requests it runs at once
    source: str = "default"  # where `slots` comes from: "llama.cpp /props", "default", ...
    llama: bool = False  # llama.cpp: understands id_slot and cache_prompt
    healthy: bool = True
    problem: str = ""  # why it is unhealthy
    in_flight: int = 0  # our requests it holds (or that were handed a place and are starting)
    busy: set[int] = field(default_factory=set)  # llama.cpp slot ids our requests hold
    owners: dict[int, str] = field(default_factory=dict)  # slot id -> whose prompt it caches
    last_used: dict[int, float] = field(default_factory=dict)  # slot id -> when (monotonic)
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    watch_slots: bool = False  # look at /slots for other clients' requests (llama.cpp)
    shared_until: float = 0.0  # another client was seen using slots: no pinning until then
    foreign: int = 0  # slots another client held at the last look at /slots

    @property
    def free(self) -> int:
        """Places left before our requests would wait at the server."""
        return max(0, self.slots - self.in_flight)

    @property
    def name(self) -> str:
        """The URL as it may be shown (no credentials)."""
        return redact_url(self.url)


@dataclass(eq=False)
class Lease:
    """A request's place on a backend; `slot` is the llama.cpp slot to pin (None: any)."""

    backend: Backend
    slot: int | None
    affinity: AffinityResult


class BackendPool:
    """Routing (least-busy or failover), health, capacity, and slot affinity over the backends."""

    def __init__(
        self,
        urls: Iterable[str],
        routing: Routing,
        *,
        default_slots: int = DEFAULT_SLOTS,
        affinity: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backends = [
            Backend(url.rstrip("/"), index, slots=default_slots) for index, url in enumerate(urls)
        ]
        if not self.backends:
            raise ValueError("an LLM pool needs at least one backend")
        self.routing: Routing = routing
        self.affinity = affinity
        self.preferred = 0  # failover: the backend that answered last comes first
        self._clock = clock
        # Per affinity key (a channel): the backend and slot of its last turn, most recent last.
        self._homes: OrderedDict[str, tuple[Backend, int | None]] = OrderedDict()
        self._listeners: list[Callable[[int], None]] = []
        self._capacity = self.capacity
        self.stats: dict[AffinityResult, int] = {
            "hit": 0,
            "moved": 0,
            "new": 0,
            "shared": 0,
            "off": 0,
        }

    # ------------------------------------------------------------------ capacity

    @property
    def capacity(self) -> int:
        """Replies that can run at once now: the healthy servers' slots (failover: the first's).

        When no server is healthy every one counts, so turns still reach the client and fail
        fast with a clear message instead of waiting in line for a server that is down.
        """
        serving = [b for b in self.backends if b.healthy] or self.backends
        if self.routing == "failover":
            return self._rotation(serving)[0].slots
        return sum(b.slots for b in serving)

    @property
    def in_use(self) -> int:
        """Our requests in flight on every backend."""
        return sum(b.in_flight for b in self.backends)

    def on_capacity(self, listener: Callable[[int], None]) -> None:
        """Call `listener(capacity)` when the capacity changes (a server down, back, resized)."""
        self._listeners.append(listener)

    def _capacity_changed(self) -> None:
        capacity = self.capacity
        if capacity != self._capacity:
            self._capacity = capacity
            for listener in self._listeners:
                listener(capacity)

    def set_slots(self, backend: Backend, slots: int, source: str, *, llama: bool) -> None:
        """What the server reports (or the default); a changed count forgets its slot owners."""
        if slots != backend.slots or llama != backend.llama:
            backend.owners.clear()
            backend.last_used.clear()
        backend.slots = max(1, slots)
        backend.source = source
        backend.llama = llama
        for _ in range(backend.free):  # a larger server: let waiters in
            if not self._hand_over(backend):
                break
        self._capacity_changed()

    # ------------------------------------------------------------------ health

    def failed(self, backend: Backend, problem: str) -> bool:
        """Mark `backend` unhealthy; True when it was healthy until now."""
        backend.problem = problem
        if not backend.healthy:
            return False
        backend.healthy = False
        self._capacity_changed()
        return True

    def recovered(self, backend: Backend) -> bool:
        """Mark `backend` healthy again; True when it was unhealthy."""
        backend.problem = ""
        if backend.healthy:
            return False
        backend.healthy = True
        self._capacity_changed()
        return True

    def answered(self, backend: Backend) -> None:
        """`backend` streamed a reply: failover keeps using it; it is healthy."""
        self.preferred = backend.index
        self.recovered(backend)

    # ------------------------------------------------------------------ routing

    def _rotation(self, backends: list[Backend]) -> list[Backend]:
        """Failover order: from the one that answered last, then the configured order."""
        return sorted(backends, key=lambda b: (b.index - self.preferred) % len(self.backends))

    def plan(self, key: str | None) -> list[Backend]:
        """The backends to try for one reply, best first; unhealthy ones last (tried if all fail).

        failover: the configured order from the one that answered last. least-busy: the backend
        holding `key`'s prompt cache while it has a free place, then the most free places.
        """
        healthy = [b for b in self.backends if b.healthy]
        sick = [b for b in self.backends if not b.healthy]
        if self.routing == "failover":
            return self._rotation(healthy) + self._rotation(sick)
        home = self._home_backend(key)

        def rank(b: Backend) -> tuple[bool, int, int, int]:
            at_home = b is home and b.free > 0
            # Free slots as the server last showed them: other clients' requests count too.
            return (not at_home, -max(0, b.free - b.foreign), b.in_flight, b.index)

        return sorted(healthy, key=rank) + sorted(sick, key=lambda b: b.index)

    def _home_backend(self, key: str | None) -> Backend | None:
        if key is None or not self.affinity:
            return None
        home = self._homes.get(key)
        return home[0] if home is not None else None

    # ------------------------------------------------------------------ places and slots

    async def acquire(self, backend: Backend, key: str | None, *, first: bool = False) -> Lease:
        """A place on `backend` for one request, waiting (FIFO) while it has none.

        `first`: go ahead of the waiters (a reply that lost its server before its first token
        and was admitted long ago).
        """
        if backend.in_flight < backend.slots and not backend.waiters:
            backend.in_flight += 1
        else:
            place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if first:
                backend.waiters.appendleft(place)
            else:
                backend.waiters.append(place)
            try:
                await place  # resolved by release(), which hands its place over
            except BaseException:
                if place.done() and not place.cancelled():
                    self._free_place(backend)  # handed a place it can no longer use
                else:
                    backend.waiters.remove(place)
                raise
        return self._assign(backend, key)

    def release(self, lease: Lease) -> None:
        """The request ended (its stream closed): its slot and place are free."""
        backend = lease.backend
        if lease.slot is not None:
            backend.busy.discard(lease.slot)
            backend.last_used[lease.slot] = self._clock()
        self._free_place(backend)

    def _free_place(self, backend: Backend) -> None:
        if not self._hand_over(backend):
            backend.in_flight -= 1

    def _hand_over(self, backend: Backend) -> bool:
        """Give one place straight to the next waiter (no newcomer can take it in between)."""
        while backend.waiters:
            waiter = backend.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def now(self) -> float:
        """The pool's clock (monotonic seconds)."""
        return self._clock()

    def slots_seen(self, backend: Backend, processing: set[int], asked_at: float) -> bool:
        """What /slots shows as processing; True when it reveals another client (newly).

        `asked_at`: when /slots was asked. A slot ours at any moment since then (or released
        just before: the server may still be finishing it) is not another client's.
        """
        now = self._clock()
        ours_lately = {
            s for s, at in backend.last_used.items() if at >= asked_at - _JUST_RELEASED_S
        }
        foreign = processing - backend.busy - ours_lately
        backend.foreign = len(foreign)
        if not foreign:
            return False
        newly = backend.shared_until <= now
        backend.shared_until = now + SHARED_HOLD_S
        return newly

    def _assign(self, backend: Backend, key: str | None) -> Lease:
        """Pick the llama.cpp slot: the key's own if free, else a free one nobody needs soon."""
        if not self.affinity:
            self.stats["off"] += 1
            return Lease(backend, None, "off")
        if backend.llama and backend.shared_until > self._clock():
            # Our view of its slots is incomplete: let the server pick an idle one.
            self.stats["shared"] += 1
            return Lease(backend, None, "shared")
        free = [s for s in range(backend.slots) if s not in backend.busy]
        if key is None:
            if not backend.llama:
                self.stats["off"] += 1
                return Lease(backend, None, "off")
            # Pinned all the same, to a slot no chat needs soon: an unpinned request could take
            # the slot another chat is about to be pinned to, and that one would wait.
            spare = self._spare_slot(backend, free)
            backend.busy.add(spare)
            self.stats["off"] += 1
            return Lease(backend, spare, "off")
        home = self._homes.get(key)
        if not backend.llama:
            # The server chooses its slots (vLLM-style prefix caching is server-wide): staying
            # on the same backend is all the affinity there is.
            result: AffinityResult = "new" if home is None else "hit"
            if home is not None and home[0] is not backend:
                result = "moved"
            self._remember(key, backend, None)
            self.stats[result] += 1
            return Lease(backend, None, result)
        own = home[1] if home is not None and home[0] is backend else None
        if own is not None and own in free and backend.owners.get(own) == key:
            slot, result = own, "hit"  # its prompt is still in that slot's cache
        else:
            slot, result = self._spare_slot(backend, free), "new" if home is None else "moved"
        backend.busy.add(slot)
        backend.owners[slot] = key
        self._remember(key, backend, slot)
        self.stats[result] += 1
        return Lease(backend, slot, result)

    @staticmethod
    def _spare_slot(backend: Backend, free: list[int]) -> int:
        """Never-used slots first, then the one idle the longest (its chat went quiet)."""
        return min(free, key=lambda s: (s in backend.owners, backend.last_used.get(s, 0.0)))

    def _remember(self, key: str, backend: Backend, slot: int | None) -> None:
        self._homes[key] = (backend, slot)
        self._homes.move_to_end(key)
        while len(self._homes) > _HOMES_KEPT:
            self._homes.popitem(last=False)

    def status(self) -> list[dict[str, object]]:
        """Per backend: URL (no credentials), health, slots, in flight (for /healthz)."""
        return [
            {
                "url": b.name,
                "healthy": b.healthy,
                "slots": b.slots,
                "slots_from": b.source,
                "in_flight": b.in_flight,
                **({"problem": b.problem} if b.problem else {}),
            }
            for b in self.backends
        ]
