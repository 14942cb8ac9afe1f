"""Loaded by pytest before tests/conftest.py, and so before anything imports aiohttp.

The fake Discord voice server speaks wss:// with a certificate from a throwaway test authority;
aiohttp reads the trust store once, at import, so the authority is installed here first (see
tests/fakes/discord_voice/tls.py). It only adds trust, for this test process and its children.
"""

from tests.fakes.discord_voice.tls import trust_test_authority

trust_test_authority()
