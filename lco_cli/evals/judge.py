"""A client for an OpenAI-compatible chat-completions endpoint, with retries, timeouts,
concurrency and a cache of answers in the run directory.

- The API key is read from the environment variable that `eval.judge.api_key_env` names, at the
  start of the eval; it only ever lives in the request header. It is never written to the cache,
  a log, an error message, `config.yaml` or `run.json` (only the variable's name is).
- Every answer is appended to `RUN_DIR/judge_cache.jsonl` (one line per request, keyed by a hash
  of endpoint, model and request body) the moment it arrives, so an eval that stops — a judge
  outage, Ctrl-C, a crash — resumes without paying for a judgment twice. The cache sits beside the
  stage folders, not in `eval/`, so a re-run of a finished eval with a changed config (one more
  policy) still reuses the judgments of the pairs it already had.
- Failures: HTTP 429 / 5xx, timeouts and connection errors are retried `max_retries` times with
  exponential backoff; then the eval ends with one message naming the URL (exit 1). Other HTTP
  errors (401, 404: a wrong key or URL) fail at once.
Standard library only (urllib), so the `openai` package is not needed.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from lco_cli.errors import ConfigError, LcoError

#: HTTP statuses worth retrying: rate limits and server-side failures.
RETRYABLE_STATUS = (408, 409, 429, 500, 502, 503, 504)

CACHE_FILE = "judge_cache.jsonl"


class JudgeError(LcoError):
    """The judge endpoint failed after its retries (exit 1); judgments so far stay cached."""

    exit_code = 1


def read_api_key(env_name: str) -> str:
    """The key from the named environment variable; exit 2 naming the variable when it is unset."""
    key = os.environ.get(env_name, "")
    if not key:
        raise ConfigError(f"eval.judge.api_key_env: environment variable {env_name} is not set "
                          "(it must hold the judge endpoint's API key)")
    return key


@dataclass
class JudgeClient:
    base_url: str
    model: str
    api_key: str = field(repr=False)
    timeout: float = 60.0
    max_retries: int = 3
    backoff: float = 2.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def complete(self, request: dict) -> dict:
        """POST one chat-completions request; the parsed JSON answer."""
        body = json.dumps({"model": self.model, **request}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        reason = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code} {exc.reason}"
                if exc.code not in RETRYABLE_STATUS:
                    raise JudgeError(f"judge {self.url}: {reason} (not retried; check eval.judge.base_url, "
                                     f"eval.judge.model and the key)") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                inner = getattr(exc, "reason", exc)
                reason = "timed out" if isinstance(inner, TimeoutError) or "timed out" in str(inner) else str(inner)
            except json.JSONDecodeError:
                reason = "the answer is not JSON"
        raise JudgeError(f"judge {self.url}: request failed after {self.max_retries + 1} attempts ({reason}); "
                         f"judgments so far are kept in {CACHE_FILE} and reused when the eval is run again")

    def cache_key(self, request: dict) -> str:
        blob = json.dumps({"url": self.url, "model": self.model, "request": request}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class JudgmentCache:
    """Answers by request key, appended line by line (a torn last line is ignored)."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.answers: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.answers[row["key"]] = row["response"]

    def get(self, key: str) -> dict | None:
        return self.answers.get(key)

    def put(self, key: str, response: dict) -> None:
        with self.lock:
            self.answers[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as fh:
                fh.write(json.dumps({"key": key, "response": response}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())


def judge_all(client: JudgeClient, cache: JudgmentCache, requests: list[dict], concurrency: int) -> list[dict]:
    """Answers in the order of `requests`: cached ones read back, the others sent `concurrency` at a
    time and cached as they arrive. On a failure the requests not yet sent are dropped and the
    error raised; the answers received before it stay in the cache."""
    keys = [client.cache_key(r) for r in requests]
    todo = [(k, r) for k, r in dict(zip(keys, requests)).items() if cache.get(k) is None]

    failed = threading.Event()

    def one(key: str, request: dict) -> None:
        if failed.is_set():  # another request already failed: do not send more
            return
        try:
            cache.put(key, client.complete(request))
        except Exception:
            failed.set()
            raise

    if todo:
        pool = ThreadPoolExecutor(max_workers=concurrency)
        try:
            futures = [pool.submit(one, k, r) for k, r in todo]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:
                    raise fut.exception()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [cache.get(k) for k in keys]
