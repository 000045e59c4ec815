#!/usr/bin/env bash
# The GPU check of issue 19, as one prepared script (at most 8 minutes):
#
#   bash bench/gpu_check.sh            # writes bench/results/gpu.json
#
# On a machine with a CUDA GPU it records a small CUDA training that checkpoints every 10
# steps (`run.checkpoint`) twice, with torch's deterministic algorithms on and off, then
# verifies each run in full and with `--segments 2` in the image rebuilt from its lockfile
# with the GPU passed through (docker when an engine answers, else the venv backend), and
# writes the verdicts, the step time with and without determinism, and the GPU, driver,
# CUDA and cuDNN the records hold to bench/results/gpu.json. A step that cannot run here
# (no engine, no wheels for the image offline) is written into gpu.json with its reason;
# the script still exits 0 so the figures it could take come back.
#
# On a machine without a CUDA GPU it says so in one line and exits 0. Never run from CI.
set -u
HERE="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$HERE/bench/results/gpu.json"
DEADLINE=$((SECONDS + 460))  # 7m40s: everything below fits in 8 minutes
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in "$HERE/.venv/bin/python" python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then PY="$candidate"; break; fi
  done
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU on this machine (nvidia-smi absent or failing); nothing to check"
  exit 0
fi
if [ -z "$PY" ] || ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    >/dev/null 2>&1; then
  echo "gpu_check: a GPU is present but no Python here has torch with CUDA (set PYTHON=...)"
  mkdir -p "$(dirname "$OUT")"
  printf '{"gpu": "%s", "error": "no torch with CUDA in %s"}\n' \
    "$(nvidia-smi -L | head -1 | tr -d '"')" "${PY:-python}" > "$OUT"
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
export AUDITOR_STORE="$WORK/store" AUDITOR_QUIET=1 PYTHONUNBUFFERED=1
export GIT_AUTHOR_NAME=g GIT_AUTHOR_EMAIL=g@g GIT_COMMITTER_NAME=g GIT_COMMITTER_EMAIL=g@g
AUDIT=("$PY" -m auditor.cli.main)
if ! "${AUDIT[@]}" --help >/dev/null 2>"$WORK/why"; then
  AUDIT=()
fi
mkdir -p "$WORK/proj"
cat > "$WORK/proj/train_gpu.py" <<'PYEOF'
"""A small CUDA training that checkpoints every --every steps; an embedding whose backward
accumulates with atomics, so determinism matters. Step times go to stderr (not metrics)."""
import argparse, json, sys, time

import torch

import auditor

p = argparse.ArgumentParser()
p.add_argument("--deterministic", type=int, default=1)
p.add_argument("--steps", type=int, default=60)
p.add_argument("--every", type=int, default=10)
a = p.parse_args()
auditor.seed_everything(0, deterministic=bool(a.deterministic))
if not a.deterministic:
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
dev = "cuda"
g = torch.Generator().manual_seed(0)
X = torch.randint(0, 5000, (8192, 32), generator=g)
Y = torch.randint(0, 2, (8192,), generator=g)
model = torch.nn.Sequential(torch.nn.EmbeddingBag(5000, 256, mode="sum"),
                            torch.nn.Linear(256, 1024), torch.nn.ReLU(),
                            torch.nn.Linear(1024, 2)).to(dev)
opt = torch.optim.Adam(model.parameters(), 1e-3)
with auditor.start_run(name=f"gpu-det{a.deterministic}", seed=0) as run:
    start = run.resume(model, opt, generators=[g])
    times = []
    for step in range(start, a.steps):
        idx = torch.randint(0, 8192, (512,), generator=g)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(X[idx].to(dev)), Y[idx].to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        print(json.dumps({"step": step + 1, "loss": loss.item()}))
        run.checkpoint(step + 1, model=model, optimizer=opt, generators=[g], every=a.every)
    if times:
        times.sort()
        print(f"STEP_MS {1000 * times[len(times) // 2]:.3f}", file=sys.stderr)
PYEOF
(cd "$WORK/proj" && git init -q && git add -A && git commit -qm gpu)

left() { echo $((DEADLINE - SECONDS)); }
declare -A VERDICT STEPMS RUNID
for det in 1 0; do
  if [ ${#AUDIT[@]} -eq 0 ]; then
    STEPMS[$det]=$(cd "$WORK/proj" && timeout 120 "$PY" train_gpu.py --deterministic $det \
      2>&1 >/dev/null | sed -n 's/^STEP_MS //p')
    VERDICT[$det]="could not record: $(tail -1 "$WORK/why" | tr -d '"\\')"
    continue
  fi
  (cd "$WORK/proj" && timeout 150 "${AUDIT[@]}" --json record --name "gpu-det$det" -- \
    "$PY" train_gpu.py --deterministic $det >"$WORK/rec$det.json" 2>"$WORK/rec$det.err")
  STEPMS[$det]=$(sed -n 's/^STEP_MS //p' "$WORK/rec$det.err" | tail -1)
  RUNID[$det]=$("$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])['id'])" \
    "$WORK/rec$det.json" 2>/dev/null)
done

verify() {  # verify RUN [ARGS...] -> "verdict (exit N)" or the reason it could not
  local run="$1"; shift
  local budget; budget=$(( $(left) / 3 )); [ "$budget" -lt 20 ] && { echo "skipped: out of time"; return; }
  (cd "$WORK/proj" && timeout "$budget" "${AUDIT[@]}" --json verify "$run" "$@" \
     --timeout "$budget" >"$WORK/v.json" 2>"$WORK/v.err")
  local code=$?
  local level
  level=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][0]['verdict']['level'])" \
    "$WORK/v.json" 2>/dev/null)
  echo "${level:-$(tail -1 "$WORK/v.err" | cut -c1-300 | tr -d '"\\')} (exit $code)"
}
declare -A FULL SPOT
for det in 1 0; do
  if [ -n "${RUNID[$det]:-}" ]; then
    FULL[$det]=$(verify "${RUNID[$det]}")
    SPOT[$det]=$(verify "${RUNID[$det]}" --segments 2)
  else
    FULL[$det]="${VERDICT[$det]:-not recorded: $(tail -1 "$WORK/rec$det.err" 2>/dev/null | tr -d '"\\')}"
    SPOT[$det]="${FULL[$det]}"
  fi
done

ENVJSON="{}"
if [ -n "${RUNID[1]:-}" ]; then
  ENVJSON=$(cd "$WORK/proj" && "${AUDIT[@]}" --json show "${RUNID[1]}" 2>/dev/null | "$PY" -c \
    "import json,sys; r=json.load(sys.stdin); e=r.get('environment',{}); print(json.dumps({'accelerators': e.get('accelerators'), 'system': {k: (e.get('system') or {}).get(k) for k in ('os','kernel','cpu_model')}}))" \
    2>/dev/null || echo "{}")
fi
mkdir -p "$(dirname "$OUT")"
"$PY" - "$OUT" <<PYEOF
import json, subprocess, sys
smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap",
                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
import torch
figures = {
    "bench": "gpu_check",
    "gpu_nvidia_smi": smi,
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(),
    "recorded": json.loads('''$ENVJSON'''),
    "deterministic_on": {"step_ms": "${STEPMS[1]:-}", "run": "${RUNID[1]:-}",
                         "full": "${FULL[1]}", "segments_2": "${SPOT[1]}"},
    "deterministic_off": {"step_ms": "${STEPMS[0]:-}", "run": "${RUNID[0]:-}",
                          "full": "${FULL[0]}", "segments_2": "${SPOT[0]}"},
}
open(sys.argv[1], "w").write(json.dumps(figures, indent=1) + "\n")
print(json.dumps(figures, indent=1))
PYEOF
exit 0
