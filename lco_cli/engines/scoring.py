"""Per-token log-probabilities of given tokens under a causal LM."""
from __future__ import annotations

import torch


def token_logprobs(model, input_ids, attention_mask):
    """log π(x_{t+1} | x_≤t) at every position: [B, L-1] (float32).

    Uses logsumexp over the vocabulary rather than a full log_softmax so that only one [B, L, V]
    tensor (the logits) is alive at a time.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    picked = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, -1)


@torch.no_grad()
def sequence_logprob_sums(model, batches):
    """Σ_t log π over the target tokens, for an iterable of (input_ids, attention, target_mask)."""
    out = []
    for ids, attn, targets in batches:
        out.append((token_logprobs(model, ids, attn) * targets).sum(-1))
    return torch.cat(out) if out else torch.zeros(0)
