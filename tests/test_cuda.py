"""The chunked loss engine on a CUDA GPU, in bfloat16 and float32, against a float64 reference on materialised logits.

Skipped without CUDA. Sizes are those of the paper's models: the Qwen2.5 vocabulary (151,936 rows)
with H = 2048 (Qwen2.5-3B) and a 32k vocabulary with H = 1024, N = 1024–2048 response tokens.

How the comparison is made: inputs are drawn in float64 on the GPU, rounded once to the test dtype,
and the reference is computed in float64 from the *rounded* values (the unchunked `lco_loss` on
materialised [N, V] logits, autograd for the gradients). The error measured is therefore the
engine's own arithmetic in that dtype, not the rounding of the inputs. Errors are measured
norm-relative, ‖got − want‖ / ‖want‖ over the whole tensor: single entries of a gradient can be
near zero, where any elementwise relative bound is meaningless.

Scales are realistic: final hidden states after RMSNorm have entries of order 1, lm_head weights
are initialised with std 0.02, so logits have std ≈ 0.02·√H ≈ 0.6–0.9 (H = 1024–2048).

`LCO_CUDA_TESTS_ON_CPU=1` runs the same checks on the CPU at a quarter of the sizes (bf16 matmuls
there also accumulate in float32 and round their output to bf16): how the tolerances below were
checked before any GPU ran this file.
"""
from __future__ import annotations

import os

import pytest
import torch

from lco_cli.engines.chunked import VocabHead, chunked_entropy_and_logprobs, chunked_selective_logprobs
from lco_cli.losses.lco import dense_advantage, lco_loss, sparse_advantage
from lco_cli.losses.lco_chunked import lco_chunked_loss

ON_CPU = os.environ.get("LCO_CUDA_TESTS_ON_CPU") == "1"
DEVICE = "cpu" if ON_CPU else "cuda"

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

D = torch.float64
# (V, H, N): the Qwen2.5 vocabulary at Qwen2.5-3B's width, and a 32k vocabulary (Llama-2/Mistral size) at H = 1024.
SIZES = {"qwen-152k": (151936, 2048, 1024), "32k": (32768, 1024, 2048)}
if ON_CPU:
    SIZES = {k: (v // 4, h // 4, n // 4) for k, (v, h, n) in SIZES.items()}
CHUNK = 512  # train.loss_chunk_size's default: N = 1024–2048 gives 2–4 chunks, so cross-chunk accumulation is exercised
if ON_CPU:
    CHUNK = 128

# Tolerances, norm-relative (see the module doc), by dtype.
#
# bfloat16 has 8 significant bits (7 stored): unit roundoff u = 2^-9 ≈ 2.0e-3, relative spacing 2^-8.
# In the engine a bf16 value is rounded at each of: the chunk's logits (F.linear in bf16 accumulates
# in float32 but returns bf16), the logit gradient cast back to the weight dtype, the products
# g·W (hidden gradient) and gᵀ·h (weight gradient, accumulated over 2–4 chunks in bf16). That is
# 3–6 roundings of ≤ u each; they are independent, so they add roughly in quadrature (√6·u ≈ 5e-3),
# 6u ≈ 1.2e-2 in the worst case. The dense advantage log_softmax(rm) − log_softmax(ref) is a
# difference of two O(1) rounded quantities, which can amplify a relative error by the ratio
# |z| / |A| — a factor 2–3 at these scales. Hence 2^-5 ≈ 3.1e-2 for losses and gradients: above the
# worst case of 6u × 2.5 ≈ 3e-2, and far below an error that would mean a wrong formula (O(1)).
# Measured on the CPU at a quarter of the sizes: gradients 3e-3 to 4e-3 (≈ 2u), losses ≤ 5e-4.
#
# Log-probabilities and entropies are dominated by log V ≈ 10–12 and logsumexp averages the
# per-logit errors (each ≤ u·|z| ≈ 2e-3 absolute), so their norm-relative error is ~u·|z|/log V ≈ 2e-4:
# 2^-8 ≈ 3.9e-3 leaves a 10× margin (the log-prob's gradient keeps the 2^-5 budget above).
#
# float32: u = 2^-24 ≈ 6e-8. Matmul sums of H = 1024–2048 products grow the error like √H·u ≈ 3e-6
# (pairwise/tensor-core accumulation, random signs), reductions over V = 152k in logsumexp and
# the loss like log2(V)·u ≈ 1e-6; the chunk gradients add a few such roundings. 1e-4 is ≥ 10× that,
# and TF32 (10-bit mantissa, error ≈ 1e-3) would fail it, which is intended: the engine's float32
# path must not silently run in TF32 (the `highest_fp32_matmul` fixture pins it).
# The loss (computed in float32 for both dtypes) gets an absolute floor besides: with the sparse
# advantage the per-token KL is small (≈ 2e-3 here) while the float32 terms it is computed from
# (logsumexps) are of size log V ≈ 10, so it carries an absolute error ≈ u_fp32·log V ≈ 6e-7 whatever
# its value (measured 4.4e-7 on the CPU); LOSS_ATOL allows 8 such roundings.
LOSS_ATOL_PER_LOG_V = 8 * 2 ** -24
TOL = {
    torch.bfloat16: {"loss": 2 ** -5, "grad": 2 ** -5, "logprob": 2 ** -8},
    torch.float32: {"loss": 1e-4, "grad": 1e-4, "logprob": 1e-5},
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.fixture(autouse=True)
def highest_fp32_matmul():
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(prec)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def loss_close(got: torch.Tensor, want: torch.Tensor, tol: float, V: int) -> bool:
    import math

    err = abs(float(got) - float(want))
    return err <= tol * abs(float(want)) + LOSS_ATOL_PER_LOG_V * math.log(V)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().to(D), want.detach().to(D)
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


class Heads:
    """Policy / RM / reference hidden states and lm_heads in float64 on the device, rounded to `dtype`."""

    def __init__(self, size: str, dtype: torch.dtype, seed: int = 0):
        V, H, N = SIZES[size]
        g = torch.Generator(device=DEVICE).manual_seed(seed)

        def draw(*shape, scale=1.0):
            # drawn in float64, rounded once to the test dtype and back: the reference sees the rounded inputs
            return (scale * torch.randn(*shape, generator=g, dtype=D, device=DEVICE)).to(dtype).to(D)

        self.V, self.N, self.dtype = V, N, dtype
        self.h, self.W = draw(N, H), draw(V, H, scale=0.02)
        self.rm_h, self.rm_W = draw(N, H), draw(V, H, scale=0.02)
        self.ref_h, self.ref_W = draw(N, H), draw(V, H, scale=0.02)
        self.ids = torch.randint(0, V, (N,), generator=g, device=DEVICE)
        self.seq_adv = torch.randn(N, generator=g, dtype=D, device=DEVICE)
        self.mask = torch.rand(N, generator=g, device=DEVICE) > 0.2
        self.weights = self.mask.to(D) / self.mask.sum()

    def low(self, x):
        return x.to(self.dtype)

    def chunked(self, kind: str, advantage: str, beta: float):
        h, W = self.low(self.h).requires_grad_(), self.low(self.W).requires_grad_()
        loss, _ = lco_chunked_loss(
            VocabHead(h, W), kind=kind, beta=beta, weights=self.weights.float(), chunk_size=CHUNK, advantage=advantage,
            rm=VocabHead(self.low(self.rm_h), self.low(self.rm_W)), ref=VocabHead(self.low(self.ref_h), self.low(self.ref_W)),
            sampled_ids=self.ids, seq_adv=self.seq_adv.float())
        gh, gW = torch.autograd.grad(loss, [h, W])
        assert gh.dtype == gW.dtype == self.dtype  # gradients come back in the input dtype
        return loss, gh, gW

    def reference(self, kind: str, advantage: str, beta: float):
        h, W = self.h.clone().requires_grad_(), self.W.clone().requires_grad_()
        z = h @ W.T
        if advantage == "sparse":
            adv = dense_advantage(sparse_advantage(self.ids, self.seq_adv, self.V))
        else:
            adv = dense_advantage(torch.log_softmax(self.rm_h @ self.rm_W.T, -1) - torch.log_softmax(self.ref_h @ self.ref_W.T, -1))
        loss = lco_loss(z, z.detach(), adv, beta, kind, self.mask)
        gh, gW = torch.autograd.grad(loss, [h, W])
        return loss, gh, gW


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("kind", ["kld", "mse", "lch"])
def test_lco_dpo_loss_and_grads(kind, dtype):
    """LCO-KLD/MSE/LCH with the DPO advantage (eq. 13) at the Qwen2.5 vocabulary: loss, ∂/∂hidden, ∂/∂lm_head."""
    heads = Heads("qwen-152k", DTYPES[dtype])
    got, want = heads.chunked(kind, "dpo", beta=1.0), heads.reference(kind, "dpo", beta=1.0)
    tol = TOL[DTYPES[dtype]]
    errs = [rel_err(g, w) for g, w in zip(got, want)]
    assert got[0].dtype == torch.float32  # the loss is computed in ≥ float32 whatever the head's dtype
    assert loss_close(got[0], want[0], tol["loss"], heads.V), f"loss {float(got[0])} vs {float(want[0])}"
    assert errs[1] <= tol["grad"], f"grad hidden rel err {errs[1]:.2e}"
    assert errs[2] <= tol["grad"], f"grad lm_head rel err {errs[2]:.2e}"
    assert all(torch.isfinite(g).all() for g in got)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("kind", ["kld", "lch"])
def test_lco_sparse_loss_and_grads(kind, dtype):
    """Sparse sequence advantage (eq. 11) at a 32k vocabulary, N = 2048 (4 chunks), β = 0.5."""
    heads = Heads("32k", DTYPES[dtype], seed=1)
    got, want = heads.chunked(kind, "sparse", beta=0.5), heads.reference(kind, "sparse", beta=0.5)
    tol = TOL[DTYPES[dtype]]
    errs = [rel_err(g, w) for g, w in zip(got, want)]
    assert loss_close(got[0], want[0], tol["loss"], heads.V), f"loss {float(got[0])} vs {float(want[0])}"
    assert errs[1] <= tol["grad"] and errs[2] <= tol["grad"], errs


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
@pytest.mark.parametrize("size", list(SIZES))
def test_selective_logprobs_and_grads(size, dtype):
    """log π(a_t) (the policy-gradient baselines' path) and its gradients, weighted by a random upstream gradient."""
    heads = Heads(size, DTYPES[dtype], seed=2)
    h, W = heads.low(heads.h).requires_grad_(), heads.low(heads.W).requires_grad_()
    lp = chunked_selective_logprobs(VocabHead(h, W), heads.ids, CHUNK)
    upstream = heads.seq_adv * heads.weights  # like a per-token advantage times the token weights
    gh, gW = torch.autograd.grad((lp * upstream.to(lp.dtype)).sum(), [h, W])
    rh, rW = heads.h.clone().requires_grad_(), heads.W.clone().requires_grad_()
    want = torch.log_softmax(rh @ rW.T, -1).gather(-1, heads.ids[:, None]).squeeze(-1)
    wh, wW = torch.autograd.grad((want * upstream).sum(), [rh, rW])
    tol = TOL[DTYPES[dtype]]
    assert rel_err(lp, want) <= tol["logprob"], rel_err(lp, want)
    assert rel_err(gh, wh) <= tol["grad"], rel_err(gh, wh)
    assert rel_err(gW, wW) <= tol["grad"], rel_err(gW, wW)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=list(DTYPES))
def test_entropy_and_logprobs(dtype):
    """Per-token entropy and log π(a_t) without grad (behaviour telemetry) at the Qwen2.5 vocabulary."""
    heads = Heads("qwen-152k", DTYPES[dtype], seed=3)
    # sharper logits than the random init (std ≈ 4.5): entropies well below log V, so an error in the
    # softmax weighting shows and is not hidden by the near-uniform case
    ent, lp = chunked_entropy_and_logprobs(VocabHead(heads.low(heads.h * 5), heads.low(heads.W)), heads.ids, CHUNK)
    logp = torch.log_softmax(heads.low(heads.h * 5).to(D) @ heads.W.T, -1)
    want_ent = -(logp.exp() * logp).sum(-1)
    want_lp = logp.gather(-1, heads.ids[:, None]).squeeze(-1)
    tol = TOL[DTYPES[dtype]]["logprob"]
    assert rel_err(lp, want_lp) <= tol, rel_err(lp, want_lp)
    # ×5 logits make each bf16 logit's absolute error 5× larger (≈ 1e-2): the entropy gets 4× the log-prob budget
    assert rel_err(ent, want_ent) <= 4 * tol, rel_err(ent, want_ent)
    assert float(want_ent.mean()) < 0.9 * torch.log(torch.tensor(float(heads.V))).item()  # really not near-uniform


def test_device_is_what_the_run_claims():
    """On a GPU run the engine's tensors really are on CUDA (a silent CPU fallback would pass every check above)."""
    heads = Heads("32k", torch.bfloat16, seed=4)
    lp = chunked_selective_logprobs(VocabHead(heads.low(heads.h), heads.low(heads.W)), heads.ids, CHUNK)
    assert lp.device.type == DEVICE
    if DEVICE == "cuda":
        assert torch.cuda.is_bf16_supported()
