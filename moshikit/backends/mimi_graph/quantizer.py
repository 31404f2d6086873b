"""Mimi's residual vector quantizer as tables and pure functions: codes from latents and back."""

from __future__ import annotations

from .layers import Unsupported


def quantizer_tables(q):
    """For each residual stage of a moshi ``SplitResidualVectorQuantizer``: its input
    projection and, per codebook, the codebook and its augmented form for distances."""
    import torch

    stages = [q.rvq_first] + ([q.rvq_rest] if q.n_q > q.n_q_semantic else [])
    out = []
    for rvq in stages:
        books = []
        for layer in rvq.vq.layers[: rvq.n_q]:
            if not all(isinstance(p, torch.nn.Identity) for p in (layer.project_in, layer.project_out)):
                raise Unsupported("quantizer with codebook projections")
            e = layer._codebook.embedding.detach().clone()
            # |x - e|^2 = [-2x, |x|^2, 1] . [e, 1, |e|^2]: one product per codebook, the way
            # torch.cdist computes distances for large sets.
            books.append((e, torch.cat([e, torch.ones(e.shape[0], 1), (e * e).sum(-1, keepdim=True)], -1)))
        out.append((rvq.input_proj, books))
    return out


def quantize(tables, x):
    """Latent [B, D, T] -> codes int64 [B, K, T] (nearest codeword, residual by residual)."""
    import torch

    codes = []
    for proj, books in tables:
        r = proj(x).transpose(1, 2)  # [B, T, d]
        for e, aug in books:
            xa = torch.cat([-2 * r, (r * r).sum(-1, keepdim=True), torch.ones_like(r[..., :1])], -1)
            idx = torch.argmin(xa @ aug.T, -1)  # [B, T]
            codes.append(idx)
            r = r - e[idx]
    return torch.stack(codes, 1)


def dequantizer_tables(q):
    """Every codebook of a ``SplitResidualVectorQuantizer`` in one table (codebook k's
    entries at rows ``k * bins ...``), and the two stages' output projections."""
    import torch

    stages = [q.rvq_first, q.rvq_rest]
    books = [layer._codebook.embedding.detach().clone() for rvq in stages for layer in rvq.vq.layers]
    if any(not (isinstance(layer.project_out, torch.nn.Identity)) for rvq in stages for layer in rvq.vq.layers):
        raise Unsupported("quantizer with codebook projections")
    if q.n_q_semantic != 1:
        raise Unsupported("quantizer with more than one semantic codebook")
    return torch.cat(books), books[0].shape[0], q.rvq_first.output_proj, q.rvq_rest.output_proj


def dequantize(tables, codes):
    """Codes int64 [B, K, T] (any K) -> Mimi's latent [B, D, T], as moshi's ``decode_latent``."""
    import torch

    table, bins, proj_first, proj_rest = tables
    k = torch.arange(codes.shape[1])[None, :, None]
    emb = table[codes + k * bins]  # [B, K, T, d]
    first = proj_first(emb[:, 0].transpose(1, 2))
    return first + proj_rest(emb[:, 1:].sum(1).transpose(1, 2))
