"""The encoder and decoder as exportable modules (pcm/codes and state in, codes/pcm and
state out), and the state a stream carries between calls."""

from __future__ import annotations

from .layers import (StateCursor, StateSpec, Unsupported, seanet_specs, specs_conv, specs_convtr, stream_conv,
                     stream_convtr, stream_seanet)
from .transformer import stream_transformer, transformer_specs
from .quantizer import dequantize, dequantizer_tables, quantize, quantizer_tables


def _modules():
    import torch

    class StreamEncoder(torch.nn.Module):
        """pcm [B, 1, 1920 n], offset [B] (25 Hz steps), *state -> codes [B, K, n], *state."""

        def __init__(self, mimi) -> None:
            super().__init__()
            from moshi.modules.resample import ConvDownsample1d

            self.mimi = mimi
            if mimi.encoder_frame_rate != mimi.frame_rate and not (
                    isinstance(mimi.downsample, ConvDownsample1d) and mimi.downsample.learnt):
                raise Unsupported("encoder resampling other than a learnt convolution")
            specs: list[StateSpec] = []
            seanet_specs(mimi.encoder.model, "encoder", specs)
            transformer_specs(mimi.encoder_transformer, "encoder_transformer", specs)
            if mimi.encoder_frame_rate != mimi.frame_rate:
                specs_conv(mimi.downsample.conv, "downsample", specs)
            self.specs = specs
            self.tables = quantizer_tables(mimi.quantizer)

        def forward(self, x, offset, *state):
            cur = StateCursor(state)
            first = offset == 0
            m = self.mimi
            x = stream_seanet(m.encoder.model, x, cur, first)
            x = stream_transformer(m.encoder_transformer, x, cur, offset)
            if m.encoder_frame_rate != m.frame_rate:
                x = stream_conv(m.downsample.conv, x, cur, first)
            return (quantize(self.tables, x), *cur.out)

        def key_parts(self):  # what the graph holds
            m = self.mimi
            return [m.encoder, m.encoder_transformer, getattr(m, "downsample", None), m.quantizer]

    class StreamDecoder(torch.nn.Module):
        """codes [B, K, n] (any K), offset [B] (25 Hz steps), *state -> pcm [B, 1, 1920 n], *state."""

        def __init__(self, mimi) -> None:
            super().__init__()
            from moshi.modules.resample import ConvTrUpsample1d

            self.mimi = mimi
            if mimi.encoder_frame_rate != mimi.frame_rate and not (
                    isinstance(mimi.upsample, ConvTrUpsample1d) and mimi.upsample.learnt):
                raise Unsupported("decoder resampling other than a learnt transposed convolution")
            specs: list[StateSpec] = []
            if mimi.encoder_frame_rate != mimi.frame_rate:
                specs_convtr(mimi.upsample.convtr, "upsample", specs)
            transformer_specs(mimi.decoder_transformer, "decoder_transformer", specs)
            seanet_specs(mimi.decoder.model, "decoder", specs)
            self.specs = specs
            self.tables = dequantizer_tables(mimi.quantizer)

        def forward(self, codes, offset, *state):
            cur = StateCursor(state)
            m = self.mimi
            x = dequantize(self.tables, codes)
            if m.encoder_frame_rate != m.frame_rate:
                x = stream_convtr(m.upsample.convtr, x, cur)
            x = stream_transformer(m.decoder_transformer, x, cur, offset)
            x = stream_seanet(m.decoder.model, x, cur, offset == 0)
            return (x, *cur.out)

        def key_parts(self):
            m = self.mimi
            return [m.quantizer, getattr(m, "upsample", None), m.decoder_transformer, m.decoder]

    return StreamEncoder, StreamDecoder


def stream_encoder(mimi):
    """The functional streaming encoder of a moshi ``MimiModel`` (raises ``Unsupported``)."""
    return _modules()[0](mimi).eval()


def stream_decoder(mimi):
    return _modules()[1](mimi).eval()


class StreamState:
    """The state of one batch of streams through a graph: arrays and per-row positions."""

    def __init__(self, specs: list[StateSpec], batch: int, steps_per_frame: int) -> None:
        import numpy as np

        self.specs, self.batch, self.steps = specs, batch, steps_per_frame
        self.arrays = [np.zeros((batch, *s.shape), np.float32) for s in specs]
        self.offset = np.zeros(batch, np.int64)  # transformer steps so far, per row

    def feeds(self) -> dict:
        return {"offset": self.offset, **{f"s{i}": a for i, a in enumerate(self.arrays)}}

    def advance(self, outputs, frames: int) -> None:
        """Take a call's state outputs (in spec order) for ``frames`` frames."""
        import numpy as np

        t = frames * self.steps
        for i, (spec, out) in enumerate(zip(self.specs, outputs)):
            if spec.ring_axis is None:
                self.arrays[i] = out
                continue
            ring, axis = self.arrays[i], spec.ring_axis
            keep = min(t, spec.shape[axis])
            new = np.arange(t - keep, t)
            slots = (self.offset[:, None] + new) % spec.shape[axis]  # [B, keep]
            for b in range(self.batch):
                at: list = [slice(None)] * len(spec.shape)
                at[axis] = slots[b]
                ring[b][tuple(at)] = np.take(out[b], new, axis=axis)
        self.offset = self.offset + t

    def reset(self, mask) -> None:
        """Restart the rows where ``mask`` is true."""
        import numpy as np

        rows = np.asarray(mask, dtype=bool)
        for a in self.arrays:
            a[rows] = 0.0
        self.offset = np.where(rows, 0, self.offset)
