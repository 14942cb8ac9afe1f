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
# Requests of each second the budget shared by several processes leaves unused
# (`sharding.shared_rate`): it spaces its grants, and requests reach Discord after varying delays
# (the network, the event loop under load), so a few arrive closer together than they left.
GLOBAL_HEADROOM = 1.0
# Requests of each second one process's budgets leave to the calls discord.py makes on its own
# as the bot starts (login, application info, command sync), which can share a second with the
# first replies. The budgets count every other request until its answer came, so however late
# those reach Discord they stay within the count.
LIBRARY_CALLS = 3.0
# Edits of one channel's messages: not documented, but Discord's bucket headers commonly allow
# five per five seconds.
CHANNEL_EDITS = 5.0
CHANNEL_WINDOW_S = 5.0
# https://discord.com/developers/docs/interactions/receiving-and-responding: a token is valid for
# 15 minutes, and the first response is due within 3 seconds.
INTERACTION_TOKEN_LIFETIME_S = 15 * 60.0
