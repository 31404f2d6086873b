"""run_streams hands back every stream, also those that end exactly on a chunk boundary
(found by the CUDA tests' dry run: at batch 1, streams after the first were dropped)."""

import numpy as np
import pytest

from moshikit import stt
from moshikit.synthetic.stt import write_stt_repo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory, mimi_weights):
    repo = write_stt_repo(tmp_path_factory.mktemp("stt") / "random", kind="random", mimi_path=mimi_weights)
    return stt.load_stt(str(repo), backend="torch", device="cpu")


@pytest.mark.parametrize("batch, chunk", [(1, 1), (2, 1), (1, 5)])
def test_every_stream_comes_back(model, speech, batch, chunk):
    audio = [np.resize(np.roll(speech, 24000 * i), 1920 * 10).astype(np.float32) for i in range(3)]
    streams = [stt.Stream(model, f"s{i}", [a]) for i, a in enumerate(audio)]
    done = [s.source for s in stt.run_streams(model, streams, batch, chunk=chunk)]
    assert sorted(done) == ["s0", "s1", "s2"]
