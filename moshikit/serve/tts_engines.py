"""The TTS model's worker: requests ("jobs") from any number of connections spoken by one loaded model,
on one thread of its own, so the server's event loop never waits on the model.

* ``SlotEngine`` (Kyutai TTS on torch, voice-embedding models): one ``tts.slots.SlotBatch``; each
  job takes a free slot, its words go in as they arrive, its audio and timed words come out
  frame by frame; a finished job's slot is refilled by the next waiting one.
* ``SerialEngine`` (Pocket TTS, MLX, audio-prefix models): jobs wait in a bounded queue and are
  spoken one at a time through the backend's own ``generate``, each once all of its text is in
  (so a client that is slow to send its words holds no one else back).

Both take at most ``capacity`` jobs at once (speaking and waiting); ``submit`` says False beyond it.
A job's events go to its ``sink`` from the worker thread: ``("audio", pcm)``, ``("word", text,
start, stop)``, ``("done", ended)``, ``("error", message)``; the last event is always done or error.
"""

from __future__ import annotations

import abc
import collections
import threading
from typing import Callable

from ..errors import MoshikitError


class Cancelled(Exception):
    """The job's client left: its generation stops."""


class Job:
    """One text to speak: its voice and pace, its text as it arrives, where its events go."""

    def __init__(self, voice, sink: Callable[[tuple], None], *, padding_bonus: float = 0.0) -> None:
        self.voice, self.sink, self.padding_bonus = voice, sink, padding_bonus
        self._lock = threading.Lock()
        self._texts: collections.deque[str] = collections.deque()
        self.complete = False
        self.cancelled = False
        self.finished = False
        self.characters = 0

    def push(self, text: str) -> None:
        with self._lock:
            self._texts.append(text)
            self.characters += len(text)

    def end(self) -> None:
        with self._lock:
            self.complete = True

    def cancel(self) -> None:
        self.cancelled = True

    def take(self) -> tuple[list[str], bool]:
        """The text that arrived since the last call, and whether it is all in."""
        with self._lock:
            texts = list(self._texts)
            self._texts.clear()
            return texts, self.complete

    def emit(self, event: tuple) -> None:
        if self.finished:
            return
        if event[0] in ("done", "error"):
            self.finished = True
        self.sink(event)


class _Engine(abc.ABC):
    #: takes a job's words as they arrive (True), or only once all of its text is in
    streams_text = True

    def __init__(self, capacity: int, log: Callable[[str], None] | None = None) -> None:
        self.capacity = capacity
        self.log = log or (lambda line: None)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.failure: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"moshikit-tts-{type(self).__name__}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def load(self) -> int:
        """Jobs held now (speaking and waiting); those whose client left no longer count."""
        with self._cond:
            return self._held()

    def _held(self) -> int:
        return sum(1 for j in [*self.speaking(), *self._waiting] if not j.cancelled)

    def speaking(self) -> list[Job]:
        return []

    def free(self) -> int:
        return max(0, self.capacity - self.load()) if self.failure is None else 0

    def submit(self, job: Job) -> bool:
        with self._cond:
            if self._stop or self.failure is not None or self._held() >= self.capacity:
                return False
            self._waiting.append(job)
            self._cond.notify_all()
            return True

    def wake(self) -> None:
        """New text or an end for some job: a sleeping worker looks again."""
        with self._cond:
            self._cond.notify_all()

    def _main(self) -> None:
        try:
            self.run()
        except Exception as exc:  # noqa: BLE001 - the model failed: every job hears it, new ones are refused
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            self.failure = f"the TTS model failed ({type(exc).__name__}: {first})"
            self.log(self.failure)
            with self._cond:
                jobs = list(self._waiting) + self.abandon()
                self._waiting.clear()
            for job in jobs:
                job.emit(("error", "the TTS model failed"))

    def abandon(self) -> list[Job]:
        return []

    @abc.abstractmethod
    def run(self) -> None:
        """The engine's loop, on its worker thread."""


class SlotEngine(_Engine):
    """Jobs share one ``SlotBatch`` of ``batch`` slots; up to ``queue`` more wait for a slot."""

    def __init__(self, model, batch: int, default_voice, *, temp: float, cfg: float = 2.0, queue: int = 0,
                 log=None) -> None:
        super().__init__(batch + queue, log)
        self.model, self.batch, self.default_voice, self.temp, self.cfg = model, batch, default_voice, temp, cfg
        self.jobs: list[Job | None] = [None] * batch

    def speaking(self) -> list[Job]:
        return [j for j in self.jobs if j is not None]

    def abandon(self) -> list[Job]:
        jobs = [j for j in self.jobs if j is not None]
        self.jobs = [None] * self.batch
        return jobs

    def run(self) -> None:
        from ..tts.slots import SlotBatch

        with SlotBatch(self.model, self.batch, self.default_voice, temp=self.temp, cfg=self.cfg) as slots:
            while True:
                with self._cond:
                    if self._stop:
                        return
                    while self._waiting and slots.free():
                        slot = slots.free()[0]
                        job = self._waiting.popleft()
                        if job.cancelled:
                            continue
                        try:
                            slots.start(slot, job.voice, job.padding_bonus)
                        except MoshikitError as exc:
                            job.emit(("error", str(exc)))
                            continue
                        self.jobs[slot] = job
                self._feed(slots)
                events = slots.step()
                for e in events:
                    job = self.jobs[e.slot]
                    if job is None:
                        continue
                    if e.kind == "audio":
                        job.emit(("audio", e.pcm))
                    elif e.kind == "word":
                        job.emit(("word", e.text, e.start, e.stop))
                    else:
                        job.emit(("done", e.ended))
                        self._free(e.slot)
                if not events:
                    with self._cond:
                        if not self._stop:
                            self._cond.wait(0.02)

    def _free(self, slot: int) -> None:
        with self._cond:
            self.jobs[slot] = None

    def _feed(self, slots) -> None:
        """Each slot's newly arrived text; the slots of jobs that left or failed are freed."""
        for slot, job in enumerate(self.jobs):
            if job is None:
                continue
            if job.cancelled:
                slots.release(slot)
                self._free(slot)
                continue
            texts, complete = job.take()
            try:
                for text in texts:
                    slots.push(slot, text)
            except MoshikitError as exc:
                job.emit(("error", str(exc)))
                slots.release(slot)
                self._free(slot)
                continue
            if complete:
                slots.end_text(slot)
                if slots.empty(slot):
                    job.emit(("error", "nothing to say: the text is empty"))
                    slots.release(slot)
                    self._free(slot)


class SerialEngine(_Engine):
    """Jobs spoken one at a time by the backend's ``generate`` (all their text in first); ``queue`` wait."""

    streams_text = False

    def __init__(self, model, settings, *, queue: int = 4, log=None) -> None:
        super().__init__(1 + queue, log)
        self.model, self.settings = model, settings
        self.current: Job | None = None

    def speaking(self) -> list[Job]:
        return [self.current] if self.current is not None else []

    def abandon(self) -> list[Job]:
        return self.speaking()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not any(j.complete or j.cancelled for j in self._waiting):
                    self._cond.wait(0.5)
                if self._stop:
                    return
                job = next(j for j in self._waiting if j.complete or j.cancelled)
                self._waiting.remove(job)
                if job.cancelled:
                    continue
                self.current = job
            try:
                self._speak(job)
            finally:
                with self._cond:
                    self.current = None

    def _speak(self, job: Job) -> None:
        from dataclasses import replace

        from ..tts.text import chunks

        texts, _ = job.take()

        def on_pcm(pcm) -> None:
            if job.cancelled:
                raise Cancelled
            job.emit(("audio", pcm))

        settings = replace(self.settings, padding_bonus=job.padding_bonus)
        try:
            text = " ".join(t.strip() for t in texts if t.strip())
            speech = self.model.generate(chunks([text]), [job.voice], settings, on_pcm=on_pcm)
        except Cancelled:
            return
        except MoshikitError as exc:
            job.emit(("error", str(exc)))
            return
        for w in speech.words:
            job.emit(("word", w.text, w.start, w.end))
        job.emit(("done", speech.ended))
