"""LighterGlue inference with both images' keypoints in one token matrix (same weights, same function).

kornia's ``LightGlue._forward`` runs every linear layer, layer norm and GELU once per image. Here the keypoints of
the two images are one [(M + N) x D] matrix: the per-keypoint layers (projections, feed-forward networks,
matchability, token confidence) run once on it and only attention looks at each image's segment; pruning removes
points from it with one index. Weights are repacked once:

- q, k, v come from one product with the projection's rows reordered (kornia interleaves them per channel and
  then copies them apart);
- the rotary encoding ``x cos + rotate_half(x) sin`` (rotate_half: (x0, x1) -> (-x1, x0) per channel pair, cos
  and sin equal within a pair) is the complex product of the pairs (x0 + i x1) (cos + i sin): one elementwise
  kernel instead of kornia's copies (same values on the test pairs);
- the attention output projection is folded into the first layer of the feed-forward network, which reads
  ``[x, out_proj(message)]``: ``W [x; P m + p] + b = W_x x + (W_m P) m + (W_m p + b)``, so one product less and no
  concatenated copy per block.

Matrix products of other shapes sum in another order, so the result is kornia's up to float rounding (the tests
compare matches and scores with kornia's forward). One attention head only (LighterGlue's configuration).

``bucket`` (set on the CPU by ``XFeatLighterGlue``, float32 and bfloat16): oneDNN builds a primitive (in bf16 a
JIT kernel) for every new shape, and the shapes here follow each frame's keypoint count and pruning. With a
bucket, every product sees row counts rounded up to its multiples (zero rows, dropped after): the per-keypoint
layers, the positional encoding and input projection of ``prepare``, the pruning's matchability, the assignment's
projection, matchability and [m x n] similarity; attention sees queries and keys padded likewise (the padded keys
masked out): a few dozen shapes, whose bf16 kernels ``warm_up`` builds once. Without it (issue #20) the shapes
that were left unpadded (pruned token counts, the similarity's m x n) made a new oneDNN primitive nearly every
frame: its cache (1024 primitives) filled with ~0.6 GB of bf16 kernels and, churning, kept keyframe_matcher's
memory growing by ~14 MB/min; in float32, 800 matches of rendered frames grew it by 200 MB (1 MB bucketed). In
float32 the padded result equals the unpadded one up to rounding (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _fold_output(out_proj: torch.nn.Linear, first: torch.nn.Linear, d: int) -> tuple:
    """(W_x [2d x d], W_m P [2d x d], bias [2d]) of ``first([x, out_proj(m)])`` = x W_x^T + m (W_m P)^T + bias."""
    w, b = first.weight.detach(), first.bias.detach()
    w_x, w_m = w[:, :d].contiguous(), w[:, d:]
    return w_x, (w_m @ out_proj.weight.detach()).contiguous(), b + w_m @ out_proj.bias.detach()


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bucket: int = 0) -> torch.Tensor:
    """[L x D] queries, [S x D] keys and values -> [L x D]: one head of scaled dot-product attention (given to
    PyTorch as [1 x 1 x L x D]: with fewer dimensions it takes its unfused math path on the CPU, 3x slower).
    bucket > 1: L and S padded to its multiples, the padded keys masked out."""
    if bucket <= 1:
        return F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]
    n_q, n_k = len(q), len(k)
    pq, pk = -n_q % bucket, -n_k % bucket
    mask = (torch.arange(n_k + pk, device=k.device) < n_k)[None, None, None]
    q, k, v = F.pad(q, (0, 0, 0, pq)), F.pad(k, (0, 0, 0, pk)), F.pad(v, (0, 0, 0, pk))
    return F.scaled_dot_product_attention(q[None, None], k[None, None], v[None, None], attn_mask=mask)[0, 0, :n_q]


def _rotate(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """[T x D] (channel pairs as complex numbers) times [T x D/2] complex rotations -> [T x D], x's dtype (in
    float32: complex half precision, e.g. under CUDA float16 autocast, is not generally supported)."""
    return torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * rot).flatten(-2).to(x.dtype)


class PackedLighterGlue:
    """A loaded kornia ``LightGlue`` (one head; cross blocks kornia's ``CrossBlock`` or ``FusedCrossBlock``: same
    parameters) repacked for single-pair inference on two per-image states. Build it after the model is loaded
    and on its device; it keeps references to the LayerNorm / GELU / second FFN layers and copies the rest.

    ``prepare`` computes an image's state up to layer 0's self-attention (what ``XFeatLighterGlue`` caches per
    keyframe); ``match`` runs the rest on two states: the same layers, early stopping, point pruning and match
    filter as kornia's ``_forward``.
    """

    def __init__(self, glue: torch.nn.Module):
        c = glue.conf
        if int(c.num_heads) != 1:
            raise ValueError(f"PackedLighterGlue supports one attention head, got {c.num_heads}")
        self.glue, self.conf, self.d = glue, c, int(c.descriptor_dim)
        d = self.d
        self.bucket = 0  # > 1: per-keypoint layers see row counts rounded up to a multiple of this (zero rows added)
        self.self_qkv, self.self_ffn, self.cross_qkv, self.cross_ffn = [], [], [], []
        with torch.no_grad():
            for layer in glue.transformers:
                s, x = layer.self_attn, layer.cross_attn
                # kornia unflattens Wqkv's output as (heads, dim, 3): rows 0::3 are q, 1::3 k, 2::3 v
                w, b = s.Wqkv.weight.detach(), s.Wqkv.bias.detach()
                self.self_qkv.append((torch.cat([w[0::3], w[1::3], w[2::3]]), torch.cat([b[0::3], b[1::3], b[2::3]])))
                self.self_ffn.append((*_fold_output(s.out_proj, s.ffn[0], d), s.ffn[1:]))
                # kornia's CrossBlock scales q and k by d^-1/4 each, SDPA q.k by d^-1/2: the same function
                self.cross_qkv.append((torch.cat([x.to_qk.weight, x.to_v.weight]).detach(),
                                       torch.cat([x.to_qk.bias, x.to_v.bias]).detach()))
                self.cross_ffn.append((*_fold_output(x.to_out, x.ffn[0], d), x.ffn[1:]))

    # ------------------------------------------------------------------ blocks on the token matrix
    def _rows(self, *xs: torch.Tensor) -> list:
        """xs padded with zero rows to the next multiple of ``bucket`` (unchanged when bucket <= 1)."""
        if self.bucket <= 1:
            return list(xs)
        extra = -len(xs[0]) % self.bucket
        return [F.pad(x, (0, 0, 0, extra)) if extra else x for x in xs]

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(self._rows(x)[0], weight, bias)[:len(x)]

    def _token(self, confidence: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """[T x D] -> [T] kornia's ``TokenConfidence.token`` (linear + sigmoid; rows bucketed: the early exit runs it
        after every layer on the pruned token count, a new oneDNN primitive per count without the bucket)."""
        linear = confidence.token[0]
        return torch.sigmoid(self._linear(x, linear.weight, linear.bias)[:, 0])

    def _matchability(self, head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """[T x D] -> [T x 1] logits of kornia's ``MatchAssignment.matchability`` (rows bucketed)."""
        return self._linear(x, head.matchability.weight, head.matchability.bias)

    def _ffn(self, x: torch.Tensor, message: torch.Tensor, ffn: tuple) -> torch.Tensor:
        """x + ffn([x, out_proj(message)]) with the output projection folded (module docstring)."""
        w_x, w_m, b, rest = ffn
        xp, mp = self._rows(x, message)
        h = torch.addmm(b, xp, w_x.t())  # under autocast (CUDA float16) in h's lower precision: the in-place
        return x + rest(h.addmm_(mp.to(h.dtype), w_m.t().to(h.dtype)))[:len(x)]  # product is not autocast

    def _self(self, i: int, x: torch.Tensor, rot: torch.Tensor, cuts: list) -> torch.Tensor:
        """Layer i's self-attention block. x: [T x D] tokens of consecutive images (segments between ``cuts``),
        rot: [T x D/2] complex rotary encoding."""
        d = self.d
        y = self._linear(x, *self.self_qkv[i])
        q, k, v = _rotate(y[:, :d], rot), _rotate(y[:, d:2 * d], rot), y[:, 2 * d:].contiguous()
        message = torch.cat([_attention(q[a:e], k[a:e], v[a:e], self.bucket) for a, e in zip(cuts[:-1], cuts[1:])])
        return self._ffn(x, message, self.self_ffn[i])

    def _cross(self, i: int, x: torch.Tensor, m: int) -> torch.Tensor:
        """Layer i's cross-attention block; x: [(m + n) x D], image 0's tokens first."""
        d = self.d
        y = self._linear(x, *self.cross_qkv[i])
        qk, v = y[:, :d].contiguous(), y[:, d:].contiguous()
        message = torch.cat([_attention(qk[:m], qk[m:], v[m:], self.bucket),
                             _attention(qk[m:], qk[:m], v[:m], self.bucket)])
        return self._ffn(x, message, self.cross_ffn[i])

    def warm_up(self, max_tokens: int) -> None:
        """Run the per-keypoint layers once at every bucketed row count up to max_tokens (in the caller's
        precision context), so that no kernel is built while frames are matched."""
        if self.bucket <= 1:
            return
        g, weight = self.glue, self.self_qkv[0][0]
        head = g.log_assignment[0]
        sizes = range(self.bucket, max_tokens + self.bucket, self.bucket)
        for rows in sizes:
            x = torch.zeros((rows, self.d), device=weight.device)
            self._ffn(self._linear(x, *self.self_qkv[0])[:, :self.d], x, self.self_ffn[0])
            self._ffn(self._linear(x, *self.cross_qkv[0])[:, :self.d], x, self.cross_ffn[0])
            self._matchability(head, x)
            self._token(g.token_confidence[0], x)
            self._linear(x, head.final_proj.weight, head.final_proj.bias)
            self._linear(torch.zeros((rows, 2), device=weight.device), g.posenc.Wr.weight, g.posenc.Wr.bias)
            self._linear(torch.zeros((rows, g.input_proj.in_features), device=weight.device), g.input_proj.weight,
                         g.input_proj.bias)
        for m in sizes[:len(sizes) // 2]:  # the similarity of two images' sets (each up to max_tokens / 2)
            for n in sizes[:len(sizes) // 2]:
                torch.zeros((m, self.d), device=weight.device) @ torch.zeros((n, self.d), device=weight.device).t()

    # ------------------------------------------------------------------ per image, per pair
    def prepare(self, keypoints: torch.Tensor, descriptors: torch.Tensor, image_size: tuple) -> dict:
        """[N x 2] pixels, [N x input_dim] descriptors, (w, h) -> {"desc": [N x D] after layer 0's
        self-attention, "rot": [N x D/2] complex rotary encoding (``_self``)}."""
        from kornia.feature.lightglue import normalize_keypoints

        g = self.glue
        n = len(keypoints)
        size = torch.tensor([image_size], device=keypoints.device, dtype=torch.float32)
        # kornia's posenc (Wr, then cos and sin, each value twice): only the cos / sin of the pairs are kept
        projected = self._linear(normalize_keypoints(keypoints[None], size)[0], g.posenc.Wr.weight, g.posenc.Wr.bias)
        rot = torch.complex(torch.cos(projected).float(), torch.sin(projected).float())
        desc = self._self(0, self._linear(descriptors, g.input_proj.weight, g.input_proj.bias), rot, [0, n])
        return {"desc": desc, "rot": rot}

    def match(self, s0: dict, s1: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Two states of ``prepare`` -> (indices [K x 2] int64 into the unpruned keypoints, scores [K])."""
        g, c = self.glue, self.conf
        x = torch.cat([s0["desc"], s1["desc"]])
        rot = torch.cat([s0["rot"], s1["rot"]])
        m, n, device = len(s0["desc"]), len(s1["desc"]), x.device
        index = torch.cat([torch.arange(m, device=device), torch.arange(n, device=device)])
        prune, prune_min = c.width_confidence > 0, g.pruning_min_kpts(device)
        total = m + n  # kornia counts unconfident points against the unpruned total
        i = 0
        for i in range(c.n_layers):
            if i > 0:
                x = self._self(i, x, rot, [0, m, m + n])
            x = self._cross(i, x, m)
            if i == c.n_layers - 1:
                break  # no early stopping or pruning after the last layer
            token = None
            if c.depth_confidence > 0:
                token = self._token(g.token_confidence[i], x)  # [m + n]
                if bool(1.0 - (token < g.confidence_thresholds[i]).float().sum() / total > c.depth_confidence):
                    break
            if prune and (m > prune_min or n > prune_min):
                keep = g.get_pruning_mask(token, torch.sigmoid(self._matchability(g.log_assignment[i], x))[:, 0], i)
                keep[:m] |= m <= prune_min  # kornia prunes an image only while it has more than prune_min points
                keep[m:] |= n <= prune_min
                m, n = int(keep[:m].sum()), int(keep[m:].sum())
                kept = torch.where(keep)[0]
                x, rot, index = x[kept], rot[kept], index[kept]
        if m == 0 or n == 0:
            return torch.zeros((0, 2), dtype=torch.long, device=device), torch.zeros(0, device=device)
        return self._assign(g.log_assignment[i], x, m, index, c.filter_threshold)

    def _assign(self, head: torch.nn.Module, x: torch.Tensor, m: int, index: torch.Tensor,
                threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """kornia's ``MatchAssignment`` + ``filter_matches`` on the token matrix, without building the dustbin row
        and column (filter_matches never reads them): mutual best of the dual-softmax + matchability scores, score
        exp(log assignment) above threshold. Returns (indices [K x 2] into the unpruned sets, scores [K])."""
        md = (self._linear(x, head.final_proj.weight, head.final_proj.bias) / head.dim ** 0.25).float()
        z = self._matchability(head, x)[:, 0]
        # under CPU bf16 autocast the product runs in bf16 (matmul is on autocast's list): both sides bucketed
        a, b = self._rows(md[:m])[0], self._rows(md[m:])[0]
        sim = (a @ b.t())[:m, :len(x) - m]
        return _assign_scores(sim, z, m, index, threshold)


def _assign_scores(sim: torch.Tensor, z: torch.Tensor, m: int, index: torch.Tensor,
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of ``PackedLighterGlue._assign``: [m x n] similarity, [m + n] matchability logits."""
    certainties = F.logsigmoid(z[:m])[:, None] + F.logsigmoid(z[m:])[None]
    scores = F.log_softmax(sim, 1) + F.log_softmax(sim.t().contiguous(), 1).t() + certainties
    max0, max1 = scores.max(1), scores.max(0)
    mutual = max1.indices[max0.indices] == torch.arange(m, device=sim.device)
    conf = max0.values.exp()
    valid = mutual & (conf > threshold)
    return torch.stack([index[:m][valid], index[m:][max0.indices[valid]]], -1), conf[valid]
