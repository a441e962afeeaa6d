"""The DPO reward model φ_DPO as a token-level advantage source (paper eq. 13).

`rm/final/lco_rm.json` names the reference φ_ref it was trained against and DPO's β, so `train`
and `eval` find φ_ref without guessing. `DPOReward` returns

* per-token log-ratios log φ_DPO(a_t|s_t) − log φ_ref(a_t|s_t) for the sampled tokens,
* the implicit sequence reward Σ_t of those log-ratios (the baselines' `train.reward: rm`), and
* the final hidden states and lm_heads of both models, so the chunked full-vocabulary engine can
  form log φ_DPO(·|s) − log φ_ref(·|s) over the whole vocabulary without materialising [N, V].
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lco_cli.runtime import models
from lco_cli.errors import MissingArtifactError

RM_META = "lco_rm.json"


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


class DPOReward:
    """φ_DPO and its φ_ref, frozen, on one device."""

    def __init__(self, rm_dir: str | Path, model_cfg, device="cpu"):
        self.rm_dir = str(rm_dir)
        self.meta = read_rm_meta(rm_dir)
        ref_dir = reference_of(rm_dir, self.meta)
        if not Path(ref_dir).exists() and ref_dir.count("/") != 1:
            raise MissingArtifactError(f"reference model of the RM not found: {ref_dir} (named in {Path(rm_dir) / RM_META})")
        self.beta = float(self.meta.get("beta", 0.1))
        self.tokenizer = models.load_tokenizer(self.rm_dir, model_cfg)
        self.rm = models.load_model(self.rm_dir, model_cfg, trainable=False).to(device)
        self.ref = models.load_model(ref_dir, model_cfg, trainable=False).to(device)

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
    def hidden_states(self, input_ids, attention_mask):
        """(h_rm, W_rm, b_rm), (h_ref, W_ref, b_ref): final hidden states [B, L, H] and heads."""
        out = []
        for model in (self.rm, self.ref):
            h, head = models.final_hidden_and_head(model, input_ids, attention_mask)
            out.append((h, head.weight, getattr(head, "bias", None)))
        return out
