"""Voice channels: barge-in, unknown SSRCs and junk, late SPEAKING, RTP details, readiness.

Against the real discord.py client and the fake voice server, like test_voice_channel_audio.py,
but checked without a speech recogniser: what arrives is compared with what was spoken by
waveform similarity. The last tests take the receive pieces (RTP, transport, VAD) on their own.
"""

from __future__ import annotations

import asyncio
import secrets
import struct

import numpy as np
import pytest

from adapters.discord.voice import SegmenterOptions, VoiceNotReady, VoiceOptions, VoiceSession
from adapters.discord.voice.rtp import (
    MalformedPacket,
    media_payload,
    parse_header,
    sequence_delta,
    timestamp_delta,
)
from adapters.discord.voice.speaker import (
    FRAME_BYTES,
    LEAD_IN_FRAMES,
    ONSET_LEVEL,
    pcm_to_frames,
    trim_leading_silence,
)
from adapters.discord.voice.transport import make_cipher
from adapters.discord.voice.vad import (
    Segmenter,
    SileroStream,
    SpeechEnded,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
)
from tests.fakes import audio_samples
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.discord_voice.harness import discord_client, similarity, voice_call, voice_channel
from tests.fakes.discord_voice.media import (
    AES_GCM,
    XCHACHA,
    OpusEncoder,
    Rtp,
    seal,
    stereo_frames,
)
from tests.fakes.discord_voice.server import WAIT_TIMEOUT_S, FakeVoiceServer, speech
from tests.fakes.discord_world import DiscordWorld

pytestmark = pytest.mark.speech  # piper speaks for the fake humans

ALICE, BOB = DiscordWorld.ALICE, DiscordWorld.BOB
BOT_ID = DiscordWorld.BOT.id
QUESTION = "what is the capital of France"
# Similarity of a sentence to itself after Opus: measured 0.97 (another sentence: 0.08). It does
# not notice a missing tail well (half the clip still scores 0.87): durations are checked too.
SAME = 0.8
RATE = 48_000


def tone(seconds: float) -> np.ndarray:
    return audio_samples.tone(seconds, RATE)


def heard_speech(call_human: object) -> int:
    heard = getattr(call_human, "heard", {}).get(BOT_ID)
    return heard.speech_frames if heard is not None else 0


@pytest.mark.parametrize("barge_in", [True, False], ids=["barge-in", "barge-in-off"])
async def test_someone_speaking_stops_the_bot(barge_in: bool) -> None:
    async with voice_call(ALICE, options=VoiceOptions(barge_in=barge_in)) as call:
        (alice,) = call.humans
        question = await speech(QUESTION)  # ready before the bot starts (piper may be loading)
        answer = asyncio.create_task(call.session.speak(tone(5.0)))
        await call.voice.wait_for(lambda: heard_speech(alice) >= 25)  # half a second in
        await alice.say(question)
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id
        completed = await answer
        heard = alice.heard[BOT_ID]
        if barge_in:
            assert completed is False
            assert heard.speech_frames < 5.0 * 50 / 2, heard.speech_frames  # well short of 5 s
            assert heard.plain_speech == 0
        else:
            assert completed is True
            assert heard.speech_frames >= 5.0 * 50 - 5


async def test_stop_speaking_then_speak_again() -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        answer = asyncio.create_task(call.session.speak([tone(2.0), tone(2.0)]))
        await call.voice.wait_for(lambda: heard_speech(alice) >= 25)
        assert call.session.speaking
        call.session.stop_speaking()
        assert await answer is False
        assert not call.session.speaking
        await call.voice.wait_for(lambda: alice.heard[BOT_ID].silence_frames >= 5)
        stopped_at = heard_speech(alice)
        assert stopped_at < 100  # of the 200 frames of the two clips
        assert await call.session.speak(tone(0.5)) is True
        await call.voice.wait_for(lambda: heard_speech(alice) >= stopped_at + 20)


async def test_synthesised_speech_starts_at_its_sound() -> None:
    pcm = await speech("Paris is the capital of France.")
    onset = int(np.flatnonzero(np.abs(pcm) > ONSET_LEVEL)[0])
    assert onset > 0.01 * RATE  # piper starts with near-silence: there is something to trim
    trimmed = trim_leading_silence(pcm)
    assert pcm.size - trimmed.size > 0.01 * RATE  # the quiet start is gone ...
    assert (
        0 < int(np.flatnonzero(np.abs(trimmed) > ONSET_LEVEL)[0]) <= 0.01 * RATE
    )  # ... but not the onset
    assert np.array_equal(trimmed, pcm[pcm.size - trimmed.size :])  # the speech is kept whole
    quiet = np.full(RATE, ONSET_LEVEL / 2, dtype=np.float32)
    assert np.array_equal(trim_leading_silence(quiet), quiet)  # nothing louder: left as it is
    assert trim_leading_silence(np.zeros(0, dtype=np.float32)).size == 0


async def test_an_answer_sounds_from_its_first_frames() -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        quiet_start = np.concatenate((np.zeros(RATE // 5, dtype=np.float32), tone(0.5)))
        assert await call.session.speak(quiet_start) is True
        await call.voice.wait_for(lambda: alice.heard[BOT_ID].silence_frames >= 5)
        frames = alice.heard[BOT_ID].frames
        first_sound = next(i for i, frame in enumerate(frames) if frame.speech)
        # The lead-in, then the tone: the 200 ms (10 frames) of quiet before it are not sent.
        assert first_sound <= LEAD_IN_FRAMES + 1, first_sound
        assert alice.heard[BOT_ID].speech_frames >= 0.5 * 50 - 1  # all of the tone


async def test_unknown_ssrc_junk_padding_and_csrcs() -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        voice, stats = call.voice, call.session.stats
        connection = voice.bot_connection()
        pcm = await speech(QUESTION)
        encoder = OpusEncoder()
        stranger = [encoder.encode(frame) for frame in stereo_frames(pcm)]
        voice.send_stranger_audio(0xDEAD_BEEF, stranger)  # never named by SPEAKING
        # Noise (version 0, and byte 1 no RTCP packet type: random bytes there would pass for
        # RTCP about one run in 25).
        voice.send_raw(b"\x00\x00" + secrets.token_bytes(38))
        voice.send_raw(b"\x80\x78\x00")  # truncated
        voice.send_raw(struct.pack(">BBHI", 0x80, 200, 6, 1234) + bytes(20))  # RTCP sender report
        clear, plain = Rtp(alice.ssrc, 1, 960, b"\xfc" * 20).clear_and_plain()
        voice.send_raw(seal(connection.mode, secrets.token_bytes(32), clear, plain, 7))  # wrong key
        other_type = bytearray(seal(connection.mode, connection.secret_key, clear, plain, 8))
        other_type[1] = 0x65  # another payload type (e.g. video)
        voice.send_raw(bytes(other_type))
        await voice.wait_for(lambda: stats.unknown_ssrc_dropped >= len(stranger))
        # Alice, with RTP padding and contributing sources on every packet, is heard intact.
        await alice.say(pcm, padding=7, csrcs=(11, 22))
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id
        assert similarity(utterance.pcm, pcm) > SAME
        assert utterance.duration_s >= pcm.size / RATE
        assert stats.rtcp >= 1 and stats.malformed >= 2 and stats.other_payload >= 1
        assert stats.transport_failed >= 1
        assert call.session.stats.per_user_frames == {ALICE.id: alice.frames_sent}


async def test_audio_overtaking_speaking_is_held_until_the_ssrc_is_known() -> None:
    async with voice_call(ALICE) as call:
        (alice,) = call.humans
        pcm = await speech(QUESTION)
        await alice.say(pcm, announce_after_s=0.4, pace=2.0)
        utterance = await call.next_utterance()
        assert utterance.user_id == ALICE.id
        assert call.session.stats.unknown_ssrc_dropped == 0
        assert utterance.duration_s >= pcm.size / RATE
        assert similarity(utterance.pcm, pcm) > SAME


async def test_no_speech_before_end_to_end_encryption_is_ready() -> None:
    async with (
        FakeDiscord() as fake,
        FakeVoiceServer(fake) as voice,
        discord_client(fake) as client,
    ):
        options = VoiceOptions(ready_timeout_s=0.3)
        session = await VoiceSession.join(voice_channel(client, voice.channel_id), options)
        try:
            # Alone in the channel there is no DAVE group: nothing can be said privately.
            with pytest.raises(VoiceNotReady):
                await session.speak(tone(0.5))
            alice = await voice.join(ALICE)
            await voice.dave_settled()
            await session.wait_ready(WAIT_TIMEOUT_S)  # a hang guard on a loaded machine
            assert await session.speak(tone(0.5)) is True
            await voice.wait_for(lambda: alice.heard.get(BOT_ID) is not None)
            await voice.wait_for(lambda: alice.heard[BOT_ID].silence_frames >= 5)
            assert alice.heard[BOT_ID].speech_frames >= 20
            assert alice.heard[BOT_ID].plain_speech == 0
        finally:
            await session.leave()
        assert session.closed


async def test_call_without_dave() -> None:
    async with voice_call(ALICE, dave=False) as call:
        (alice,) = call.humans
        assert call.session.client.connection.dave_protocol_version == 0
        pcm = await speech(QUESTION)
        await alice.say(pcm, pace=2.0)
        utterance = await call.next_utterance()
        assert similarity(utterance.pcm, pcm) > SAME
        assert utterance.duration_s >= pcm.size / RATE
        assert await call.session.speak(tone(0.5))
        await call.voice.wait_for(lambda: heard_speech(alice) >= 20)


async def test_leave_ends_the_utterances() -> None:
    async with voice_call(ALICE) as call:
        await call.session.leave()
        remaining = [u async for u in call.session.utterances()]
        assert remaining == []
        assert call.session.closed
        await call.voice.wait_for(lambda: DiscordWorld.BOT.id not in call.voice.group.members)


# -- the pieces on their own ---------------------------------------------------------------


@pytest.mark.parametrize("mode", [AES_GCM, XCHACHA])
@pytest.mark.parametrize(
    ("padding", "csrcs", "audio_level"),
    [(0, (), None), (0, (), 0x20), (9, (1, 2, 3), 0x20), (1, (), None)],
)
def test_rtp_and_transport_match_the_fake(
    mode: str, padding: int, csrcs: tuple[int, ...], audio_level: int | None
) -> None:
    key = secrets.token_bytes(32)
    payload = secrets.token_bytes(57) + b"\xfa\xfa"
    rtp = Rtp(0x1234_5678, 65_535, 4_294_966_000, payload, marker=True, csrcs=csrcs,
              audio_level=audio_level, padding=padding)  # fmt: skip
    clear, plain = rtp.clear_and_plain()
    packet = seal(mode, key, clear, plain, 0xFFFF_FFFF)
    header = parse_header(packet)
    assert (header.ssrc, header.sequence, header.timestamp) == (rtp.ssrc, 65_535, 4_294_966_000)
    assert header.marker and header.payload_type == 0x78
    assert header.clear_bytes == len(clear)
    assert media_payload(header, make_cipher(mode, key).decrypt(packet, header.clear_bytes)) == (
        payload
    )


def test_malformed_rtp_is_refused() -> None:
    with pytest.raises(MalformedPacket):
        parse_header(b"\x80\x78\x00\x01")
    with pytest.raises(MalformedPacket):
        parse_header(b"\x40" + bytes(40))  # RTP version 1
    header = parse_header(b"\xa0\x78" + bytes(40))  # padding flag set
    with pytest.raises(MalformedPacket):
        media_payload(header, b"\x01\x02\x00")  # a padding count of zero
    with pytest.raises(MalformedPacket):
        media_payload(header, b"\x01\x02\x09")  # more padding than packet


def test_sequence_and_timestamp_wrap_around() -> None:
    assert sequence_delta(2, 65_534) == 4
    assert sequence_delta(65_534, 2) == -4
    assert timestamp_delta(100, 4_294_967_000) == 396


def test_pcm_to_frames_pads_the_last_frame() -> None:
    frames = pcm_to_frames(tone(0.05))  # 2.5 frames
    assert len(frames) == 3 and all(len(f) == FRAME_BYTES for f in frames)
    assert frames[-1].endswith(bytes(FRAME_BYTES // 2))
    assert pcm_to_frames(np.zeros(0, dtype=np.float32)) == []


def test_streamed_vad_equals_faster_whispers_whole_clip_vad() -> None:
    from faster_whisper.vad import get_vad_model

    pcm, rate = audio_samples.spoken()
    x = audio_samples._resample(pcm, rate, 16_000)[0].to_ndarray()[0].astype(np.float32)
    x = np.pad(x, (0, 512 - x.size % 512))
    whole = get_vad_model()(x.copy())
    stream = SileroStream()
    pieces = [stream.feed(x[i : i + 700]) for i in range(0, x.size, 700)]  # uneven chunks
    assert np.allclose(np.concatenate(pieces), whole, atol=1e-5)


async def test_segmenter_cuts_speech_and_ignores_silence_and_noise() -> None:
    pcm = await speech(QUESTION)
    quiet = np.zeros(RATE, dtype=np.float32)
    noise = audio_samples.noise(1.0, RATE, level=0.01)
    segmenter = Segmenter(SegmenterOptions())
    events = []
    for chunk in (quiet, noise, pcm, quiet, noise, pcm[: RATE // 2]):
        for start in range(0, chunk.size, 960):
            events += segmenter.push(chunk[start : start + 960])
    events += segmenter.flush()
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SpeechStarted", "SpeechEnded", "SpeechStarted", "SpeechEnded"], kinds
    first, last = events[1], events[3]
    assert isinstance(first, SpeechEnded) and isinstance(last, SpeechEnded)
    assert not first.cut_off and last.cut_off
    assert similarity(first.pcm, pcm) > 0.95
    assert isinstance(events[0], SpeechStarted) and events[0].position >= 2 * RATE


async def test_a_short_pause_is_reported_and_so_is_speech_going_on_after_it() -> None:
    pcm = await speech(QUESTION)
    gap = np.zeros(int(0.35 * RATE), dtype=np.float32)  # past the reports, short of the end
    segmenter = Segmenter(SegmenterOptions(min_silence_ms=500, pause_reports_ms=(100, 200)))
    events = []
    for chunk in (gap, pcm, gap, pcm, np.zeros(RATE, dtype=np.float32)):
        for start in range(0, chunk.size, 960):
            events += segmenter.push(chunk[start : start + 960])
    kinds = [type(e).__name__ for e in events]
    pause, resume = "SpeechPaused", "SpeechResumed"
    assert kinds == ["SpeechStarted", pause, pause, resume, pause, pause, "SpeechEnded"], kinds
    first_pause, second_pause, resumed, _, last_pause, ended = events[1:]
    assert [e.pause_ms for e in events if isinstance(e, SpeechPaused)] == [100, 200, 100, 200]
    assert isinstance(first_pause, SpeechPaused) and isinstance(second_pause, SpeechPaused)
    assert isinstance(resumed, SpeechResumed)
    assert isinstance(last_pause, SpeechPaused) and isinstance(ended, SpeechEnded)
    # The utterance is the whole of it; the pause before the end promised exactly that speech.
    assert first_pause.speech_end < resumed.position < last_pause.speech_end
    assert (last_pause.start, last_pause.speech_end) == (ended.start, ended.speech_end)
    assert np.array_equal(last_pause.pcm, ended.pcm)  # what Whisper hears early is the same
    assert np.array_equal(first_pause.pcm, second_pause.pcm)  # at 100 and 200 ms alike
    assert similarity(ended.pcm, pcm) > 0.5 and ended.pcm.size > 2 * pcm.size


def test_libopus_comes_with_the_python_packages() -> None:
    """The Docker image installs the same wheels as setup.sh and no libopus0: PyAV's copy it is."""
    from adapters.discord.voice.opus import MonoDecoder, bundled_libopus, ensure_opus

    assert bundled_libopus() is not None
    ensure_opus()
    assert MonoDecoder().decode(None).size == 960  # one concealed 20 ms frame
