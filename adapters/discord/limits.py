"""Discord's limits, with their sources; discord.py has no constants for them.

The reply budgets built from them (`targets.channel_limits`) are what the reply streamer keeps
under: a channel's message edits share one bucket, and every request of the bot counts against
the global limit.
"""

from __future__ import annotations

PLATFORM_KEY = "discord"
# https://discord.com/developers/docs/resources/message#create-message: content, 2000 characters.
MAX_MESSAGE_CHARS = 2000
# https://discord.com/developers/docs/topics/rate-limits#global-rate-limit: 50 requests a second.
GLOBAL_RATE = 50.0
# Requests of each global window left unused. The bot's bucket spaces its requests, but they
# reach Discord after varying delays (the network, the event loop under load), so a few arrive
# closer together than they left; at exactly 50 a second, a 200-channel burst through the fake
# drew a global 429 in about one run in three. Measured: none with this headroom.
GLOBAL_HEADROOM = 1.0
# Edits of one channel's messages: not documented, but Discord's bucket headers commonly allow
# five per five seconds.
CHANNEL_EDITS = 5.0
CHANNEL_WINDOW_S = 5.0
# https://discord.com/developers/docs/interactions/receiving-and-responding: a token is valid for
# 15 minutes, and the first response is due within 3 seconds.
INTERACTION_TOKEN_LIFETIME_S = 15 * 60.0
