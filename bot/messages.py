"""Everything Parley itself says to users, keyed by a message id, ready for translation.

Each `Msg` member is one message: its name is the id a translation is keyed by (the msgctxt of
the gettext catalogs in bot/locale/, see bot/catalog.py), its value the English text, with
`{fields}` filled in by `say`. A value of two texts is a message that counts something: English
says the first when `count` is 1 and the second otherwise; another language picks its form by
its own plural rule. A message that is built before the language of its reader is known (an
error raised deep down) travels as a `Phrase`.

Words the model writes are not here, nor what only operators read (logs, `parley doctor`, the
admin console, configuration errors).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum, unique

from bot.catalog import counted, text
from bot.languages import ENGLISH

log = logging.getLogger(__name__)

COUNT = "count"  # the field that chooses between a counting message's two texts


@unique
class Msg(Enum):
    """Every message, its name the id, its value the English text."""

    # -- a turn: refusals, limits, what went wrong ----------------------------------------
    TOO_LONG = (
        "Your message is too long ({length} characters; the limit is {limit}). Please shorten it."
    )
    SLOW_DOWN = (
        "You're sending messages faster than I can answer (limit: {limit} a minute). "
        "Please wait a moment and try again."
    )
    LLM_DOWN = (
        "⚠️ I can't reach the language model right now. Your message is saved; "
        "please try again in a moment."
    )
    LLM_REJECTED = "⚠️ The model server refused this request ({reason}). Try /reset to start over."
    CUT_OFF = "⚠️ The reply was cut off: the model server stopped answering."
    LLM_TIMEOUT = "⚠️ The model server took too long to answer."
    EMPTY_REPLY = "The model returned an empty reply. Try rephrasing, or /reset."
    REPLY_TIMEOUT = "⚠️ I stopped this reply: it took longer than {seconds:g} s."
    REPLY_CAPPED = "⚠️ I stopped this reply: it reached the length limit for one answer."
    INTERNAL = (
        "⚠️ Something went wrong on my side while answering (ref {ref}). "
        "Your message is saved; please try again."
    )
    MESSAGE_FAILED = "⚠️ Something went wrong on my side with that message. Please try again."
    COMMAND_FAILED = "⚠️ Something went wrong on my side with that command. Please try again."
    NOT_STORED = "I couldn't save your message: {trouble}; please try again later."
    NOT_SAVED = "I couldn't do that: {trouble}; please try again later."
    STORAGE_FULL = "the server's storage is full"
    STORAGE_READ_ONLY = "the server's storage is read-only"
    STORAGE_BROKEN = "the server's storage is not working right now"
    ANSWER_DELAYED = (
        "⚠️ I can't save messages right now ({trouble}), so my answer will take a while. "
        "I'll reply as soon as it works again."
    )
    REPLY_INTERRUPTED = "⚠️ This reply was interrupted: I was restarted before I could finish it."
    QUEUE_POSITION = "⏳ You're #{position} in line; I'll answer as soon as it's your turn."
    QUEUE_POSITION_MANY = (
        "⏳ You're #{position} in line ({waiting} messages waiting); I'll answer them in order."
    )

    # -- tools the model calls during a reply ---------------------------------------------
    TOOL_RUNNING = "🔧 {tools}…"  # shown above the answer while (and after) the tools run
    TOOL_ONE_MOMENT = "One moment."  # said in a voice channel when a tool takes a while

    # -- voice notes and spoken replies ---------------------------------------------------
    TRANSCRIPT = "🎤 “{transcript}”"
    NO_STT = "Voice notes are not available on this bot (speech recognition is not installed)."
    NO_VOICE = "(I couldn't produce a voice reply this time, so here it is as text.)"
    AUDIO_EMPTY = "That voice message is empty."
    AUDIO_UNREADABLE = (
        "I couldn't read that audio: the file is damaged or not in an audio format I know."
    )
    NO_AUDIO_TRACK = "That file has no sound in it for me to transcribe."
    NO_SPEECH = "I couldn't hear anything in that recording."
    AUDIO_TOO_BIG = "That file is too big ({size}): I take audio files up to {limit}."
    AUDIO_TOO_LONG = "That recording is too long ({length}): I transcribe up to {limit}."
    AUDIO_TOO_LONG_UNMEASURED = "That recording is too long: I transcribe up to {limit}."
    SECONDS = ("{count} second", "{count} seconds")
    MINUTES = ("{count} minute", "{count} minutes")

    # -- attachments: pictures, recordings, what cannot be opened -------------------------
    NO_VISION = "The model I use here can't see images, so I can't look at that picture."
    NO_VISION_TEXT = (
        "The model I use here can't see images, so I'm answering the text that came with it."
    )
    IMAGE_TOO_LARGE = (
        "That picture is too large for me ({size_mb:.1f} MB; the limit is {limit_mb:.1f} MB). "
        "Please send a smaller one."
    )
    IMAGE_OVER_LIMIT = (
        "That picture is too large for me (the limit is {limit_mb:.1f} MB). "
        "Please send a smaller one."
    )
    PICTURE_FAILED = "Sorry, I couldn't download that picture. Please try again."
    AUDIO_TOO_LARGE = (
        "That recording is too large ({size_mb:.1f} MB; the limit is {limit_mb:.1f} MB). "
        "Please send a shorter one."
    )
    AUDIO_OVER_LIMIT = (
        "That recording is too large (the limit is {limit_mb:.1f} MB). Please send a shorter one."
    )
    AUDIO_FAILED = "Sorry, I couldn't download that recording. Please try again."
    UNREADABLE = "I can read text and voice messages, but I can't open {kind} yet."
    CAPTION_ONLY = "I can't open {kind} yet, so I'm answering the text that came with it."
    KIND_PICTURES = "photos"
    KIND_IMAGES = "images"
    KIND_FILES = "files"
    KIND_STICKERS = "stickers"
    KIND_GIFS = "GIFs"
    KIND_LOCATIONS = "locations"
    KIND_PLACES = "places"
    KIND_POLLS = "polls"
    KIND_CONTACTS = "contacts"
    KIND_DICE = "dice"
    KIND_GAMES = "games"
    KIND_STORIES = "stories"
    KIND_PAID_MEDIA = "paid media"
    KIND_CHECKLISTS = "checklists"

    # -- platforms: access, files, empty answers ------------------------------------------
    REFUSED = "Sorry, I'm not available to you here. Please ask the bot's owner for access."
    NOT_ALLOWED_HERE = "Sorry, I'm not available here."
    FILE_REFUSED_TELEGRAM = "Sorry, Telegram did not take the file. Please try again later."
    FILE_REFUSED_DISCORD = "Sorry, Discord did not take the file (it may be too large)."
    DONE = "Done."
    DISCORD_ADMIN_NOTE = " (Manage Server or a bot admin)"
    MENU_CHOICES = "{about}: {choices}"
    LAST_CHOICE = ", or "  # between the subcommands a menu entry lists

    # -- the console ----------------------------------------------------------------------
    CONSOLE_WELCOME = "{name} console — type a message, /help for commands, Ctrl-D to quit."
    CONSOLE_WAITING = "[waiting: #{position} in line]"
    CONSOLE_VOICE = "[voice reply: {path} ({seconds:.1f} s)]"
    CONSOLE_FILE = "[file: {path}]"
    CONSOLE_CANCELLED = "[reply cancelled]"

    # -- Discord voice channels -----------------------------------------------------------
    VOICE_NO_SPEECH = (
        "I can't talk in voice channels here: speech (Whisper and a voice) is not available on "
        "this bot."
    )
    VOICE_NOT_IN_SERVER = "Voice channels are in servers: use /join in a server's text channel."
    VOICE_WHICH_CHANNEL = "Join a voice channel first, or name one: /join channel:…"
    VOICE_NO_SUCH_CHANNEL = "I can't find a voice channel called {name!r} in this server."
    VOICE_NOT_ALLOWED = "I'm not allowed to join {channel} (see discord.voice_channels)."
    VOICE_NO_PERMISSION = "I need the Connect and Speak permissions in {channel}."
    VOICE_JOIN_FAILED = "I couldn't join {channel}. Please try again in a moment."
    VOICE_STOPPING = "I'm shutting down; try again once I'm back."
    VOICE_JOINED = "🔊 Joined {channel}. Talk to me there{wake}; I'll write what we say here."
    VOICE_JOINED_SILENT = "🔊 Joined {channel}. Talk to me there{wake}."
    VOICE_WAKE = ", starting with my name ({name})"
    VOICE_ALREADY = "I'm in {channel} already; our talk there now belongs to this channel."
    VOICE_LEFT = "👋 Left {channel}."
    VOICE_NOT_IN_VOICE = "I'm not in a voice channel here."
    VOICE_LEFT_EMPTY = "👋 Left {channel}: nobody else was there."
    VOICE_LEFT_IDLE = "👋 Left {channel}: nobody spoke to me for a while."
    VOICE_DISCONNECTED = "I was disconnected from {channel}."
    VOICE_CHANNEL = "the voice channel"
    VOICE_SOMEONE = "user {user_id}"

    # -- the MQTT bridge: requests it cannot read -----------------------------------------
    MQTT_TOO_LARGE = "The message is too large ({size} bytes; the limit is {limit})."
    MQTT_NOT_UTF8 = "The message is not UTF-8 text (or holds a NUL character)."
    MQTT_EMPTY = (
        'The message is empty: send text, or a JSON object with "text" (and, if you like, "user").'
    )
    MQTT_BAD_JSON = "The message looks like a JSON object but is not valid JSON."
    MQTT_BAD_SHAPE = (
        'A JSON message needs "text" (a non-empty string); "user", if given, is a string of up '
        "to {limit} characters."
    )
    MQTT_BAD_SESSION = (
        "The session in the topic must be 1 to {limit} letters, digits, '.', '_' or '-', "
        "starting with a letter or digit."
    )
    MQTT_BAD_RESPONSE_TOPIC = (
        "The Response Topic cannot be used (empty, a wildcard, a $ topic or one of Parley's own "
        "request topics): answered on {topic} instead."
    )
    MQTT_STOPPING = "Parley is stopping: this reply was cut off. Please ask again in a moment."
    MQTT_NO_REPLY = "No reply could be made to this message."

    # -- the HTTP API: requests it refuses ------------------------------------------------
    API_NO_KEY = "Send your API key in the header `Authorization: Bearer KEY`."
    API_BAD_KEY = "That API key is not valid."
    API_KEY_THROTTLED = "Too many wrong API keys came from your address: try again in {wait}."
    API_SLOW_DOWN = "This key sent more than {limit} requests in a minute: try again in {wait}."
    API_BLOCKED = "This key is blocked."
    API_TOO_LARGE = "The request body is too large (the limit is {limit} bytes)."
    API_BAD_JSON = "The request body is not valid JSON (UTF-8)."
    API_NOT_OBJECT = "The request body must be a JSON object."
    API_BAD_FIELD = "`{field}` must be {expected}."
    API_BAD_MESSAGE = (
        "messages[{index}] must be an object with a `role` (system, user or assistant) and a "
        "text `content` (a string, or a list of text parts)."
    )
    API_LAST_NOT_USER = "The last message must be the user's."
    API_TOO_MANY_MESSAGES = "A request holds at most {limit} messages."
    API_ONE_CHOICE = "`n` must be 1: Parley gives one answer per request."
    API_UNKNOWN_MODEL = "The model `{model}` does not exist: GET /v1/models lists them."
    API_BAD_SESSION = (
        "A session is 1 to {limit} letters, digits, '.', '_' or '-', starting with a letter or "
        "digit."
    )
    API_BAD_LIMIT = "`limit` must be a whole number from 1 to {limit}."
    API_NOT_FOUND = "There is no {method} {path}: see docs/api.md for the endpoints."
    API_STOPPING = "Parley is starting or stopping: please try again in a moment."
    API_NO_REPLY = "No reply could be made to this request."
    API_INTERNAL = "Something went wrong on Parley's side (ref {ref}). Please try again."

    # -- commands: the table's descriptions (/help, menus) --------------------------------
    HELP_INTRO = "Hi, I'm {bot_name}. Talk to me by text or voice note."
    HELP_LINE = "{usage} — {about}{note}"
    ACCESS_OWNER_NOTE = " (in groups, admins change it)"
    ACCESS_ADMIN_NOTE = " (admins)"
    CMD_START = "Say hello"
    CMD_HELP = "What I can do"
    CMD_ASK = "Ask me anything; the answer streams in as it is written"
    PARAM_PROMPT = "your message"
    PARAM_VOICE = "also answer with a voice message"
    CMD_RESET = "Forget this conversation"
    CMD_PERSONA = "Show or change how I talk"
    PARAM_PERSONA = "a preset ({presets}) or your own text"
    CMD_VOICE = "Show or change when I answer with voice"
    PARAM_VOICE_MODE = "off, only to voice messages, or always"
    CMD_CONFIG = "This chat's settings"
    CMD_CONFIG_SHOW = "Show this chat's settings"
    CMD_CONFIG_SET = "Change a setting"
    PARAM_KEY = "the setting"
    PARAM_VALUE = "its new value"
    CMD_FORGET = "Delete every message you sent me and what I remember about you"
    CMD_REMEMBER = "Remember a fact about you, for every chat where you talk to me"
    PARAM_FACT = "what to remember, e.g. I'm vegetarian"
    CMD_MEMORY = "What I remember about you"
    CMD_MEMORY_SHOW = "List what I remember about you, with ids"
    CMD_MEMORY_FORGET = "Forget a fact, or all of them"
    CMD_MEMORY_SHARE = "Use a fact in group chats too"
    CMD_MEMORY_PRIVATE = "Use a fact in private chats only (the default)"
    PARAM_FACT_ID = "a fact's id from /memory, or all"
    CMD_MODEL = "Show the models, or pick one for this chat"
    PARAM_MODEL = "a model from /model, or default"
    CMD_SESSION = "This chat's conversations: start a new one, list, resume, export"
    CMD_SESSION_LIST = "This chat's conversations"
    CMD_SESSION_NEW = "Start a new conversation (this one is kept)"
    PARAM_SESSION_NEW = "a name for it: letters, digits, - and _"
    CMD_SESSION_RESUME = "Go back to a conversation"
    PARAM_SESSION_RESUME = "its name, from /session list"
    CMD_SESSION_EXPORT = "This conversation as a Markdown file"
    CMD_TOOLS = "The tools I can use in this chat"
    CMD_JOIN = "Join your voice channel (or the one named) and talk there"
    PARAM_VOICE_CHANNEL = "the voice channel (default: the one you are in)"
    CMD_LEAVE = "Leave the voice channel"

    # -- commands: answers ----------------------------------------------------------------
    UNKNOWN_COMMAND = "Unknown command /{name}. Try /help."
    USAGE = "Usage: {usage}"
    BLOCKED = "Sorry, you can't use this bot."
    UNAVAILABLE = "/{name} is not available right now."
    REFUSE_MODEL = "Only admins can change the model here."
    REFUSE_PERSONA = "Only admins can change the persona here."
    REFUSE_VOICE = "Only admins can change voice replies here."
    REFUSE_CONFIG = "Sorry, only admins can change settings."
    REFUSE_COMMAND = "Sorry, only admins can use /{name} here."
    CANT_SET = "Can't set {key}: {reason}."
    UNKNOWN_LANGUAGE = (
        "Can't set stt_language: {value!r} is not a language Whisper knows "
        "(use a code like en, de or fr, auto to detect it, or follow)."
    )
    NOT_A_LANGUAGE = (
        "Can't set language: {value!r} is not a language code (use auto, or a code like en or fr)."
    )
    SETTING_CHANGED = "{key} is now {value} (was {old}). It applies from the next message."
    LANGUAGE_UNTRANSLATED = (
        "My own messages are not translated into {language} yet: they stay in English."
    )
    RESET_DONE = "Conversation cleared ({deleted} messages). Let's start over."
    FORGET_DONE = "Deleted {deleted} of your messages."
    FORGET_DONE_FACTS = (
        "Deleted {deleted} of your messages. I also forgot the {facts} you asked me to remember."
    )
    PERSONA_SHOWN = "Persona: {persona}. Presets: {presets}; or any text."
    VOICE_MODE_SHOWN = "Voice replies: {mode} ({modes})."
    CONFIG_SHOWN = "Settings for this chat:"
    CONFIG_USAGE = "Usage: /config set KEY VALUE. Keys: {keys}"
    FACTS = ("{count} fact", "{count} facts")
    MESSAGES = ("{count} message", "{count} messages")

    # -- /model ---------------------------------------------------------------------------
    MODELS = "Models:"
    MODEL_DEFAULT = "the bot's default"
    MODEL_LINE = "• {name}"
    MODEL_LINE_ABOUT = "• {name} — {about}"
    MODEL_THIS_CHAT = " (this chat)"
    MODEL_PICK = "/model NAME picks one for this chat (admins do in groups)."
    MODEL_ONLY_DEFAULT = "Only the default is set up here ([llm.models] in the config adds more)."
    MODEL_UNKNOWN = "There is no model called “{name}”. /model lists them."
    MODEL_CHANGED = "This chat now uses {name} (was {old}). It applies from the next message."

    # -- /tools ---------------------------------------------------------------------------
    TOOLS_SHOWN = "Tools I can use in this chat (I pick one when a question needs it):"
    TOOL_LINE = "• {name} ({server})"
    TOOL_LINE_ABOUT = "• {name} ({server}): {about}"
    TOOLS_NONE_SET_UP = (
        "No tools are set up on this bot. Its operator can add tool servers (MCP) in the "
        "[tools] section of the configuration: see docs/tools.md."
    )
    TOOLS_OFF = "Tools are off in this chat. An admin can turn them on: /config set tools on"
    TOOLS_BASE_MODEL = (
        "The model this chat uses is a base model, which cannot call tools. The bot's operator "
        "can run an instruct model with tool support instead (docs/tools.md shows how)."
    )
    TOOLS_NOT_READY = (
        "Tools are on in this chat, but no tool server is ready right now. "
        "Please try again in a moment."
    )

    # -- /remember, /memory ---------------------------------------------------------------
    REMEMBER_USAGE = "Usage: /remember TEXT, e.g. /remember I'm vegetarian"
    REMEMBER_TOO_LONG = (
        "That's too long to remember ({length} characters; the limit is {limit}). "
        "Please shorten it."
    )
    REMEMBER_FULL = (
        "I already remember {limit} facts about you, the most I keep. /memory forget ID makes room."
    )
    REMEMBERED = (
        "I'll remember that (#{id}). It stays private: I use it when you talk to me in a private "
        "chat. /memory share {id} lets me use it in groups too."
    )
    MEMORY_NOT_HERE = (
        "To keep them private, I list what I remember about you only where nobody else can read "
        "it: in a private chat with me."
    )
    MEMORY_EMPTY = "I don't remember anything about you yet. /remember TEXT adds a fact."
    MEMORY_SHOWN = "What I remember about you ({count}):"
    MEMORY_LINE = "#{id} {content}"
    MEMORY_LINE_SHARED = "#{id} (also in groups) {content}"
    MEMORY_HINT = "/memory forget ID|all · /memory share ID|all · /memory private ID|all"
    MEMORY_USAGE = "Usage: /memory {verb} ID|all (the ids are in /memory)"
    FORGOT_FACTS = "Forgot {facts}."
    NOTHING_TO_FORGET = "There was nothing to forget."
    FORGOT_FACT = "Forgot fact #{id}."
    NO_SUCH_FACT = "You have no fact #{id}."
    NO_FACTS = "You have no facts yet."
    SHARED_FACTS = "I'll use {facts} in groups too."
    PRIVATE_FACTS = "I'll use {facts} only in private chats."
    SHARED_FACT = "I'll use fact #{id} in groups too."
    PRIVATE_FACT = "I'll use fact #{id} only in private chats."

    # -- /session -------------------------------------------------------------------------
    SESSION_BAD_NAME = "A conversation's name is one word of letters, digits, - and _ (up to 40)."
    SESSION_EXISTS = "There is a conversation called “{name}” already: /session resume {name}."
    SESSION_STARTED = (
        "Started a new conversation, “{name}”. The one before is kept: "
        "/session resume {before} goes back to it."
    )
    SESSIONS = "This chat's conversations:"
    SESSION_LINE = "• {name} — {messages}"
    SESSION_LINE_DATED = "• {name} — {messages}, last {when}"
    SESSION_CURRENT = " (current)"
    SESSIONS_HINT = "/session resume NAME · /session new [NAME] · /session export"
    SESSION_UNKNOWN = "There is no conversation called “{name}” here. /session list shows them."
    SESSION_RESUMED = "Back to “{name}” ({messages})."
    EXPORT_EMPTY = "This conversation (“{name}”) is empty: nothing to export yet."
    EXPORT_READY = "Here is this conversation, “{name}”, as a file."
    EXPORT_TITLE = "# {bot_name} conversation “{session}”"
    EXPORT_ABOUT = "{chat} · exported {when} · {messages} messages"
    EXPORT_CHAT = "{platform} chat {chat}"
    EXPORT_LEFT_OUT = "_{messages} older messages left out (too long for one file)._"
    EXPORT_CAPTION = "Conversation “{session}”: {messages} messages."
    EXPORT_USER = "User"


@dataclass(frozen=True, slots=True)
class Phrase:
    """A message with its fields, to be said once the reader's language is known."""

    msg: Msg
    fields: tuple[tuple[str, object], ...] = ()


def phrase(msg: Msg, /, **fields: object) -> Phrase:
    """`msg` with `fields`, said later (`say(the_phrase)`)."""
    return Phrase(msg, tuple(fields.items()))


def say(message: Msg | Phrase, /, *, lang: str = ENGLISH, **fields: object) -> str:
    """The text of `message` in `lang` (a language tag; English when it has no translation)
    with its `{fields}` filled in; a field that is itself a message (a `Msg` or a `Phrase`) is
    said in the same language."""
    if isinstance(message, Phrase):
        fields = {**dict(message.fields), **fields}
        message = message.msg
    value: str | tuple[str, str] = message.value
    if isinstance(value, tuple):
        count = fields[COUNT]
        assert isinstance(count, int)
        translated = counted(message.name, *value, count, lang)
    else:
        translated = text(message.name, value, lang)
    said = {
        name: say(field, lang=lang) if isinstance(field, Msg | Phrase) else field
        for name, field in fields.items()
    }
    try:
        return translated.format(**said)
    except (KeyError, IndexError, ValueError):
        # A translation whose placeholders do not fit (tests/test_messages.py keeps this out of
        # the shipped catalogs): the user still gets the message, in English.
        log.exception("the %s translation of %s is broken", lang, message.name)
        english = value if isinstance(value, str) else value[fields[COUNT] != 1]
        return english.format(**said)


def queue_text(position: int, waiting: int, lang: str = ENGLISH) -> str:
    """A chat's "#n in line" notice: its best place in line, and how many of its messages wait."""
    if waiting > 1:
        return say(Msg.QUEUE_POSITION_MANY, lang=lang, position=position, waiting=waiting)
    return say(Msg.QUEUE_POSITION, lang=lang, position=position)
