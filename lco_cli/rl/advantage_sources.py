"""Where token-level advantages and teachers come from: the DPO reward model (eq. 13) or an LLM φ (eq. 12).

Both implement one protocol, `heads(input_ids, attention_mask) -> (φ, φ_ref or None)`: the final hidden
states [B, L, H] of each model with its lm_head, so the chunked full-vocabulary engine can form
log φ(·|s) − log φ_ref(·|s) over the whole vocabulary without materialising [N, V].

`rm/final/lco_rm.json` names the reference φ_ref the RM was trained against, so `train` and `eval`
find φ_ref without guessing. `DPOReward` also gives the implicit sequence reward Σ_t log-ratio (the
baselines' `train.reward: rm`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lco_cli.engines.chunked import VocabHead, chunked_entropy_and_logprobs
from lco_cli.errors import ConfigError, MissingArtifactError
from lco_cli.runtime import models

RM_META = "lco_rm.json"


@dataclass(frozen=True)
class HeadStates:
    """One model's final hidden states [B, L, H] and its lm_head."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None


def read_rm_meta(rm_dir: str | Path) -> dict:
    meta = Path(rm_dir) / RM_META
    if not meta.exists():
        raise MissingArtifactError(f"reward model metadata not found: {meta} (was this folder written by `lco rm`?)")
    return json.loads(meta.read_text())


def reference_of(rm_dir: str | Path, meta: dict) -> str:
    """φ_ref's location: relative to the RM folder first (run dirs move), then as recorded."""
    rel = meta.get("reference_relative")
    if rel and (Path(rm_dir) / rel).exists():
        return str((Path(rm_dir) / rel).resolve())
    return meta["reference"]


def _states(model, input_ids, attention_mask, vocab: int | None) -> HeadStates:
    """Final hidden states and the lm_head rows of the tokenizer's `vocab` tokens (padding rows cut off)."""
    h, head = models.final_hidden_and_head(model, input_ids, attention_mask)
    bias = getattr(head, "bias", None)
    if vocab is None:
        return HeadStates(h, head.weight, bias)
    return HeadStates(h, head.weight[:vocab], None if bias is None else bias[:vocab])


class DPOReward:
    """φ_DPO and its φ_ref, frozen, on one device."""

    def __init__(self, rm_dir: str | Path, model_cfg, device="cpu", vocab: int | None = None):
        self.rm_dir, self.vocab = str(rm_dir), vocab
        meta = read_rm_meta(rm_dir)
        ref_dir = reference_of(rm_dir, meta)
        if not Path(ref_dir).exists() and ref_dir.count("/") != 1:
            raise MissingArtifactError(f"reference model of the RM not found: {ref_dir} (named in {Path(rm_dir) / RM_META})")
        self.tokenizer = models.load_tokenizer(self.rm_dir, model_cfg)
        self.rm = models.load_model(self.rm_dir, model_cfg, trainable=False).to(device)
        self.ref = models.load_model(ref_dir, model_cfg, trainable=False).to(device)

    @classmethod
    def from_models(cls, rm, ref, tokenizer, vocab: int | None = None) -> "DPOReward":
        """The same source from models already in memory (benchmarks at real sizes skip the disk round trip)."""
        reward = cls.__new__(cls)
        reward.rm, reward.ref, reward.tokenizer, reward.rm_dir, reward.vocab = rm, ref, tokenizer, "", vocab
        return reward

    @torch.no_grad()
    def token_logratios(self, input_ids, attention_mask) -> torch.Tensor:
        """log φ_DPO − log φ_ref of each next token: [B, L-1]."""
        from lco_cli.engines.scoring import token_logprobs

        return token_logprobs(self.rm, input_ids, attention_mask) - token_logprobs(self.ref, input_ids, attention_mask)

    @torch.no_grad()
    def sequence_rewards(self, input_ids, attention_mask, target_mask) -> torch.Tensor:
        """Implicit DPO reward Σ_t log-ratio over response tokens: [B] (unscaled by β)."""
        return (self.token_logratios(input_ids, attention_mask) * target_mask).sum(-1)

    @torch.no_grad()
    def heads(self, input_ids, attention_mask) -> tuple[HeadStates, HeadStates]:
        return _states(self.rm, input_ids, attention_mask, self.vocab), _states(self.ref, input_ids, attention_mask, self.vocab)


class PhiAdvantage:
    """`advantage: logprob` with `train.advantage_model`: A = log φ(·|s) from that model (eq. 12)."""

    def __init__(self, ref: str, model_cfg, device, vocab: int | None = None):
        self.vocab = vocab
        self.model = models.load_model(ref, model_cfg, trainable=False).to(device)
        self.tokenizer = models.load_tokenizer(ref, model_cfg)

    @torch.no_grad()
    def heads(self, input_ids, attention_mask) -> tuple[HeadStates, None]:
        return _states(self.model, input_ids, attention_mask, self.vocab), None


@torch.no_grad()
def teacher_logprobs(env, batch, micro: int, keep_head: bool = False) -> tuple[torch.Tensor, torch.Tensor, VocabHead | None]:
    """φ_DPO and φ_ref log-probs of the sampled tokens ([N] each), chunked over the vocabulary; with
    `keep_head`, also φ_DPO's `VocabHead` for full-vocabulary teacher terms (PPO, GKD, MiniLLM)."""
    from lco_cli.rl.update import flat, row_chunks

    if env.reward is None:
        raise ConfigError(f"train.algo={env.cfg.algo} needs the DPO reward model (rm stage)")
    rm_lp, ref_lp, rm_h = [], [], []
    for rows in row_chunks(batch.size, micro):
        mb = batch.subset(rows)
        rm, ref = env.reward.heads(mb.input_ids, mb.attention_mask)
        h_rm, h_ref = flat(rm.hidden, mb.targets), flat(ref.hidden, mb.targets)
        rm_lp.append(chunked_entropy_and_logprobs(VocabHead(h_rm, rm.weight, rm.bias), mb.sampled_ids, env.chunk_size)[1])
        ref_lp.append(chunked_entropy_and_logprobs(VocabHead(h_ref, ref.weight, ref.bias), mb.sampled_ids, env.chunk_size)[1])
        if keep_head:
            rm_h.append(h_rm)
    head = VocabHead(torch.cat(rm_h), rm.weight, rm.bias) if keep_head else None
    return torch.cat(rm_lp), torch.cat(ref_lp), head


def load_advantage_sources(preset, run, cfg, tok, device):
    """(the DPO RM for sequence rewards or None, the dense advantage/teacher source or None) for `train`.

    The φ of eq. 12 (`train.advantage_model`) replaces the RM as the advantage source; the RM is
    still loaded when the algorithm needs it otherwise (the `rm` reward, a teacher)."""
    from lco_cli.rl.registry import get_algo
    from lco_cli.tasks.vocab import shared_vocab_size, usable_vocab

    algo = get_algo(cfg.algo)
    reward = phi = None
    vocab = usable_vocab(tok)  # compatibility is decided by the tokenizers' contents, not embedding sizes
    if algo.needs_reward_model(cfg):
        rm_dir = models.resolve_model_ref("rm", run, preset)
        reward = DPOReward(rm_dir, preset.model, device, vocab)
        shared_vocab_size(tok, reward.tokenizer, cfg.init_from, rm_dir)
    if algo.dense_advantages and cfg.advantage == "logprob" and cfg.advantage_model:
        phi = PhiAdvantage(models.resolve_model_ref(cfg.advantage_model, run, preset), preset.model, device, vocab)
        shared_vocab_size(tok, phi.tokenizer, cfg.init_from, cfg.advantage_model)
    return reward, phi or reward
