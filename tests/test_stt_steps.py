"""The LM steps once per real frame: a batch's last chunk does not step padding."""

from __future__ import annotations

import numpy as np
import pytest

from moshikit import stt
from moshikit.synthetic.stt import write_stt_repo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_short_file_costs_its_frames_not_whole_chunks(tmp_path, mimi_weights, speech):
    repo = write_stt_repo(tmp_path / "r", kind="random", mimi_path=mimi_weights)
    model = stt.load_stt(str(repo), backend="torch", device="cpu")
    calls = []
    step = model.lm.step_heads
    model.lm.step_heads = lambda codes: (calls.append(codes.shape[0]), step(codes))[1]
    pcm = np.resize(speech, 24000 * 2).astype(np.float32)  # 25 frames + 7 of delay flush (0.5 s)
    streams = [stt.Stream(model, f"s{i}", [pcm[: 24000 * (i + 1)]], refine=False) for i in range(2)]
    done = list(stt.run_streams(model, streams, 2, chunk=25))
    assert sorted(s.source for s in done) == ["s0", "s1"]
    # s0: 12.5 + 7 -> 20 frames, s1: 25 + 7 = 32 frames: chunk 1 steps 25, chunk 2 only 7 (not 25)
    assert len(calls) == 32
    assert [s.step for s in sorted(done, key=lambda s: s.source)] == [20, 32]
