"""One step's rollout batch: sampled sequences, rewards, and the flattened response-token view.

Token-level tensors are "flat": the N response tokens of the whole batch in row-major order, so
hidden states `[N, H]` can go straight into the chunked full-vocabulary engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lco_cli.engines.generation import Rollouts, pack


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor        # [B, L] right-padded prompt + response
    attention_mask: torch.Tensor   # [B, L]
    targets: torch.Tensor          # [B, L-1] bool: position t predicts a response token
    group: torch.Tensor            # [B] prompt index (samples of one prompt share it)
    correct: torch.Tensor          # [B] verifier verdict (float 0/1; 0 when no verifier)
    truncated: torch.Tensor        # [B] bool: no EOS within max_new_tokens
    rewards: torch.Tensor = None   # [B] sequence reward from train.reward

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def sampled_ids(self) -> torch.Tensor:
        """[N] the response tokens, flat."""
        return self.input_ids[:, 1:][self.targets]

    @property
    def token_seq(self) -> torch.Tensor:
        """[N] the sequence index of each flat response token."""
        rows = torch.arange(self.size, device=self.targets.device)[:, None].expand_as(self.targets)
        return rows[self.targets]

    @property
    def response_len(self) -> torch.Tensor:
        return self.targets.sum(-1)

    def subset(self, rows: list[int] | torch.Tensor) -> "RolloutBatch":
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[rows].sum(-1).max())
        pick = lambda t: t[rows] if t is not None else None  # noqa: E731
        return RolloutBatch(self.input_ids[rows, :width], self.attention_mask[rows, :width], self.targets[rows, : width - 1],
                            pick(self.group), pick(self.correct), pick(self.truncated), pick(self.rewards))

    def to(self, device) -> "RolloutBatch":
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return RolloutBatch(*(move(getattr(self, f)) for f in ("input_ids", "attention_mask", "targets", "group", "correct",
                                                               "truncated", "rewards")))


def from_rollouts(roll: Rollouts, pad_id: int, correct: list[bool] | None = None) -> RolloutBatch:
    ids, attn, targets = pack(roll.prompt_ids, roll.response_ids, pad_id)
    n = len(roll)
    return RolloutBatch(
        ids, attn, targets,
        group=torch.tensor(roll.group, dtype=torch.long),
        correct=torch.tensor([float(c) for c in correct] if correct is not None else [0.0] * n),
        truncated=torch.tensor(roll.truncated, dtype=torch.bool),
    )
