"""Rollout engines and sequence packing.

The engine interface is what `train`, `rm` (self-generated pairs) and `eval` share:
`generate(prompt_ids, n, ...) -> Rollouts`. The HF engine runs `model.generate` in batches with left
padding and the KV cache; a vLLM engine implements the same two methods (`generate`,
`sync_weights`) and is imported only when `train.rollout.engine: vllm` is chosen.

MiniLLM's teacher-mixed sampling (Gu et al. 2023, §2.2) draws every next token from
``α·p_teacher + (1 − α)·π_θ``; `HFEngine.generate(..., teacher=model, teacher_mix_alpha=α)` runs
that as its own KV-cached decoding loop over both models (`mixed_sample`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Rollouts:
    """Sampled responses; `group[i]` is the index of the prompt that response i answers."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    truncated: list[bool]
    group: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    def add(self, prompt: list[int], response: list[int], truncated: bool, group: int, tokenizer) -> None:
        """Append one sampled response (its text decoded without special tokens)."""
        self.prompt_ids.append(list(prompt))
        self.response_ids.append(response)
        self.texts.append(tokenizer.decode(response, skip_special_tokens=True))
        self.truncated.append(truncated)
        self.group.append(group)


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int):
    """Right-padded [prompt | response | pad] tensors.

    Returns input_ids [B,L], attention_mask [B,L] and target_mask [B,L-1], where target_mask[b,t]
    marks that input_ids[b,t+1] is a response token predicted by the logits at position t.
    Right padding keeps position ids natural (0..len-1), matching what generate() uses with
    left padding, so training and sampling see the same positions.
    """
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(lengths)
    B = len(prompt_ids)
    input_ids = torch.full((B, width), pad_id, dtype=torch.long)
    attention = torch.zeros((B, width), dtype=torch.long)
    targets = torch.zeros((B, width), dtype=torch.bool)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = list(p) + list(r)
        input_ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[b, : len(seq)] = 1
        targets[b, len(p) : len(seq)] = True
    return input_ids, attention, targets[:, 1:]


class HFEngine:
    """Batched `transformers` generate: left padding, KV cache, temperature/top-p, EOS cut."""

    def __init__(self, model, tokenizer, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def sync_weights(self, model) -> None:
        """The HF engine samples from the training module itself; nothing to push."""
        self.model = model

    def padding_ids(self) -> list[int]:
        """Logit rows past the tokenizer's tokens (embedding padding, e.g. 151,936 rows for Qwen2.5's
        151,665 tokens): never sampled, as they decode to nothing and no other model scores them."""
        rows = self.model.get_output_embeddings().weight.shape[0]
        return list(range(len(self.tokenizer), rows))

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 16, teacher=None, teacher_mix_alpha: float = 0.0) -> Rollouts:
        """`n` samples per prompt; with `teacher` and α > 0, tokens come from α·p_teacher + (1−α)·π_θ."""
        tok = self.tokenizer
        eos, pad = tok.eos_token_id, tok.pad_token_id
        expanded = [(i, p) for i, p in enumerate(prompt_ids) for _ in range(n)]
        out = Rollouts([], [], [], [], [])
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        padding = self.padding_ids()
        try:
            for start in range(0, len(expanded), self.batch_size):
                chunk = expanded[start : start + self.batch_size]
                width = max(len(p) for _, p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for row, (_, p) in enumerate(chunk):
                    ids[row, width - len(p) :] = torch.tensor(p)
                    mask[row, width - len(p) :] = 1
                if teacher is not None and teacher_mix_alpha > 0:
                    gen = mixed_sample(self.model, teacher, ids.to(device), mask.to(device), teacher_mix_alpha,
                                       max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                       eos=eos, pad=pad).cpu()
                else:
                    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {"do_sample": False}
                    if padding:
                        sampling["suppress_tokens"] = padding
                    gen = self.model.generate(
                        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                        eos_token_id=eos, pad_token_id=pad, use_cache=True, **sampling,
                    )[:, width:].cpu()
                for row, (gi, p) in enumerate(chunk):
                    resp, truncated = cut_at_eos(gen[row].tolist(), eos)
                    out.add(p, resp, truncated, gi, tok)
        finally:
            self.model.train(was_training)
        return out


def top_p_filter_(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of probability rows [B, V] in place (keeps ≥ 1 token), renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_p, order = probs.sort(-1, descending=True)
    drop = sorted_p.cumsum(-1) - sorted_p > top_p  # mass before this token already exceeds top_p
    probs.scatter_(-1, order, sorted_p.masked_fill(drop, 0.0))
    return probs.div_(probs.sum(-1, keepdim=True))


@torch.no_grad()
def mixed_sample(policy, teacher, input_ids, attention_mask, alpha: float, *, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, eos: int, pad: int) -> torch.Tensor:
    """Teacher-mixed sampling (MiniLLM §2.2): y_t ~ α·p(·|y_<t) + (1 − α)·π_θ(·|y_<t).

    Left-padded prompts `[B, P]`; both models decode incrementally with their own KV cache
    (position ids follow the attention mask, as `generate` does with left padding). The two
    distributions are tempered by `temperature`, mixed in probability space, then nucleus-filtered.
    Rows that emitted EOS continue with `pad`. Returns the new tokens `[B, ≤ max_new_tokens]`.
    """
    mask = attention_mask.clone()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    models, caches, logits = (policy, teacher), [None, None], [None, None]
    for i, m in enumerate(models):
        out = m(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=True)
        caches[i], logits[i] = out.past_key_values, out.logits[:, -1].float()
    finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    tokens = []
    for _ in range(max_new_tokens):
        p_pol = torch.softmax(logits[0] / temperature, -1)
        p_tea = torch.softmax(logits[1] / temperature, -1)
        probs = top_p_filter_(alpha * p_tea + (1.0 - alpha) * p_pol, top_p)
        nxt = torch.multinomial(probs, 1).squeeze(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        tokens.append(nxt)
        finished |= nxt == eos
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        for i, m in enumerate(models):
            out = m(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=caches[i], use_cache=True)
            caches[i], logits[i] = out.past_key_values, out.logits[:, -1].float()
    return torch.stack(tokens, dim=1) if tokens else input_ids.new_zeros((input_ids.shape[0], 0))


def cut_at_eos(tokens: list[int], eos: int) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first EOS; no EOS means the response was truncated."""
    if eos in tokens:
        return tokens[: tokens.index(eos) + 1], False
    return tokens, True


def make_engine(kind: str, model, tokenizer, batch_size: int, vllm_settings=None, *, source: str | None = None,
                key: str = "train.rollout.engine"):
    """The generation engine named by `kind` ('hf' | 'vllm').

    `vllm_settings`: `model.vllm` (defaults when None); `source`: a model folder vLLM may load
    directly instead of the weights of `model` (eval); `key`: the preset key named in errors."""
    if kind == "vllm":  # imported lazily: the CPU path never imports vllm
        import importlib.util

        from lco_cli.errors import ConfigError

        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"{key}: 'vllm' needs the optional extra (pip install 'lco[vllm]') and a GPU")
        from lco_cli.config.schema import VLLMConfig
        from lco_cli.engines.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, batch_size, vllm_settings or VLLMConfig(), source=source)
    return HFEngine(model, tokenizer, batch_size)


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
