"""Audio uploads of the OpenAI routes: the multipart form, the file on disk, its blocks.

The body has already been read within its bound (``http.read_body``); the file is written to a
private temporary file (libsndfile and symphonia read paths), opened as ``transcribe`` opens
files (wav, flac, ogg/opus, mp3...), measured from its header and refused past ``max_seconds``
before any model time is spent, then read in 24 kHz mono blocks as the model takes them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from ..errors import AudioError, MoshikitError


class TooLong(MoshikitError):
    """An upload longer than the server takes."""


class ClientLeft(MoshikitError):
    """The client hung up while its upload was waiting or being worked on."""


@dataclass
class Upload:
    path: str
    source: object  # audio.AudioSource
    duration: float

    @property
    def samples(self) -> int:
        """Its length at 24 kHz."""
        return int(self.source.target_frames)

    def close(self) -> None:
        self.source.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def open_upload(data: bytes, filename: str, max_seconds: float) -> Upload:
    """``data`` as an opened audio file; an unreadable, empty or too long one is one error."""
    from ..audio import open_audio

    suffix = os.path.splitext(filename or "")[1][:10]
    if not suffix[1:].isalnum():
        suffix = ""
    fd, path = tempfile.mkstemp(prefix="moshikit-upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            src = open_audio(path)
        except AudioError as exc:  # the temporary name means nothing to the client
            raise AudioError(str(exc).replace(path, "the uploaded file")) from None
    except BaseException:
        os.unlink(path)
        raise
    upload = Upload(path, src, src.duration)
    if upload.duration > max_seconds:
        upload.close()
        raise TooLong(f"the audio is {upload.duration:.0f} s long; this server takes at most "
                      f"{max_seconds:.0f} s per request")
    return upload


def read_blocks(upload: Upload, seconds: float = 2.0, gone=None):
    """The upload's mono 24 kHz float32 blocks; a file that breaks mid-read is one AudioError, and
    once ``gone`` (a ``threading.Event``) is set, the client hung up: the next block raises ClientLeft."""
    from ..audio import stream_24k

    try:
        for b in stream_24k(upload.source, "mix", seconds=seconds):
            if gone is not None and gone.is_set():
                raise ClientLeft("the client left")
            yield b[0]
    except MoshikitError:
        raise
    except (RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"the uploaded file cannot be read ({str(exc).splitlines()[0][:120]})") from None


async def form_of(request, body: bytes):
    """The multipart form of ``request`` whose body was already read (bounded) as ``body``;
    ValueError for a body that is not one."""
    from starlette.requests import Request

    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=32, max_part_size=len(body) + 1)
    except Exception as exc:  # noqa: BLE001 - starlette's MultiPartException, an AssertionError without a boundary...
        raise ValueError(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__) from None
