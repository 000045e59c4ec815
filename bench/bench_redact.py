"""Redaction throughput: what `audit record` does to a run's stdout before storing it.

    python bench/bench_redact.py            # writes bench/results/redact.json

`redact_bytes` (the function `audit record` applies to stdout and stderr) over 50 MB, with
15 secrets learned from the environment first (as `audit record` does), best of 3:

* one line: 50 MB of `x` without a separator (issue 8: quadratic before, > 60 s for 100 KB),
  and 50 MB of a tqdm progress bar redrawn with carriage returns and no newline;
* 1 M lines: JSON metrics lines and logging lines mixed (about 50 bytes a line);
* lines with `tokens/s`: 700 k LLM training lines, each holding an anchor (`token`) that
  turns out not to be a secret name;
* dense: 5 MB of lines each holding `key=value api_key=... tokens/s`, where every line
  has anchors to examine (the slow path: its figure is reported, not a target).

Target (issue 8): at least 50 MB/s for the one-line and 1 M-line cases. Wall-clock and
CPU-time figures are both kept, with the load average: on a shared machine the CPU
figure is the one to compare.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MB = 1_000_000


def _inputs() -> dict[str, bytes]:
    bar = b"Epoch 1:  45%|####5     | 450/1000 [00:12<00:15, 36.1it/s, loss=0.412, lr=1e-3]\r"
    lines = [b'{"step": %d, "loss": 0.%04d, "lr": 0.001}\n' % (i, i % 9973) if i % 2 else
             b"INFO:train:epoch %d step %d done in 0.21s\n" % (i // 1000, i)
             for i in range(1_000_000)]
    llm = [b"step %d | loss 2.%03d | tokens/s 45123 | lr 3.0e-04 | grad_norm 0.91\n"
           % (i, i % 997) for i in range(700_000)]
    dense = b"step 1 tokens/s 1234 key=value api_key=abcdef123 \n"
    return {
        "one_line_x_50MB": b"x" * (50 * MB),
        "one_line_progress_bar_50MB": bar * (50 * MB // len(bar)),
        "1M_lines": b"".join(lines),
        "lines_with_tokens_per_s": b"".join(llm),
        "dense_anchors_5MB": dense * (5 * MB // len(dense)),
    }


def _learn_secrets() -> None:
    from auditor.record.capture.secrets import redact_env

    env = {f"SVC_{i}_TOKEN": f"tok-{i:02d}-Zq8Xv2Lm9Tk4Rp7Wc1Ny6Hb3" for i in range(15)}
    redact_env(env)


def bench(data: bytes, repeat: int = 3) -> dict[str, float]:
    from auditor.record.capture.secrets import redact_bytes

    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        redact_bytes(data)
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return {"bytes": len(data), "seconds": round(best, 3),
            "mb_per_s": round(len(data) / best / MB, 1),
            "cpu_seconds": round(best_cpu, 3),
            "mb_per_cpu_s": round(len(data) / max(best_cpu, 1e-9) / MB, 1)}


def main() -> None:
    _learn_secrets()
    results: dict[str, object] = {"machine": platform.processor() or platform.machine(),
                                  "load_average_1m": os.getloadavg()[0]}
    for name, data in _inputs().items():
        results[name] = bench(data)
        print(name, results[name], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "redact.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
