"""Mimi's streaming encoder and decoder as pure functions: (input, state) -> (output, state).

moshi's ``MimiModel`` keeps its streaming state inside its modules and updates it in
place, through Python bookkeeping that costs more than the arithmetic for one 80 ms
frame on a CPU. Here the same computation is written with the state passed in and
returned as plain tensors, so it can be exported once to ONNX (one graph for the
encoder, one for the decoder, free batch and time axes) and run by ONNX Runtime with
no Python per layer. The weights are moshi's own modules: only the wiring is ours.

The encoder graph ends with the quantizer (codes out), the decoder graph starts with the
codebook lookup (codes in), so a streaming frame never returns to Python between layers.

Semantics follow moshi's streaming modules:

* a causal convolution keeps the last ``(kernel - 1) * dilation + 1 - stride`` input
  samples (zeros at the start; the resampling convolution, in ``replicate`` mode,
  starts from copies of its first input sample instead);
* a transposed convolution with ``kernel == 2 * stride`` (all of Mimi's) keeps the
  previous input step, the same information as moshi's carried partial outputs;
* each transformer layer keeps the keys and values of the last ``context`` steps in a
  ring (slot = position mod context), and a query at position ``p`` attends to keys at
  positions ``p - context < q <= p``. Unlike moshi's ring (exactly ``context`` entries,
  overwritten before a multi-step call has read them), the graph reads the whole window
  before the call's new steps, so a chunk of many frames sees what a whole-file pass sees.

Positions are per batch row (``offset``, in transformer steps at 25 Hz), so one row
of a batch can restart while the others go on.
"""

from .graph import StreamState, stream_decoder, stream_encoder
from .layers import StateSpec, Unsupported, conv1d, elu

__all__ = ["StateSpec", "StreamState", "Unsupported", "conv1d", "elu", "stream_decoder", "stream_encoder"]
