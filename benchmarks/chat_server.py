"""Student replies per second from a real ``transformers serve``: one request at a time vs concurrent ones.

Usage:
    python benchmarks/chat_server.py                                  # 8 replies, workers 1/2/4/8, with and without CB
    python benchmarks/chat_server.py --workers 1,8 --modes cb --out runs/chat_server.json

For each server mode (continuous batching on: ``cb``, off: ``plain``) a fresh server on the embedded
model starts on a free loopback port (the start-up and the first request are timed apart), then the
same batch of student conversations (the LLM student's real prompts, one topic each) is sent with
``OpenAIChatClient(max_workers=w)`` for every ``w``. Seeded requests, no response cache. Measure
with nothing else running: the server and this process share the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from envs.chat import OpenAIChatClient
from envs.chat.server import LocalServer, serving_folder
from envs.students import StudentContext
from envs.students.chat_model import student_conversation

TOPICS = ["photosynthesis", "the French Revolution", "Newton's third law", "metaphors", "the nervous system",
          "supply and demand", "the Parthenon", "DNA", "plate tectonics", "the water cycle", "prime numbers",
          "the Silk Road", "vaccines", "inflation", "black holes", "the printing press"]


def conversations(n: int) -> list[list[dict]]:
    """``n`` student conversations, each answering a first teacher turn on its own topic."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        turn = f"Today we look at {topic}. What do you already know about it?"
        ctx = StudentContext(topic, ("direct", "interactive")[i % 2], "anxious",
                             [{"role": "teacher", "content": turn}])
        out.append(student_conversation(ctx))
    return out


def measure(server: LocalServer, workers: list[int], requests: int, max_tokens: int) -> dict:
    """Start-up, first request and the batch wall time per worker count, for one server mode."""
    start = time.perf_counter()
    server.start()
    row = {"mode": "cb" if server.continuous_batching else "plain", "startup_s": time.perf_counter() - start}
    try:
        first = OpenAIChatClient(model="auto", base_url=server.base_url, api_key_env=None, cache_path=None,
                                 timeout=600, seed=0)
        start = time.perf_counter()
        first.chat([{"role": "user", "content": "Say hello."}], max_tokens=max_tokens)
        row["first_request_s"] = time.perf_counter() - start
        batch = conversations(requests)
        for w in workers:
            client = OpenAIChatClient(model="auto", base_url=server.base_url, api_key_env=None, cache_path=None,
                                      timeout=600, max_workers=w, seed=0)
            start = time.perf_counter()
            replies = client.chat_batch(batch, max_tokens=max_tokens, temperature=0.7)
            wall = time.perf_counter() - start
            assert len(replies) == requests and client.stats.failures == 0
            row[f"workers_{w}"] = {"wall_s": wall, "requests_per_s": requests / wall,
                                   "mean_reply_chars": sum(map(len, replies)) / requests}
            print(f"[{row['mode']}] max_workers={w}: {requests / wall:.2f} requests/s ({wall:.1f} s)", flush=True)
    finally:
        server.stop()
    return row


def table(rows: list[dict], workers: list[int]) -> str:
    """A markdown table: requests/s per mode and worker count."""
    head = "| server | start-up s | first request s | " + " | ".join(f"max_workers={w}" for w in workers) + " |"
    lines = [head, "|" + "---|" * (3 + len(workers))]
    for r in rows:
        cells = " | ".join(f"{r[f'workers_{w}']['requests_per_s']:.2f}" for w in workers)
        lines.append(f"| {r['mode']} | {r['startup_s']:.1f} | {r['first_request_s']:.1f} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    """Runs the comparison and prints (and optionally writes) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8, help="student replies per batch")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--workers", default="1,2,4,8", help="comma-separated max_workers values")
    parser.add_argument("--modes", default="cb,plain", help="cb (continuous batching) and/or plain")
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    folder = serving_folder()
    rows = [measure(LocalServer(folder, continuous_batching=mode == "cb"), workers, args.requests, args.max_tokens)
            for mode in args.modes.split(",")]
    print(table(rows, workers))
    if args.out:
        report = {"machine": platform.platform(), "requests": args.requests, "max_tokens": args.max_tokens,
                  "rows": rows, "markdown": table(rows, workers)}
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
