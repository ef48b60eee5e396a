#!/usr/bin/env bash
# The GPU check: the `pytest -m gpu` tier + `bench latency`, `bench head` and `bench train` on
# the GPU, summarised in ONE JSON with how long each part and the whole took. Budget: under 8 minutes on one
# H100 (each part has its own timeout; their sum is 445 s).
#
#   runs/gpu_check.sh [OUT_JSON]          # from anywhere; default OUT_JSON = outputs/gpu_check.json
#
# Safe to run cold on a bare machine: it uses $PYTHON, else ./.venv, else python3 if it already has latentvla's
# dependencies, pytest and torch; otherwise it makes ./.venv with the README's install command
# (`pip install torch==2.13.0 && pip install -e ".[sim,serve,dev,hf,video,libero,ray,vision]"`, needs PyPI). It then
# checks that torch sees a CUDA GPU and explains what to do when it does not (a CPU-only torch build is the
# usual cause: PyPI's Linux torch wheel is the CUDA build, the pytorch.org CPU index is not).
# Environment: GPU_CHECK_DEVICE (default cuda; "cpu" dry-runs the script itself on a CPU machine),
# GPU_CHECK_PYTEST_ARGS (extra pytest args, e.g. "-k serve").
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
OUT=${1:-outputs/gpu_check.json}
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1 PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)

ready() { "$1" -c "import latentvla, pytest, torch, pyarrow, safetensors, websockets, transformers, metaworld" >/dev/null 2>&1; }
PY=""
for cand in "${PYTHON:-}" "$ROOT/.venv/bin/python" "$(command -v python3 || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && ready "$cand"; then PY=$cand; break; fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no Python with latentvla + pytest + torch; creating .venv (README install command)" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv || { echo "error: python3 -m venv failed" >&2; exit 2; }
  PY="$ROOT/.venv/bin/python"
  if ! { "$PY" -m pip install -q torch==2.13.0 && "$PY" -m pip install -q -e ".[sim,serve,dev,hf,video,libero,ray,vision]"; }; then
    echo "error: the install failed (no PyPI access?); install on a connected machine or set PYTHON=/path/to/python" >&2
    exit 2
  fi
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" - <<'EOF' >&2
import torch
if torch.version.cuda is None:
    print(f"error: {torch.__version__} is a CPU-only torch build. On a Linux GPU machine `pip install torch==2.13.0` "
          "from PyPI is the CUDA build; this one came from a CPU index. Reinstall it, e.g. `pip install "
          "--force-reinstall torch==2.13.0 --index-url https://download.pytorch.org/whl/cuXYZ` (the CUDA version "
          "your driver supports, see `nvidia-smi`), or point "
          "PYTHON= at an environment with a CUDA torch.")
else:
    print(f"error: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check `nvidia-smi`, the "
          "driver version and CUDA_VISIBLE_DEVICES.")
EOF
  exit 3
fi

"$PY" - "$OUT" "$START" "$DEVICE" "${GPU_CHECK_PYTEST_ARGS:-}" <<'EOF'
import json, os, shlex, subprocess, sys, tempfile, time, xml.etree.ElementTree as ET
from datetime import datetime, timezone

out, start, device, pytest_args = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
py, tmp = sys.executable, tempfile.mkdtemp(prefix="gpu_check_")
env = {**os.environ, "LATENTVLA_GPU_TESTS_DEVICE": device}


def run(name, cmd, timeout, json_file=None):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", f"timed out after {timeout} s\n" + ((e.stdout or b"").decode(errors="replace")
                                                                  if isinstance(e.stdout, bytes) else (e.stdout or ""))
    step = {"cmd": " ".join(map(shlex.quote, cmd)), "rc": rc, "seconds": round(time.time() - t0, 1),
            "timeout_s": timeout, "output_tail": text[-2500:]}
    if json_file and os.path.isfile(json_file):
        step["result"] = json.load(open(json_file))
    print(f"gpu_check: {name}: rc={rc} in {step['seconds']} s", file=sys.stderr, flush=True)
    return step


cli = [py, "-m", "latentvla.cli"]
steps = {}
xml = os.path.join(tmp, "pytest.xml")
steps["pytest_gpu"] = run("pytest -m gpu", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                            f"--junitxml={xml}", "--durations=0", *shlex.split(pytest_args)], 240)
if os.path.isfile(xml):
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    steps["pytest_gpu"]["counts"] = {**n, "passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"]}
    steps["pytest_gpu"]["cases"] = {
        c.get("name"): {"seconds": float(c.get("time", 0)),
                        "status": next((ch.tag for ch in c if ch.tag in ("failure", "error", "skipped")), "passed")}
        for c in suite.iter("testcase")}  # fmt: skip
for preset in ("rdvla", "lara"):
    j = os.path.join(tmp, f"latency_{preset}.json")
    steps[f"bench_latency_{preset}"] = run(f"bench latency {preset}", [*cli, "bench", "latency", "--preset", preset,
                                           "--device", device, "--repeats", "20", "--json", j], 30, j)
j = os.path.join(tmp, "head.json")
steps["bench_head"] = run("bench head", [*cli, "bench", "head", "--device", device, "--iterations", "1,4,8,12,32",
                                         "--json", j], 30, j)
j = os.path.join(tmp, "head_train.json")
steps["bench_head_train"] = run("bench head --train", [*cli, "bench", "head", "--device", device, "--train",
                                                       "--iterations", "8", "--json", j], 25, j)
j = os.path.join(tmp, "train.json")
steps["bench_train"] = run("bench train", [*cli, "bench", "train", "--steps", "5", "--warmup", "2", "--json", j,
                                           f"device={device}"], 90, j)

import torch

cuda = torch.cuda.is_available()
info = {
    "script": "runs/gpu_check.sh",
    "started_utc": datetime.fromtimestamp(start, timezone.utc).isoformat(timespec="seconds"),
    "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "duration_s": round(time.time() - start, 1),
    "checks_s": round(sum(s["seconds"] for s in steps.values()), 1),
    "budget_s": 480,
    "device": {"requested": device, "name": torch.cuda.get_device_name(0) if cuda else "cpu",
               "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
               "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "torch": torch.__version__,
               "cuda": torch.version.cuda},
    "git_commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "ok": all(s["rc"] == 0 for s in steps.values()),
    "steps": steps,
}
info["under_budget"] = info["duration_s"] < info["budget_s"]
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as f:
    json.dump(info, f, indent=2)
print(f"gpu_check: {'OK' if info['ok'] else 'FAILED'} in {info['duration_s']} s "
      f"({info['device']['name']}); wrote {out}")
sys.exit(0 if info["ok"] else 1)
EOF
