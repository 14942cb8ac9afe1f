"""Speech for Parley: voice notes in (faster-whisper), voice replies out (edge, piper, espeak)."""

from bot.speech.stt import Transcriber
from bot.speech.text import speakable_text
from bot.speech.tts import SpeechSynthesizer
from bot.speech.voice_reply import VoiceReply

__all__ = ["SpeechSynthesizer", "Transcriber", "VoiceReply", "speakable_text"]
