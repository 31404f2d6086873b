"""The conversation's text: only what moshi's own server shows (no padding, no control pieces)."""

from __future__ import annotations

import numpy as np
import pytest

from moshikit.conversation import Conversation, piece_decoder, run_offline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONTROL = {"<unk>", "<s>", "</s>", "<pad>"}


@pytest.fixture(scope="module")
def repo(mimi_weights):
    from moshikit.synthetic import lm as synthetic_lm

    return synthetic_lm.ensure_synthetic_moshi(mimi_path=mimi_weights)


@pytest.fixture(scope="module")
def lm(repo):
    from moshikit.backends import registry
    from moshikit.backends.base import SamplingConfig
    from moshikit.backends.lm_repo import resolve_repo

    return registry.module("lm", "torch").load(resolve_repo(repo), device="cpu", sampling=SamplingConfig(seed=3))


def test_piece_decoder_shows_text_pieces_only(lm):
    sp = lm.text_tokenizer()
    piece = piece_decoder(sp)
    shown = {i: piece(i) for i in range(sp.get_piece_size())}
    assert {sp.id_to_piece(i) for i in range(4)} == CONTROL  # Kyutai's layout: ids 0-3
    assert all(shown[i] == "" for i in range(4))
    assert all(shown[i] == sp.id_to_piece(i).replace("▁", " ") != "" for i in range(4, sp.get_piece_size()))
    assert piece(-1) == "" and piece(sp.get_piece_size()) == ""


class EveryTextToken:
    """The synthetic LM, its text token replaced by 0, 1, 2... in turn: a model that says
    every id it can, control ids included."""

    def __init__(self, lm) -> None:
        self.lm, self.info, self.n = lm, lm.info, 0

    def reset(self, batch_size: int = 1) -> None:
        self.lm.reset(batch_size)
        self.n = 0

    def step(self, codes):
        out = self.lm.step(codes)
        if out is not None:
            out = out.copy()
            out[:, 0] = self.n % self.info.text_card
            self.n += 1
        return out


def test_an_offline_chat_transcript_holds_no_control_pieces(lm, torch_codec):
    from moshikit.chat import transcript_json

    conv = Conversation(torch_codec.backend, EveryTextToken(lm), lm.text_tokenizer())
    pcm = np.random.default_rng(0).standard_normal(1920 * 70).astype(np.float32) * 0.1
    _, pieces = run_offline(conv, pcm)  # 70 frames + the delay: every one of the 64 ids at least once
    said = [p["text"] for p in pieces]
    assert not CONTROL & {s.strip() for s in said}
    assert not any(tag in transcript_json(pieces, duration=6.0)["text"] for tag in CONTROL)
    sp = lm.text_tokenizer()
    assert {p["token"] for p in pieces} == set(range(4, sp.get_piece_size()))  # every text piece is kept
