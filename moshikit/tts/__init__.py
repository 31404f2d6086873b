"""Kyutai text-to-speech (``moshikit speak``): loading, voices, text chunks, generation, files."""

from .engine import Settings, Speech, WordTime, generate
from .model import TtsModel, load_tts
from .text import Chunk, chunks, dialogue_chunks, read_dialogue, sentences
from .voices import Voice, list_voices, resolve_voice

__all__ = ["Chunk", "Settings", "Speech", "TtsModel", "Voice", "WordTime", "chunks", "dialogue_chunks",
           "generate", "list_voices", "load_tts", "read_dialogue", "resolve_voice", "sentences"]
