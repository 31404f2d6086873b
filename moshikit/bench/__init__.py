"""Benchmarks: latency and throughput of each stage, every backend side by side.

Library only: functions return ``BenchResult`` objects (rows of sample
statistics plus the environment) and never print; ``moshikit bench`` renders.

Conventions. Throughput is "x real time" = audio seconds / wall seconds (what
Kyutai's scripts call RTF, the inverse of the textbook real-time factor).
Latency is per call, in milliseconds. Warm-up calls are excluded. Percentiles
use linear interpolation between order statistics (numpy's default).

Stages: ``codec``, ``lm`` (LM and chat), ``stt``, ``tts``, ``translate``; ``core`` holds what they share.
"""

from .codec import CodecPlan, bench_codec, codec_subjects, is_cuda
from .core import (CONVENTION, FRAME_SECONDS, SCHEMA, BenchResult, Clock, PeakMemory, Row, Stats, compare,
                   environment, histogram, latency_row, load, measure, save, throughput_row)
from .lm import (LMPlan, bench_chat, bench_lm, capacity_row, capacity_text, chat_lm, lm_subjects,
                 realtime_capacity, synthetic_moshi_repo)

__all__ = ["CONVENTION", "FRAME_SECONDS", "SCHEMA", "BenchResult", "Clock", "CodecPlan", "LMPlan", "PeakMemory",
           "Row", "Stats", "bench_chat", "bench_codec", "bench_lm", "capacity_row", "capacity_text", "chat_lm",
           "codec_subjects", "compare", "environment", "histogram", "is_cuda", "latency_row", "lm_subjects", "load",
           "measure", "realtime_capacity", "save", "synthetic_moshi_repo", "throughput_row"]
