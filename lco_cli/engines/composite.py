"""Decoding from a combination of models' logits — the paper's π* (eq. 6) as a policy.

π*(·|s) = softmax(z_sft + (log φ_DPO − log φ_ref)/β): the optimal policy of the KL-regularised
objective around the SFT model with the dense DPO advantage. It is never trained; `lco eval`
decodes it on the fly with one KV cache per model.
"""
from __future__ import annotations

import torch

from lco_cli.engines.generation import Rollouts, cut_at_eos


def pi_star_logits(z_sft: torch.Tensor, z_rm: torch.Tensor, z_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """z* = z_sft + (log_softmax(z_rm) − log_softmax(z_ref))/β (eqs. 6, 7, 13)."""
    adv = torch.log_softmax(z_rm.float(), -1) - torch.log_softmax(z_ref.float(), -1)
    return z_sft.float() + adv / beta


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """Greedy at temperature 0; else temperature + nucleus (top-p) sampling. logits [B, V] -> [B]."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token is always kept)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class CompositeEngine:
    """Rollout engine (same interface as `HFEngine`) over several models whose next-token logits
    are combined by `combine(list_of_logits) -> logits`. Every model keeps its own KV cache."""

    def __init__(self, models: list, combine, tokenizer, batch_size: int = 64):
        self.models, self.combine, self.tokenizer, self.batch_size = models, combine, tokenizer, batch_size

    def sync_weights(self, model) -> None:  # evaluation-only engine
        pass

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 16) -> Rollouts:
        expanded = [(i, p) for i, p in enumerate(prompt_ids) for _ in range(n)]
        out = Rollouts([], [], [], [], [])
        for start in range(0, len(expanded), self.batch_size):
            chunk = expanded[start : start + self.batch_size]
            gen = self._generate_chunk([p for _, p in chunk], temperature, top_p, max_new_tokens)
            for (gi, p), row in zip(chunk, gen):
                resp, truncated = cut_at_eos(row, self.tokenizer.eos_token_id)
                out.add(p, resp, truncated, gi, self.tokenizer)
        return out

    def _generate_chunk(self, prompts: list[list[int]], temperature: float, top_p: float, max_new: int) -> list[list[int]]:
        from transformers import DynamicCache

        device = next(self.models[0].parameters()).device
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p, device=device)
            mask[r, width - len(p) :] = 1
        caches = [DynamicCache() for _ in self.models]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        step_ids, step_pos = ids, positions
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        generated = []
        for _ in range(max_new):
            logits = [m(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=c, use_cache=True).logits[:, -1]
                      for m, c in zip(self.models, caches)]
            nxt = sample_next(self.combine(logits), temperature, top_p)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            generated.append(nxt)
            done |= nxt == eos
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(nxt)[:, None]], -1)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
        return torch.stack(generated, -1).tolist() if generated else [[] for _ in prompts]
