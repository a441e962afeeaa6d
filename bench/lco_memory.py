"""Peak memory and time of the LCO loss: naive full-vocab vs chunked engine vs a GRPO-style loss.

Cases (forward + backward each, from synthetic final hidden states, float32):

* ``naive``   — LCO-KLD with the dense DPO advantage (eq. 13), materializing all ``[N, V]`` logits
  of policy, RM and reference, plain autograd;
* ``chunked`` — the same loss through :func:`lco_cli.engines.chunked.lco_chunked_loss`;
* ``grpo``    — a GRPO-style loss that needs only sampled-token log-probs, computed TRL-style:
  materialized ``[B, T, V]`` logits, ``gather`` minus a per-sequence ``logsumexp`` loop;
* ``grpo_kl`` (optional) — ``grpo`` plus the k3 KL to a reference model (β_KL = 0.04, the
  original GRPO setting; the project's GRPO baseline uses it), whose sampled-token log-probs are
  computed first under ``no_grad`` the same TRL way: one more ``N×H×V`` projection;
* ``chunked_topk`` (optional) — ``chunked`` with the advantage's support limited to the behaviour
  policy's top-k tokens (``train.advantage_topk``, the authors' practice; k = ``TOPK`` = 64):
  centring over the support cancels the log-softmax normalisers, so the engine projects the RM
  and reference onto the k support tokens only — three ``N×H×V`` matmuls instead of five;
* ``chunked_sparse`` (optional) — LCO-KLD with the sparse advantage (eq. 11) through the chunked
  engine: no RM/ref projections, so it costs the same three ``N×H×V`` matmuls as ``grpo`` and
  isolates the engine's own overhead;
* ``grpo_chunked`` (optional) — the same GRPO loss through ``chunked_selective_logprobs``.

Each case runs in a fresh subprocess. Peak memory is the growth over the inputs (all model
hidden states and ``lm_head`` weights, allocated and touched first): on CPU the delta of
``ru_maxrss`` (the kernel's high-water mark; tracemalloc cannot see torch's allocations), on GPU
``torch.cuda.max_memory_allocated``. The ``[V, H]`` weight gradient is part of every case.
Time is the CPU time of the worker process (all threads) on CPU — the wall clock of a shared
machine depends on its neighbours, so it is printed too but not used for ratios — and the
synchronized wall clock on GPU.
Workers run with ``MALLOC_MMAP_THRESHOLD_=131072`` so that glibc returns freed tensors to the OS
at once (its default dynamic threshold keeps freed blocks ≤ 32 MiB in the heap, and RSS would
then overstate what is live); ``--glibc-default`` turns this off.

    python bench/lco_memory.py                       # the full table (~5–8 min on 2 CPU cores)
    python bench/lco_memory.py --quick               # small sizes, seconds
    python bench/lco_memory.py --sizes 152000x2048 --chunk-size 256 --cases chunked,grpo
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

DEFAULT_SIZES = "32000x2048,32000x4096,152000x2048,152000x4096"
QUICK_SIZES = "8000x512,16000x1024"
DEFAULT_CASES = "naive,chunked,chunked_topk,grpo"
ALL_CASES = ("naive", "chunked", "chunked_topk", "grpo", "grpo_kl", "chunked_sparse", "grpo_chunked")
TOPK = 64
GIB = 1024**3
# Peak of the naive case in [N, V] float32 copies, besides its inputs (measured ~5.6 at
# V=32000 and V=152000, N=2048 on CPU; rounded up for safety).
NAIVE_COPIES = 6
SEQ_LEN = 2048  # rows of the GRPO [B, T, V] logits (the paper's sequence length)


# --------------------------------------------------------------------------- worker side


def _inputs(case: str, V: int, N: int, H: int, device: str):
    import torch

    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=device).mul_(scale)

    x = {"h": randn(N, H).requires_grad_(), "W": randn(V, H, scale=H**-0.5).requires_grad_()}
    models = {"naive": ("rm", "ref"), "chunked": ("rm", "ref"), "chunked_topk": ("rm", "ref"), "grpo_kl": ("ref",)}.get(case, ())
    for name in models:
        x[f"h_{name}"], x[f"W_{name}"] = randn(N, H), randn(V, H, scale=H**-0.5)
    if case not in ("naive", "chunked", "chunked_topk"):
        x["ids"] = torch.randint(0, V, (N,), generator=g, device=device)
        x["adv"] = randn(N)
    return x


def _naive_estimate_gib(V: int, N: int, H: int) -> float:
    """Estimated process peak of the naive case: [N, V] copies plus 4 [V, H] (3 heads + grad)."""
    return (NAIVE_COPIES * N * V + 4 * V * H) * 4 / GIB


def _naive_lco(x, chunk_size):
    """LCO-KLD, dense DPO advantage, everything materialized as [N, V]."""
    import torch

    from lco_cli.losses.lco import dense_advantage, lco_loss

    z = x["h"] @ x["W"].T
    with torch.no_grad():
        adv = torch.log_softmax(x["h_rm"] @ x["W_rm"].T, -1) - torch.log_softmax(x["h_ref"] @ x["W_ref"].T, -1)
        adv = dense_advantage(adv)
    loss = lco_loss(z, z.detach(), adv, 1.0, "kld")
    loss.backward()
    return loss


def _chunked_lco(x, chunk_size, advantage="dpo", topk=None):
    """LCO-KLD through the chunked engine: dense DPO advantage (eq. 13) or sparse (eq. 11)."""
    import torch

    from lco_cli.engines.chunked import VocabHead
    from lco_cli.losses.lco_chunked import lco_chunked_loss

    if advantage == "dpo":
        inputs = {"rm": VocabHead(x["h_rm"], x["W_rm"]), "ref": VocabHead(x["h_ref"], x["W_ref"]), "topk": topk}
    else:
        inputs = {"sampled_ids": x["ids"], "seq_adv": x["adv"]}
    n = x["h"].shape[0]
    weights = torch.full((n,), 1.0 / n, device=x["h"].device)
    loss, _ = lco_chunked_loss(VocabHead(x["h"], x["W"]), kind="kld", beta=1.0, weights=weights, chunk_size=chunk_size,
                               advantage=advantage, **inputs)
    loss.backward()
    return loss


def _chunked_lco_topk(x, chunk_size):
    return _chunked_lco(x, chunk_size, topk=TOPK)


def _trl_selective_log_softmax(logits, index):
    """TRL's float32 path: gather, then a per-sequence logsumexp loop to bound the temporaries."""
    import torch

    selected = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)
    lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
    return selected - lse


def _grpo_loss(logp, adv):
    import torch

    ratio = torch.exp(logp - logp.detach())  # one update per rollout: π_old = π_θ
    return -(ratio * adv).mean()


def _trl_logprobs(h, W, ids):
    """Sampled-token log-probs from materialized [B, T, V] logits (T = the sequence length)."""
    n = h.shape[0]
    seq = min(SEQ_LEN, n)
    logits = (h @ W.T).view(n // seq, seq, -1)
    return _trl_selective_log_softmax(logits, ids.view(n // seq, seq)).reshape(n)


def _grpo(x, chunk_size):
    loss = _grpo_loss(_trl_logprobs(x["h"], x["W"], x["ids"]), x["adv"])
    loss.backward()
    return loss


def _grpo_kl(x, chunk_size, kl_coef=0.04):
    import torch

    with torch.no_grad():  # TRL computes the reference log-probs before the policy pass
        ref_logp = _trl_logprobs(x["h_ref"], x["W_ref"], x["ids"])
    logp = _trl_logprobs(x["h"], x["W"], x["ids"])
    delta = ref_logp - logp
    k3 = torch.exp(delta) - delta - 1  # Schulman's k3 estimator of KL(π_θ ‖ π_ref)
    loss = _grpo_loss(logp, x["adv"]) + kl_coef * k3.mean()
    loss.backward()
    return loss


def _chunked_sparse(x, chunk_size):
    return _chunked_lco(x, chunk_size, advantage="sparse")


def _grpo_chunked(x, chunk_size):
    from lco_cli.engines.chunked import VocabHead, chunked_selective_logprobs

    logp = chunked_selective_logprobs(VocabHead(x["h"], x["W"]), x["ids"], chunk_size)
    loss = _grpo_loss(logp, x["adv"])
    loss.backward()
    return loss


CASES = {
    "naive": _naive_lco,
    "chunked": _chunked_lco,
    "chunked_topk": _chunked_lco_topk,
    "grpo": _grpo,
    "grpo_kl": _grpo_kl,
    "chunked_sparse": _chunked_sparse,
    "grpo_chunked": _grpo_chunked,
}


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(case: str, V: int, N: int, H: int, chunk_size: int, device: str, repeat: int) -> dict:
    """Run one case ``repeat`` times in this fresh process; peak memory and the fastest time."""
    import torch

    x = _inputs(case, V, N, H, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _maxrss_bytes()
    walls, cpus = [], []
    for _ in range(repeat):
        for name in ("h", "W"):
            x[name].grad = None  # each run allocates its gradients like a fresh step
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = CASES[case](x, chunk_size)
        if device == "cuda":
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _maxrss_bytes()
    # On a shared CPU the wall clock depends on the neighbours; CPU time (all threads) does not.
    seconds = min(walls) if device == "cuda" else min(cpus)
    return {
        "case": case,
        "V": V,
        "N": N,
        "peak_gib": (peak - base) / GIB,
        "seconds": seconds,
        "wall_s": min(walls),
        "cpu_s": min(cpus),
        "loss": float(loss),
        "chunk_size": chunk_size,
    }


# --------------------------------------------------------------------------- driver side


def _run_case(case, V, N, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        case,
        "--sizes",
        f"{V}x{N}",
        "--hidden",
        str(args.hidden),
        "--chunk-size",
        str(args.chunk_size),
        "--device",
        args.device,
        "--repeat",
        str(args.repeat),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([_repo_root(), os.environ.get("PYTHONPATH", "")]))
    if not args.glibc_default:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)  # failures are reported per case
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"case": case, "V": V, "N": N, "skipped": f"failed (rc={proc.returncode}: {tail})"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fmt_ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "—"


def _table(results: list[dict], cases: list[str], device: str) -> str:
    clock = "CPU time" if device == "cpu" else "time"
    lines = [
        f"| V | N | case | peak extra mem (GiB) | fwd+bwd {clock} (s) | wall (s) | mem / grpo | time / grpo |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["V"], r["N"], r["case"]): r for r in results}
    for V, N in dict.fromkeys((r["V"], r["N"]) for r in results):
        grpo = by_key.get((V, N, "grpo"), {})
        for case in cases:
            r = by_key.get((V, N, case))
            if r is None:
                continue
            if "skipped" in r:
                lines.append(f"| {V} | {N} | {case} | {r['skipped']} | | | | |")
                continue
            mem = _fmt_ratio(r["peak_gib"], grpo.get("peak_gib"))
            tim = _fmt_ratio(r["seconds"], grpo.get("seconds"))
            lines.append(f"| {V} | {N} | {case} | {r['peak_gib']:.2f} | {r['seconds']:.1f} | {r['wall_s']:.1f} | {mem} | {tim} |")
    return "\n".join(lines)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        V, N = item.lower().split("x")
        sizes.append((int(V), int(N)))
    return sizes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help=f"comma-separated VxN (default {DEFAULT_SIZES})")
    p.add_argument("--quick", action="store_true", help=f"small run ({QUICK_SIZES})")
    p.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated subset of {','.join(ALL_CASES)}")
    p.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: lco_cli.engines.chunked.DEFAULT_CHUNK_SIZE)")
    p.add_argument("--hidden", type=int, default=1024, help="hidden size H")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--max-naive-gib", type=float, default=16.0, help="skip naive cases estimated above this")
    p.add_argument("--repeat", type=int, default=None, help="runs per case, fastest reported (default 1; 3 with --quick)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--glibc-default", action="store_true", help="keep glibc's dynamic mmap threshold in workers")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    sys.path.insert(0, _repo_root())
    import torch

    from lco_cli.engines.chunked import DEFAULT_CHUNK_SIZE

    args.chunk_size = args.chunk_size or DEFAULT_CHUNK_SIZE
    args.repeat = args.repeat or (3 if args.quick else 1)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    sizes = _parse_sizes(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))

    if args.worker:
        ((V, N),) = sizes
        print(json.dumps(worker(args.worker, V, N, args.hidden, args.chunk_size, args.device, args.repeat)))
        return 0

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(ALL_CASES)
    if unknown:
        p.error(f"unknown case(s) {sorted(unknown)}; choose from {ALL_CASES}")
    print(
        f"device={args.device} H={args.hidden} chunk_size={args.chunk_size} repeat={args.repeat} torch={torch.__version__} "
        f"threads={torch.get_num_threads()}",
        flush=True,
    )
    results = []
    t0 = time.perf_counter()
    for V, N in sizes:
        for case in cases:
            est = _naive_estimate_gib(V, N, args.hidden)
            if case == "naive" and args.device == "cpu" and est > args.max_naive_gib:
                r = {"case": case, "V": V, "N": N, "skipped": f"skipped (would need ~{est:.0f} GiB)"}
            else:
                r = _run_case(case, V, N, args)
            results.append(r)
            shown = r.get("skipped") or (
                f"{r['peak_gib']:.2f} GiB, {r['seconds']:.1f} s (wall {r['wall_s']:.1f} s), loss {r['loss']:.4g}"
            )
            print(f"  V={V} N={N} {case}: {shown}", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s\n")
    print(_table(results, cases, args.device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
