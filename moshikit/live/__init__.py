"""Live audio for the conversational commands: the local engine, the sound-card loop, the
speaker queue and the recorder. ``chat`` uses it today; any full-duplex model (Moshi,
Hibiki) driven through a ``DuplexEngine`` can use it the same way."""

from .devices import DeviceClock, Player, level
from .engine import LatencyWindow, LocalEngine
from .loop import LiveConfig, LiveLoop, LiveState, run_live
from .recorder import Recorder, transcript_json, write_json_atomic

__all__ = ["DeviceClock", "LatencyWindow", "LiveConfig", "LiveLoop", "LiveState", "LocalEngine", "Player",
           "Recorder", "level", "run_live", "transcript_json", "write_json_atomic"]
