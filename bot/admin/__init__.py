"""The admin console (/admin): sign-in, overview, conversations, settings, audit, logs, Try it.

`bot.admin.console.AdminConsole` mounts it on the [http] endpoint; `bot.admin.cli` is
`parley admin set-password`. Nothing is imported here, so `parley doctor` stays light.
"""
