"""The catalog's Pocket TTS rows (read by ``catalog``), from pocket-tts 4.0.1's ``config/english.yaml``.

The weights with voice cloning (``kyutai/pocket-tts``) are gated: the hub serves them once the
user has accepted the terms. The open repo holds the same model without voice cloning, the
tokenizer and the predefined voices' states (``embeddings/<name>.safetensors``).
"""

OPEN_REPO = "kyutai/pocket-tts-without-voice-cloning"
FILES = ("languages/english/model.safetensors", f"hf://{OPEN_REPO}/languages/english/tokenizer.json",
         f"hf://{OPEN_REPO}/languages/english/embeddings/alba.safetensors")

POCKET_FAMILIES = (
    ("pocket-tts", "tts", "Pocket TTS ~100M, English, made for CPUs, voice cloning from a sample (gated)"),
    ("pocket-tts-open", "tts", "Pocket TTS ~100M without voice cloning: its predefined voices only"),
)
POCKET_ALIASES = {"pocket-tts": "pocket-tts", "pocket": "pocket-tts", "pocket-tts-open": "pocket-tts-open"}
POCKET_ENTRIES = (
    dict(family="pocket-tts", variant="any-fp32", repo="kyutai/pocket-tts", backend="any", precision="fp32",
         files=FILES, size_gb=0.44, min_memory_gb=1,
         notes="GATED: accept the terms at https://huggingface.co/kyutai/pocket-tts, then `hf auth login`; "
               "without access speak -b pocket uses pocket-tts-open and says so. Needs pip install "
               "'moshikit[pocket]'"),
    dict(family="pocket-tts-open", variant="any-fp32", repo=OPEN_REPO, backend="any", precision="fp32",
         files=tuple(f.replace(f"hf://{OPEN_REPO}/", "") for f in FILES), size_gb=0.44, min_memory_gb=1,
         notes="open; voices: `moshikit download pocket-tts-open --file languages/english/embeddings/NAME"
               ".safetensors`"),
)
