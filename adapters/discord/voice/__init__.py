"""Live voice in Discord voice channels: listen per speaker, speak back, with DAVE (E2EE).

The bot's side: `channels.VoiceChannels` (the /join and /leave handlers, leaving by itself) runs
one `conversation.VoiceConversation` per server, which turns utterances into engine turns of the
linked text channel and speaks their answers as they stream (`VoiceTurnTarget`).

Underneath, one voice connection as utterances in and speech out::

    session = await VoiceSession.join(voice_channel, VoiceOptions())
    await session.wait_ready()            # the DAVE group is ready (connect() returns before)
    async for utterance in session.utterances():
        utterance.user_id, utterance.pcm  # 48 kHz mono float32; .pcm_16k() for Whisper
        utterance.started_at, utterance.ended_at, utterance.cut_off
        done = await session.speak(pcm_or_clips)   # False when interrupted
    session.stop_speaking()               # barge-in: stops within one 20 ms frame
    session.on_speech_start(callback)     # callback(user_id) at every speech onset
    session.on_speech_pause(callback)     # callback(utterance so far) at each reported pause
    session.on_speech_resume(callback)    # callback(ssrc): the speaker went on after one
    await session.leave()                 # utterances() ends after the last flushed one

With `VoiceOptions.barge_in` (on by default) a speech onset from anyone stops the bot's speech.
`speak()` plays one answer at a time: a second call waits for the first.

Pipeline: discord.py's socket reader thread -> `VoiceReceiver` worker thread (RTP parse,
transport decryption in `aead_xchacha20_poly1305_rtpsize` or `aead_aes256_gcm_rtpsize`, DAVE
decryption with the `davey` session discord.py holds, Opus decoding with PyAV's libopus, Silero
VAD segmentation) -> the event loop. Speech goes out through discord.py's `AudioPlayer`
(Opus encoding, DAVE encryption, transport encryption). The bot's gateway client needs the
`voice_states` intent to see who is in a channel.
"""

from adapters.discord.voice.client import ParleyVoiceClient
from adapters.discord.voice.opus import OpusUnavailable, ensure_opus
from adapters.discord.voice.receiver import ReceiveStats, Utterance
from adapters.discord.voice.session import VoiceOptions, VoiceSession
from adapters.discord.voice.speaker import VoiceNotReady, pcm_to_frames
from adapters.discord.voice.vad import SegmenterOptions

__all__ = [
    "OpusUnavailable",
    "ParleyVoiceClient",
    "ReceiveStats",
    "SegmenterOptions",
    "Utterance",
    "VoiceNotReady",
    "VoiceOptions",
    "VoiceSession",
    "ensure_opus",
    "pcm_to_frames",
]
