"""Delivery: every platform call of the bot under shared rate budgets (see docs/delivery.md).

`budgets` holds the token buckets and the order calls get them in, `stream` shows one reply
while it is generated, `notices` keeps a waiting chat's "#n in line" message, and `scheduler`
puts them together as the bot's one `EditScheduler`. Import from the submodules.
"""
