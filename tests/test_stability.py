"""Gradient-gap telemetry (issue 19): closed forms, exact enumeration, the update of a whole rollout batch,
several processes, and the collapse guard.

The probe (`lco_cli.rl.stability.GradientGapProbe`) is what `lco train` runs with
`train.telemetry.gradient_gap=N`; these tests call it on models whose quantities are known exactly.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from gap_shared import make_env, measured_update, synthetic_batch

from conftest import free_port, invoke, read_jsonl
from lco_cli.engines.generation import Rollouts
from lco_cli.rl.rollout import from_rollouts
from lco_cli.rl.stability import GAP_METRICS, GapHistory, GradientGapProbe, j_bound
from lco_cli.runtime.optim import make_accelerator


# --------------------------------------------------------------------------- the softmax bandit (Appendix E)


class Bandit(torch.nn.Module):
    """The theory paper's two-response softmax policy as a one-token LM: every position's hidden state is the
    constant 1, the head's weight holds θ = (θ⁺, θ⁻), so π(o⁺) = softmax(θ)₀ (token 0 = o⁺, token 1 = o⁻)."""

    def __init__(self, theta):
        super().__init__()
        self.lm_head = torch.nn.Linear(1, 2, bias=False, dtype=torch.float64)
        with torch.no_grad():
            self.lm_head.weight.copy_(torch.tensor(theta, dtype=torch.float64)[:, None])

    def forward(self, input_ids, attention_mask):
        return torch.ones(*input_ids.shape, 1, dtype=torch.float64)

    def head(self):
        return self.lm_head

    def log_odds(self) -> float:
        t = self.lm_head.weight.detach()[:, 0]
        return float(t[0] - t[1])


def bandit_batch(n_pos: int, n_neg: int):
    """Responses of one token after a one-token prompt (the prompt token's id is irrelevant to the bandit)."""
    responses = [[0]] * n_pos + [[1]] * n_neg
    roll = Rollouts([[0]] * len(responses), responses, [""] * len(responses), [False] * len(responses), [0] * len(responses))
    return from_rollouts(roll, 0, [True] * n_pos + [False] * n_neg)


@pytest.mark.parametrize("theta", [(0.3, -0.2), (-1.0, 0.5)])
def test_bandit_gap_and_alignment_equal_the_closed_forms(theta):
    """Appendix E: ∇log π(o⁺) = (1 − J, −(1 − J)), ∇log π(o⁻) = (−J, J), so g⁺ − g⁻ = (1, −1) whatever θ;
    after a move Δθ, Δμ = (Δθ⁺ − Δθ⁻)/‖Δθ‖ and the change of log-odds(J) = θ⁺ − θ⁻ is exactly Δμ·η."""
    model = Bandit(theta)
    acc = make_accelerator("no", 0)
    env = make_env(model, acc)
    J = 1 / (1 + math.exp(-(theta[0] - theta[1])))
    probe = GradientGapProbe(env, list(model.parameters()), has_verifier=True)
    before = model.log_odds()
    probe.before_update(bandit_batch(3, 5))
    row = dict(probe._row)
    assert row["gap_J"] == 3 / 8  # the batch's success rate, not the policy's J
    # a float64 model, but the probe keeps g± in float32 buffers: 2⁻²⁴ ≈ 6e-8 relative rounding
    assert row["gap_g_pos_norm"] == pytest.approx(math.sqrt(2) * (1 - J), rel=1e-6)
    assert row["gap_g_neg_norm"] == pytest.approx(math.sqrt(2) * J, rel=1e-6)
    assert row["gap_norm"] == pytest.approx(math.sqrt(2), rel=1e-6)
    torch.testing.assert_close(probe._gap[0], torch.tensor([[1.0], [-1.0]]), rtol=0, atol=1e-6)  # float32 buffer
    delta = torch.tensor([[0.05], [0.02]], dtype=torch.float64)
    with torch.no_grad():
        model.lm_head.weight.add_(delta)
    out = probe.after_update()
    eta = float(delta.norm())
    assert out["gap_eta"] == pytest.approx(eta, rel=1e-6)
    assert out["gap_alignment"] == pytest.approx(0.03 / eta, rel=1e-5)  # Δθ⁺ − Δθ⁻ over η; swapped g± flips its sign
    assert out["gap_cos"] == pytest.approx(0.03 / eta / math.sqrt(2), rel=1e-5)
    assert out["gap_logodds_step"] == pytest.approx(model.log_odds() - before, rel=1e-5)
    assert out["gap_M"] == pytest.approx(0.03, rel=1e-5) and out["gap_J0"] == 3 / 8


def test_bandit_policy_gradient_step_has_alignment_sqrt2_and_the_bound_holds():
    """A step along ∇J = J(1 − J)(1, −1) has Δμ = √2 (Appendix E); over steps the log-odds grow by exactly
    M(K) = Σ Δμ η here, so J_K = J₀/(J₀ + (1 − J₀)e^(−M)) ≥ the theory's bound J₀/(J₀ + (1 − J₀)e^(−M/2))."""
    model = Bandit((-0.5, 0.5))
    env = make_env(model, make_accelerator("no", 0))
    probe = GradientGapProbe(env, list(model.parameters()), has_verifier=True, history=GapHistory())
    J = lambda: 1 / (1 + math.exp(-model.log_odds()))  # noqa: E731
    j0, lo0 = J(), model.log_odds()
    for _ in range(5):
        probe.before_update(bandit_batch(2, 2))
        j = J()
        with torch.no_grad():
            model.lm_head.weight.add_(0.8 * j * (1 - j) * torch.tensor([[1.0], [-1.0]], dtype=torch.float64))
        out = probe.after_update()
        assert out["gap_alignment"] == pytest.approx(math.sqrt(2), rel=1e-5)
        assert out["gap_cos"] == pytest.approx(1.0, rel=1e-5)
    assert out["gap_M"] == pytest.approx(model.log_odds() - lo0, rel=1e-5)
    probe.history.J0 = j0  # the bound from the policy's J₀ (the probe's J₀ is the first batch's success rate)
    bound = j_bound(j0, probe.history.M)
    assert J() == pytest.approx(j0 / (j0 + (1 - j0) * math.exp(-probe.history.M)), rel=1e-5)
    assert J() > bound > j0


def test_gauge_is_eta_over_the_eq18_scale_and_absent_when_misaligned():
    model = Bandit((0.0, 0.0))
    env = make_env(model, make_accelerator("no", 0))
    probe = GradientGapProbe(env, list(model.parameters()), has_verifier=True)
    batch = bandit_batch(1, 3)  # J = 1/4, T = 1 token
    probe.before_update(batch)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.tensor([[0.1], [0.0]], dtype=torch.float64))
    out = probe.after_update()
    # Δμ = 0.1/0.1 = 1, threshold = Δμ(1 − J)/T = 0.75, gauge = η/threshold = 0.1/0.75
    assert out["gap_threshold"] == pytest.approx(0.75, rel=1e-5)
    assert out["gap_gauge"] == pytest.approx(0.1 / 0.75, rel=1e-5)
    probe.before_update(batch)
    with torch.no_grad():
        model.lm_head.weight.add_(torch.tensor([[-0.1], [0.0]], dtype=torch.float64))  # against the gap: Δμ < 0
    out = probe.after_update()
    assert out["gap_alignment"] < 0 and "gap_gauge" not in out and out["gap_M"] == pytest.approx(0.1, rel=1e-5)


def test_one_sided_batch_logs_success_rate_but_no_gap():
    model = Bandit((0.0, 0.0))
    probe = GradientGapProbe(make_env(model, make_accelerator("no", 0)), list(model.parameters()), has_verifier=True)
    probe.before_update(bandit_batch(0, 4))
    out = probe.after_update()
    assert out["gap_J"] == 0.0 and out["gap_eta"] == 0.0 and "gap_norm" not in out and "gap_alignment" not in out


# --------------------------------------------------------------------------- exact enumeration on a real LM


VOCAB, RESPONSE_LEN, PROMPT = 5, 2, [3]


def reward(o) -> float:
    return float((o[0] + 2 * o[1]) % 3 == 0)


@pytest.fixture(scope="module")
def small_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lco_cli.rl.update import HiddenStatesLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=8, tie_word_embeddings=False)
    lm = Qwen2ForCausalLM(cfg).to(torch.float64)
    with torch.no_grad():  # a peaked, non-uniform policy: scale up the random head
        lm.lm_head.weight.mul_(20)
    return HiddenStatesLM(lm)


def exact(policy):
    """Every response of length 2: exact J, ∇J (autograd on J itself), and exact g⁺, g⁻."""
    responses = list(itertools.product(range(VOCAB), repeat=RESPONSE_LEN))
    ids = torch.tensor([PROMPT + list(o) for o in responses])
    lm = policy.lm
    logp = torch.log_softmax(lm(input_ids=ids).logits[:, :-1].double(), -1)
    seq = logp.gather(-1, ids[:, 1:, None])[:, len(PROMPT) - 1 :, 0].sum(-1)  # log π(o|q)
    r = torch.tensor([reward(o) for o in responses], dtype=torch.float64)
    p = seq.exp()
    params = list(policy.parameters())
    J = (p * r).sum()
    grad_J = torch.autograd.grad(J, params, retain_graph=True)
    w_pos, w_neg = (p * r / J).detach(), (p * (1 - r) / (1 - J)).detach()
    g_pos = torch.autograd.grad((w_pos * seq).sum(), params, retain_graph=True)
    g_neg = torch.autograd.grad((w_neg * seq).sum(), params)
    flat = lambda gs: torch.cat([g.reshape(-1) for g in gs])  # noqa: E731
    return float(J.detach()), p.detach(), responses, flat(grad_J), flat(g_pos), flat(g_neg)


def test_enumeration_policy_gradient_is_j_one_minus_j_times_the_gap(small_lm):
    """The theory's eq. 9, ∇J = J(1 − J)(g⁺ − g⁻), for exact expectations over all 25 responses (float64)."""
    J, _, _, grad_J, g_pos, g_neg = exact(small_lm)
    assert 0.05 < J < 0.95
    torch.testing.assert_close(grad_J, J * (1 - J) * (g_pos - g_neg), rtol=0, atol=1e-6 * float(grad_J.abs().max()))


def sampled_batch(probs, responses, n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(probs, n, replacement=True, generator=g).tolist()
    resp = [list(responses[i]) for i in picks]
    roll = Rollouts([PROMPT] * n, resp, [""] * n, [False] * n, list(range(n)))
    return from_rollouts(roll, 0, [bool(reward(o)) for o in resp])


def test_monte_carlo_gap_converges_to_the_exact_gap(small_lm):
    """The probe's g⁺ − g⁻ from n sampled responses → the exact gap: its error shrinks as 1/√n. With a
    fixed seed the test is deterministic; the bound is 3× the standard error (‖err‖² ≈ tr Σ⁺/n⁺ + tr Σ⁻/n⁻,
    computed exactly from the enumeration), so a swapped sign or a wrong weighting fails by far."""
    J, probs, responses, _, g_pos, g_neg = exact(small_lm)
    gap = g_pos - g_neg
    env = make_env(small_lm, make_accelerator("no", 0), micro_batch_size=256)
    errors = []
    for n in (256, 4096):
        probe = GradientGapProbe(env, list(small_lm.parameters()), has_verifier=True)
        batch = sampled_batch(probs, responses, n, seed=n)
        probe.before_update(batch)
        est = torch.cat([b.reshape(-1) for b in probe._gap]).double()
        n_pos = float(batch.correct.sum())
        # the per-response score variance in each region, exactly (trace of the conditional covariances)
        var = {}
        scores = []
        for o in responses:
            small_lm.zero_grad(set_to_none=True)
            ids = torch.tensor([PROMPT + list(o)])
            logp = torch.log_softmax(small_lm.lm(input_ids=ids).logits[:, :-1].double(), -1)
            logp.gather(-1, ids[:, 1:, None])[:, len(PROMPT) - 1 :, 0].sum().backward()
            scores.append(torch.cat([q.grad.reshape(-1) for q in small_lm.parameters()]).clone())
        small_lm.zero_grad(set_to_none=True)
        S = torch.stack(scores)
        r = torch.tensor([reward(o) for o in responses], dtype=torch.float64)
        for name, mask, mean in (("pos", r == 1, g_pos), ("neg", r == 0, g_neg)):
            w = probs[mask] / probs[mask].sum()
            var[name] = float((w[:, None] * (S[mask] - mean) ** 2).sum())
        se = math.sqrt(var["pos"] / n_pos + var["neg"] / (n - n_pos))
        err = float((est - gap).norm())
        errors.append(err)
        assert err < 3 * se, (n, err, se)
        cos = float(est @ gap / (est.norm() * gap.norm()))
        assert cos > (0.5 if n == 256 else 0.95)
    assert errors[1] < errors[0] / 2  # 16× the samples: ~4× smaller error


# --------------------------------------------------------------------------- several processes


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_on_the_same_global_batch(prepared, tmp_path, config):
    """`accelerate launch --num_processes 2` (each rank half of the batch, whole groups) gives the same g±,
    gap, η, Δμ as one process on the whole batch: DDP averages the score sums, FSDP reduce-scatters them onto
    shards and the probe all-reduces its dot products. float32 models: reduction order differs, ~1e-7
    relative per sum (seen in tests/test_scale_fsdp.py), so rel 1e-4 leaves room for the SGD steps between."""
    from launching import accelerate_launch

    from lco_cli.config.schema import ModelConfig
    from lco_cli.rl.update import HiddenStatesLM
    from lco_cli.runtime import models

    sft = prepared / "run/sft/final"
    policy = HiddenStatesLM(models.load_model(str(sft), ModelConfig(), trainable=True))
    vocab = policy.head().weight.shape[0]
    batch = synthetic_batch(vocab, n_prompts=4, per_prompt=3, seed=1)
    torch.save(batch, tmp_path / "batch.pt")
    one = measured_update(make_env(policy, make_accelerator("no", 0)), batch, batch.size)
    tests = Path(__file__).parent
    res = accelerate_launch(config, [str(tests / "gap_worker.py"), str(sft), str(tmp_path / "batch.pt"), str(tmp_path / "two.json")],
                            free_port(), {"PYTHONPATH": str(tests)})
    assert res.returncode == 0, res.stderr[-4000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world"] == 2 and two["sharded"] == (config == "fsdp")
    for key in ("gap_J", "gap_n_pos", "gap_n_neg", "gap_T", "gap_Jq_std", "gap_g_pos_norm", "gap_g_neg_norm", "gap_norm",
                "gap_eta", "gap_alignment", "gap_cos", "gap_M"):
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-9), key


# --------------------------------------------------------------------------- through the CLI


def test_train_logs_the_gap_metrics_and_eta_is_the_whole_batch_update(runner, run_dir):
    """`lco train ... train.telemetry.gradient_gap=1`: the gap metrics on every step, and with 4 minibatches
    of one rollout batch (steps=1) η is ‖θ_final − θ_init‖ over ALL four optimizer steps, not one of them."""
    from transformers import AutoModelForCausalLM

    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", "train.telemetry.gradient_gap=1", "train.steps=1",
                 "train.minibatches=4", "train.batch_size=8", "train.samples_per_prompt=2", "train.reward=rm",
                 "train.eval_every=0", "train.guard.enabled=false")
    assert res.exit_code == 0, res.output
    row = [r for r in read_jsonl(run_dir / "train/metrics.jsonl") if r["step"] == 1][0]
    assert row["gap_verdict"] == "verifier" and 0 <= row["gap_J"] <= 1 and row["gap_T"] > 0
    before = AutoModelForCausalLM.from_pretrained(run_dir / "sft/final")
    after = AutoModelForCausalLM.from_pretrained(run_dir / "train/final")
    with torch.no_grad():
        moved = math.sqrt(sum(float(((a.double() - b.double()) ** 2).sum()) for a, b in zip(after.parameters(), before.parameters())))
    assert moved > 0
    # float32 weights: the probe's Δθ is the same float32 differences, summed in float64 (rel 1e-6 is rounding)
    assert row["gap_eta"] == pytest.approx(moved, rel=1e-6)
    assert set(row) & set(GAP_METRICS) >= {"gap_J", "gap_eta", "gap_M", "gap_J0", "gap_J_bound", "gap_n_pos", "gap_n_neg"}


@pytest.mark.parametrize("algo", ["lco", "grpo"])
def test_train_writes_every_gap_metric_for_lco_and_grpo(runner, run_dir, algo):
    """A batch with both verdicts gets every metric; the bundled tiny model at lr 1e-3 gets some right."""
    res = invoke(runner, "train", "fast.yaml", "--run-dir", "run", f"train.algo={algo}", "train.telemetry.gradient_gap=1",
                 "train.steps=2", "train.eval_every=0", "train.guard.enabled=false")
    assert res.exit_code == 0, res.output
    rows = [r for r in read_jsonl(run_dir / "train/metrics.jsonl") if r["step"] >= 1]
    assert all("gap_eta" in r and "gap_M" in r for r in rows)
    both = [r for r in rows if r["gap_n_pos"] > 0 and r["gap_n_neg"] > 0]
    for r in both:
        assert {"gap_norm", "gap_alignment", "gap_cos", "gap_logodds_step", "gap_threshold"} <= set(r)
        assert -1 - 1e-6 <= r["gap_cos"] <= 1 + 1e-6


def test_gap_history_survives_a_resume(runner, run_dir, monkeypatch):
    args = ["train", "fast.yaml", "--run-dir", "run", "train.telemetry.gradient_gap=1", "train.steps=4",
            "train.checkpoint_every=2", "train.eval_every=0", "train.guard.enabled=false"]
    monkeypatch.setenv("LCO_INTERRUPT_AT_STEP", "2")
    assert invoke(runner, *args).exit_code == 130
    monkeypatch.delenv("LCO_INTERRUPT_AT_STEP")
    assert invoke(runner, *args).exit_code == 0
    rows = {r["step"]: r for r in read_jsonl(run_dir / "train/metrics.jsonl") if r["step"] >= 1}
    assert rows[3]["gap_J0"] == rows[1]["gap_J0"] and rows[3]["gap_M"] >= rows[2]["gap_M"]
