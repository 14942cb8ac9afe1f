"""Parley's slash commands, declared on a discord.py `CommandTree`.

The callbacks only parse options and hand over to a `CommandHandler` (the Discord adapter), so the
command surface is readable in one place. No `from __future__ import annotations` here:
discord.py reads the callbacks' annotations at runtime to build the option schema.
"""

from typing import Literal, Protocol

import discord
from discord import app_commands

from bot.channel_config import CHANNEL_KEYS
from bot.personas import PERSONAS

MAX_CHOICE_NAME = 100  # Discord's limit for a choice's display name


class CommandHandler(Protocol):
    """What the commands call; the Discord adapter implements it."""

    async def ask(self, interaction: discord.Interaction, prompt: str, voice: bool) -> None:
        """Answer a prompt, streamed into the interaction's response."""
        ...

    async def run_command(
        self, interaction: discord.Interaction, name: str, args: str, *, ephemeral: bool
    ) -> None:
        """Run an engine command and show its reply."""
        ...


def build_command_tree(
    client: discord.Client, handler: CommandHandler, *, bot_name: str
) -> app_commands.CommandTree[discord.Client]:
    """A CommandTree with /ask, /reset, /persona, /voice, /config show|set, /help, /forget."""
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    presets = ", ".join(PERSONAS)

    @tree.command(name="ask", description=f"Ask {bot_name}; the answer streams in as it is written")
    @app_commands.describe(prompt="Your message", voice="Also answer with a voice message")
    async def ask(interaction: discord.Interaction, prompt: str, voice: bool = False) -> None:
        await handler.ask(interaction, prompt, voice)

    @tree.command(name="reset", description="Forget this channel's conversation")
    async def reset(interaction: discord.Interaction) -> None:
        await handler.run_command(interaction, "reset", "", ephemeral=False)

    @tree.command(name="persona", description="Show or change how the bot talks in this channel")
    @app_commands.describe(persona=f"A preset ({presets}) or your own instructions"[:100])
    async def persona(interaction: discord.Interaction, persona: str | None = None) -> None:
        await handler.run_command(interaction, "persona", persona or "", ephemeral=False)

    @tree.command(name="voice", description="Show or change when the bot answers with voice")
    @app_commands.describe(mode="off, only when you sent a voice message, or always")
    async def voice(
        interaction: discord.Interaction,
        mode: Literal["off", "reply-to-voice", "always"] | None = None,
    ) -> None:
        await handler.run_command(interaction, "voice", mode or "", ephemeral=False)

    config = app_commands.Group(name="config", description="This channel's settings")

    @config.command(name="show", description="Show this channel's settings")
    async def config_show(interaction: discord.Interaction) -> None:
        await handler.run_command(interaction, "config", "show", ephemeral=True)

    @config.command(name="set", description="Change a setting (Manage Server or a bot admin)")
    @app_commands.describe(key="The setting", value="Its new value")
    @app_commands.choices(
        key=[
            app_commands.Choice(name=f"{key}: {about}"[:MAX_CHOICE_NAME], value=key)
            for key, about in CHANNEL_KEYS.items()
        ]
    )
    async def config_set(interaction: discord.Interaction, key: str, value: str) -> None:
        await handler.run_command(interaction, "config", f"set {key} {value}", ephemeral=True)

    tree.add_command(config)

    @tree.command(name="help", description="What the bot can do")
    async def help_(interaction: discord.Interaction) -> None:
        await handler.run_command(interaction, "help", "", ephemeral=True)

    @tree.command(name="forget", description="Delete every message you sent the bot")
    async def forget(interaction: discord.Interaction) -> None:
        await handler.run_command(interaction, "forget", "", ephemeral=True)

    return tree
