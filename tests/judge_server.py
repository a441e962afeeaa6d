"""A real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol: the judge's
stand-in in the AlpacaEval tests (not a mock of the client — the client talks HTTP to it).

It answers like a judge that prefers the longer output: identifier of the longer of the two
outputs in the prompt gets probability 0.8, the other 0.2 (ties go to `m`, the first). Modes:
`ok`; `error` (HTTP 500 to everything); `timeout` (sleeps past the client's timeout);
`fail_after` (answers `budget` requests, then HTTP 500).
"""
from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

P_LONGER = 0.8

OUTPUT_RE = re.compile(r'"model_identifier": "(m|M)",\s*"output": """(.*?)"""', re.S)


def pair_outputs(prompt: str) -> dict[str, str]:
    return {ident: text for ident, text in OUTPUT_RE.findall(prompt)}


def expected_preference(policy_output: str, reference: str, policy_first: bool) -> float:
    """The preference (1 = reference better, 2 = policy better) this judge produces."""
    first, second = (policy_output, reference) if policy_first else (reference, policy_output)
    p_first = P_LONGER if len(first) >= len(second) else 1 - P_LONGER
    p_policy = p_first if policy_first else 1 - p_first
    return 1 + p_policy


class JudgeServer:
    def __init__(self, mode: str = "ok", budget: int = 0, delay: float = 0.0):
        self.mode, self.budget, self.delay = mode, budget, delay
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    n = len(server.requests)
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": "not found"})
                if server.mode == "error" or (server.mode == "fail_after" and n > server.budget):
                    return self.reply(500, {"error": {"message": "judge overloaded"}})
                if server.mode == "timeout":
                    time.sleep(server.delay)
                self.reply(200, server.answer(body))

            def reply(self, status: int, payload: dict):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout mode)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def answer(self, body: dict) -> dict:
        prompt = "\n".join(m["content"] for m in body["messages"])
        outs = pair_outputs(prompt)
        winner = "m" if len(outs.get("m", "")) >= len(outs.get("M", "")) else "M"
        loser = "M" if winner == "m" else "m"
        top = [{"token": winner, "logprob": math.log(P_LONGER), "bytes": list(winner.encode())},
               {"token": loser, "logprob": math.log(1 - P_LONGER), "bytes": list(loser.encode())}]
        return {"id": "cmpl-test", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": winner},
                             "logprobs": {"content": [{"token": winner, "logprob": top[0]["logprob"],
                                                       "top_logprobs": top}]}}]}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
