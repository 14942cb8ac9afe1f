"""A protocol-true loopback fake of Discord's voice servers, with DAVE, for tests and benchmarks.

Modules (imported one by one: `tls` must stay importable before aiohttp is):
- `tls`: the test certificate authority behind the fake's wss:// endpoint.
- `mls`: the voice gateway's part of MLS (external sender, signed proposals).
- `media`: RTP packets, transport encryption and Opus for the fake's side.
- `server`: `FakeVoiceServer` (voice websocket v8, UDP, DAVE group) and `FakeHuman`.
"""
