"""Optional vLLM rollout engine (GPU). Imported only when `train.rollout.engine: vllm`.

Same interface as `generation.HFEngine`: `generate(prompt_ids, n, ...) -> Rollouts` and
`sync_weights(model)`, which pushes the trained weights into the colocated vLLM engine after each
update (vLLM's `load_weights` on the driver worker's model).

Status: written against vLLM's public `LLM` / `SamplingParams` API; it has not been exercised on a
GPU in this repository's CI (no GPU there), so treat it as experimental.
"""
from __future__ import annotations

import tempfile

from lco_cli.engines.generation import Rollouts


class VLLMEngine:
    def __init__(self, model, tokenizer, batch_size: int = 256, gpu_memory_utilization: float = 0.3):
        from vllm import LLM  # noqa: F401 - fails here, clearly, when the extra is not installed

        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # vLLM loads from a folder: write the current weights once, then sync in place.
        self._dir = tempfile.mkdtemp(prefix="lco-vllm-")
        model.save_pretrained(self._dir, safe_serialization=True)
        tokenizer.save_pretrained(self._dir)
        self.llm = LLM(model=self._dir, gpu_memory_utilization=gpu_memory_utilization, enable_prefix_caching=True)

    def sync_weights(self, model) -> None:
        """Push the policy's current parameters into vLLM (no disk round trip)."""
        state = ((name, p.detach()) for name, p in model.state_dict().items())
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(state)

    def generate(self, prompt_ids, n: int = 1, *, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 16) -> Rollouts:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, stop_token_ids=[self.tokenizer.eos_token_id])
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False)
        roll = Rollouts([], [], [], [], [])
        eos = self.tokenizer.eos_token_id
        for gi, (p, out) in enumerate(zip(prompt_ids, outs)):
            for comp in out.outputs:
                ids = list(comp.token_ids)
                truncated = comp.finish_reason == "length"
                if not truncated and (not ids or ids[-1] != eos):
                    ids.append(eos)  # vLLM strips the stop token; training needs it
                roll.add(p, ids, truncated, gi, self.tokenizer)
        return roll
