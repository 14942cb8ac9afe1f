"""The world of the fake Discord: one guild, its channels, roles and users, and their payloads.

`DiscordWorld` holds the state the fake's REST and gateway halves share (messages, interactions,
registered commands, DM channels) and builds the JSON objects Discord sends for them, with the
fields discord.py reads.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.fakes.clock import ManualClock as ManualClock  # its old home: still importable here

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024  # what an interaction says the user may upload

# Message flags.
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_VOICE_MESSAGE = 1 << 13

# Permission bits.
PERM_MANAGE_GUILD = 1 << 5
# View channel, send, attach, read history, use application commands, send voice messages;
# Connect and Speak in voice channels (Discord's @everyone defaults).
PERM_CONNECT = 1 << 20
PERM_SPEAK = 1 << 21
PERM_MEMBER = (
    (1 << 10)
    | (1 << 11)
    | (1 << 15)
    | (1 << 16)
    | (1 << 31)
    | (1 << 46)
    | PERM_CONNECT
    | PERM_SPEAK
)

# Interaction and option types.
INTERACTION_APPLICATION_COMMAND = 2
OPTION_SUB_COMMAND = 1
OPTION_SUB_COMMAND_GROUP = 2
OPTION_CHANNEL = 7
# The locales Discord takes in name_localizations and description_localizations (its API
# reference, "Locales").
DISCORD_LOCALES = frozenset({
    "id", "da", "de", "en-GB", "en-US", "es-ES", "es-419", "fr", "hr", "it", "lt", "hu", "nl",
    "no", "pl", "pt-BR", "ro", "fi", "sv-SE", "vi", "tr", "cs", "el", "bg", "ru", "uk", "hi",
    "th", "zh-CN", "ja", "zh-TW", "ko",
})  # fmt: skip


_snowflakes = itertools.count(1_200_000_000_000_000_000)
# Guilds added by `add_guild` take ids from their own range, stepped so that each lands on the
# shard a test asks for ((id >> 22) % shard_count, as Discord routes them).
_guild_snowflakes = itertools.count(1_300_000_000_000_000_000 >> 22)


def _localization_problems(item: dict[str, Any]) -> list[str]:
    """What Discord refuses in a command's or option's localized names and descriptions."""
    name = item.get("name", "")
    problems = []
    names = item.get("name_localizations") or {}
    descriptions = item.get("description_localizations") or {}
    for locale in [*names, *descriptions]:
        if locale not in DISCORD_LOCALES:
            problems.append(f"{name}: {locale!r} is not a Discord locale")
    for locale, localized in names.items():
        if not re.match(r"^[-_\w]{1,32}$", localized) or localized != localized.lower():
            problems.append(f"{name}: bad {locale} name {localized!r}")
    for locale, localized in descriptions.items():
        if not 1 <= len(localized) <= 100:
            problems.append(f"{name}: {locale} description must be 1-100 characters")
    for choice in item.get("choices", []):
        for locale in choice.get("name_localizations") or {}:
            if locale not in DISCORD_LOCALES:
                problems.append(f"{name}: choice {locale!r} is not a Discord locale")
    return problems


def snowflake() -> int:
    """A fresh, increasing id."""
    return next(_snowflakes)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class FakeUser:
    """A member of the fake world."""

    id: int
    name: str
    role_ids: tuple[int, ...] = ()
    bot: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name.lower(),
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class FilePart:
    """One uploaded file of a multipart request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class FakeMessage:
    """A message in a channel; `writes` holds its content after creation and after every edit."""

    id: int
    channel_id: int
    author: FakeUser
    content: str
    flags: int = 0
    attachments: list[dict[str, Any]] = field(default_factory=list)
    files: list[FilePart] = field(default_factory=list)
    reference: int | None = None
    interaction_id: int | None = None
    writes: list[str] = field(default_factory=list)
    deleted: bool = False


@dataclass(frozen=True)
class FakeGuild:
    """A guild added to the world (besides the default one), with its one text channel."""

    id: int
    name: str
    channel_id: int


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard Discord sends a guild's events to; DMs (no guild) go to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


@dataclass
class FakeInteraction:
    """A slash command the fake dispatched, and how the bot answered it."""

    id: int
    token: str
    channel_id: int
    guild_id: int | None
    user: FakeUser
    created_at: float
    callback_type: int | None = None
    late_callback: bool = False
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    locale: str = "en-US"  # the user's Discord client language


class DiscordWorld:
    """One guild ("Parley Test Server") with #general, a thread, two roles and three members."""

    GUILD_ID = 1_100_000_000_000_000_001
    GENERAL_ID = 1_100_000_000_000_000_002
    THREAD_ID = 1_100_000_000_000_000_003
    MOD_ROLE_ID = 1_100_000_000_000_000_004  # has Manage Server
    HELPER_ROLE_ID = 1_100_000_000_000_000_005  # no extra permissions
    APPLICATION_ID = 1_100_000_000_000_000_006
    BOT = FakeUser(1_100_000_000_000_000_007, "Parley", bot=True)
    ALICE = FakeUser(1_100_000_000_000_000_008, "Alice")
    BOB = FakeUser(1_100_000_000_000_000_009, "Bob", role_ids=(MOD_ROLE_ID,))
    CAROL = FakeUser(1_100_000_000_000_000_010, "Carol", role_ids=(HELPER_ROLE_ID,))
    OWNER_ID = 1_100_000_000_000_000_011  # owns the guild (and so has every permission)

    def __init__(self, *, grant_message_content: bool) -> None:
        self.grant_message_content = grant_message_content
        self.preferred_locale = "en-US"  # the guilds' language (Server Settings > Community)
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self._dm_channels: dict[int, int] = {}
        self._command_ids: dict[tuple[int | None, str], int] = {}
        # Added by the voice fake: voice channels and who is in them, part of GUILD_CREATE.
        self.extra_channels: list[dict[str, Any]] = []
        self.voice_states: list[dict[str, Any]] = []
        self.guilds: dict[int, FakeGuild] = {}  # added guilds, by id (the default one is not in)

    def add_guild(self, name: str, *, shard: tuple[int, int] | None = None) -> FakeGuild:
        """A new guild with a #general channel; `shard` = (shard_id, shard_count) it must be on."""
        while True:
            guild_id = (next(_guild_snowflakes) << 22) | 1
            if shard is None or shard_of(guild_id, shard[1]) == shard[0]:
                break
        guild = FakeGuild(guild_id, name, snowflake())
        self.guilds[guild_id] = guild
        return guild

    def guild_of(self, channel_id: int) -> int | None:
        """The guild a channel belongs to; None for a DM channel."""
        if self.is_dm(channel_id):
            return None
        for guild in self.guilds.values():
            if guild.channel_id == channel_id:
                return guild.id
        return self.GUILD_ID

    def dm_channel(self, user: FakeUser) -> int:
        """The id of the DM channel between `user` and the bot."""
        if user.id not in self._dm_channels:
            self._dm_channels[user.id] = snowflake()
        return self._dm_channels[user.id]

    def known_channel(self, channel_id: int) -> bool:
        """#general, the thread, or a DM channel."""
        added = {g.channel_id for g in self.guilds.values()}
        return channel_id in {self.GENERAL_ID, self.THREAD_ID, *self._dm_channels.values(), *added}

    # -- payloads --------------------------------------------------------------------------

    def _roles(self, guild_id: int) -> list[dict[str, Any]]:
        def role(role_id: int, name: str, permissions: int, position: int) -> dict[str, Any]:
            return {
                "id": str(role_id),
                "name": name,
                "permissions": str(permissions),
                "position": position,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
                "flags": 0,
            }

        return [
            role(guild_id, "@everyone", PERM_MEMBER, 0),
            role(self.MOD_ROLE_ID, "Moderator", PERM_MANAGE_GUILD, 2),
            role(self.HELPER_ROLE_ID, "Helper", 0, 1),
        ]

    def _permissions(self, user: FakeUser) -> int:
        value = PERM_MEMBER
        if self.MOD_ROLE_ID in user.role_ids:
            value |= PERM_MANAGE_GUILD
        return value

    def _member_payload(self, user: FakeUser, *, with_user: bool = True) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "roles": [str(r) for r in user.role_ids],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
        }
        if with_user:
            payload["user"] = user.payload()
        return payload

    def _channel_payload(self, channel_id: int) -> dict[str, Any]:
        if channel_id == self.THREAD_ID:
            return {
                "id": str(self.THREAD_ID),
                "type": 11,
                "guild_id": str(self.GUILD_ID),
                "parent_id": str(self.GENERAL_ID),
                "owner_id": str(self.ALICE.id),
                "name": "a thread",
                "thread_metadata": {
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now_iso(),
                    "locked": False,
                },
                "message_count": 0,
                "member_count": 1,
                "rate_limit_per_user": 0,
                "flags": 0,
            }
        return {
            "id": str(channel_id),
            "type": 0,
            "guild_id": str(self.guild_of(channel_id)),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
        }

    def ready_events(
        self, resume_gateway_url: str, shard: tuple[int, int] | None = None
    ) -> list[tuple[str, Any]]:
        """READY, then one GUILD_CREATE per guild, as Discord sends them after IDENTIFY.

        A sharded session (`shard` = [shard_id, shard_count] from its IDENTIFY) gets only the
        guilds on its shard, and READY says which shard it is.
        """
        guilds = [(self.GUILD_ID, "Parley Test Server", self.GENERAL_ID)]
        guilds += [(g.id, g.name, g.channel_id) for g in self.guilds.values()]
        if shard is not None:
            guilds = [g for g in guilds if shard_of(g[0], shard[1]) == shard[0]]
        ready: dict[str, Any] = {
            "v": 10,
            "user": self.BOT.payload(),
            "guilds": [{"id": str(guild_id), "unavailable": True} for guild_id, _, _ in guilds],
            "session_id": f"session-{snowflake()}",
            "resume_gateway_url": resume_gateway_url,
            "application": {"id": str(self.APPLICATION_ID), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if shard is not None:
            ready["shard"] = list(shard)
        return [("READY", ready)] + [
            ("GUILD_CREATE", self._guild_payload(*guild)) for guild in guilds
        ]

    def _guild_payload(self, guild_id: int, name: str, channel_id: int) -> dict[str, Any]:
        default = guild_id == self.GUILD_ID  # the thread and voice channels live there
        return {
            "id": str(guild_id),
            "name": name,
            "icon": None,
            "owner_id": str(self.OWNER_ID),
            "unavailable": False,
            "large": False,
            "member_count": 4,
            "roles": self._roles(guild_id),
            "channels": [
                self._channel_payload(channel_id),
                *(self.extra_channels if default else []),
            ],
            "threads": [self._channel_payload(self.THREAD_ID)] if default else [],
            # Discord sends the members who are in voice channels, whatever the guild's size.
            "members": [
                self._member_payload(self.BOT),
                *(
                    state["member"]
                    for state in (self.voice_states if default else [])
                    if "member" in state
                ),
            ],
            "presences": [],
            "voice_states": list(self.voice_states) if default else [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "joined_at": "2024-01-01T00:00:00+00:00",
            "preferred_locale": self.preferred_locale,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "premium_tier": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
        }

    def is_dm(self, channel_id: int) -> bool:
        return channel_id in self._dm_channels.values()

    def message_payload(self, message: FakeMessage, *, event: bool = False) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "author": message.author.payload(),
            "content": message.content if self._content_visible(message, event) else "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": message.attachments,
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": message.flags,
        }
        if f"<@{self.BOT.id}>" in message.content:
            payload["mentions"] = [
                {**self.BOT.payload(), "member": self._member_payload(self.BOT, with_user=False)}
            ]
        if not self.is_dm(message.channel_id):
            payload["guild_id"] = str(self.guild_of(message.channel_id))
            if event and not message.author.bot:
                payload["member"] = self._member_payload(message.author, with_user=False)
        if message.interaction_id is not None:
            payload["webhook_id"] = str(self.APPLICATION_ID)
            payload["application_id"] = str(self.APPLICATION_ID)
        if message.reference is not None:
            payload["type"] = 19  # a reply
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(message.reference),
                "channel_id": str(message.channel_id),
            }
            referenced = self.messages.get(message.reference)
            if referenced is not None and event:
                payload["referenced_message"] = self.message_payload(referenced)
        return payload

    def _content_visible(self, message: FakeMessage, event: bool) -> bool:
        # Without the message content intent Discord blanks content in gateway events, except
        # in DMs, in messages that mention the bot, and in the bot's own messages.
        if not event or self.grant_message_content or message.author.bot:
            return True
        return self.is_dm(message.channel_id) or f"<@{self.BOT.id}>" in message.content

    def interaction_payload(
        self, interaction: FakeInteraction, data: dict[str, Any]
    ) -> dict[str, Any]:
        user = interaction.user
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(self.APPLICATION_ID),
            "type": INTERACTION_APPLICATION_COMMAND,
            "token": interaction.token,
            "version": 1,
            "data": data,
            "channel_id": str(interaction.channel_id),
            "locale": interaction.locale,
            "entitlements": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
            "app_permissions": str(PERM_MEMBER),
        }
        if interaction.guild_id is None:
            payload["user"] = user.payload()
            payload["channel"] = {
                "id": str(interaction.channel_id),
                "type": 1,
                "recipients": [user.payload()],
                "flags": 0,
            }
            payload["context"] = 1
            payload["authorizing_integration_owners"] = {"0": str(user.id)}
        else:
            payload["guild_id"] = str(interaction.guild_id)
            payload["guild_locale"] = self.preferred_locale
            payload["guild"] = {
                "id": str(interaction.guild_id),
                "locale": self.preferred_locale,
                "features": [],
            }
            member = self._member_payload(user)
            member["permissions"] = str(self._permissions(user))
            payload["member"] = member
            payload["channel"] = self._channel_payload(interaction.channel_id)
            payload["context"] = 0
            payload["authorizing_integration_owners"] = {"0": str(interaction.guild_id)}
        return payload

    def resolved(self, user: FakeUser, options: list[dict[str, Any]]) -> dict[str, Any]:
        """The `resolved` objects of an interaction: the channels its options name."""
        known = {
            int(c["id"]): c
            for c in (
                self._channel_payload(self.GENERAL_ID),
                self._channel_payload(self.THREAD_ID),
                *self.extra_channels,
            )
        }
        channels: dict[str, Any] = {}
        stack = list(options)
        while stack:
            option = stack.pop()
            stack.extend(option.get("options", []))
            if option.get("type") == OPTION_CHANNEL and int(option["value"]) in known:
                channel = known[int(option["value"])]
                channels[str(channel["id"])] = {
                    **channel,
                    "permissions": str(self._permissions(user)),
                }
        return {"channels": channels} if channels else {}

    # -- registered commands ---------------------------------------------------------------

    def registered_command(self, name: str, guild_id: int | None) -> dict[str, Any]:
        for scope in (guild_id, None) if guild_id is not None else (None,):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise LookupError(f"/{name} is not registered with Discord (was the tree synced?)")

    @staticmethod
    def command_options(
        schema: dict[str, Any], path: list[str], values: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if path:
            for option in schema.get("options", []):
                if option["name"] == path[0] and option["type"] in (
                    OPTION_SUB_COMMAND,
                    OPTION_SUB_COMMAND_GROUP,
                ):
                    inner = DiscordWorld.command_options(option, path[1:], values)
                    return [{"name": option["name"], "type": option["type"], "options": inner}]
            raise LookupError(f"no subcommand {path[0]!r} in /{schema['name']}")
        known = {o["name"]: o for o in schema.get("options", [])}
        for name in values:
            if name not in known:
                raise LookupError(f"/{schema['name']} has no option {name!r}")
        for option in known.values():
            if option.get("required") and option["name"] not in values:
                raise LookupError(f"/{schema['name']} needs option {option['name']!r}")
        return [
            {"name": name, "type": known[name]["type"], "value": value}
            for name, value in values.items()
        ]

    @staticmethod
    def command_problems(commands: list[dict[str, Any]]) -> list[str]:
        problems = []
        name_ok = re.compile(r"^[-_\w]{1,32}$")
        for command in commands:
            stack = [command]
            while stack:
                item = stack.pop()
                name = item.get("name", "")
                if not name_ok.match(name) or name != name.lower():
                    problems.append(f"bad name {name!r}")
                if not 1 <= len(item.get("description", "")) <= 100:
                    problems.append(f"{name}: description must be 1-100 characters")
                problems += _localization_problems(item)
                options = item.get("options", [])
                if len(options) > 25:
                    problems.append(f"{name}: more than 25 options")
                seen_optional = False
                for option in options:
                    if option["type"] in (OPTION_SUB_COMMAND, OPTION_SUB_COMMAND_GROUP):
                        stack.append(option)
                    elif option.get("required"):
                        if seen_optional:
                            problems.append(f"{name}: required option after an optional one")
                    else:
                        seen_optional = True
        return problems
