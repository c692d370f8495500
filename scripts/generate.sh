#!/usr/bin/env bash
# Generate one image through the proxy with ComfyUI's own API, as the seed documents it:
# POST /openai/api/prompt, poll /openai/api/history/<id>, GET /openai/api/view.
# usage: scripts/generate.sh ["prompt text"] [out.png]   (PROXY, MODEL, WORKFLOW from the env)
set -euo pipefail
cd "$(dirname "$0")/.."
TEXT=${1:-a lighthouse at dusk, oil painting}
OUT=${2:-out.png}
PROXY=${PROXY:-http://127.0.0.1:8080}
MODEL=${MODEL:-serverless-comfyui}
WORKFLOW=${WORKFLOW:-flux_dev_t5fp8}
PY=.venv/bin/python

# The request body: the library workflow with the prompt filled in, plus the `model` field.
body=$("$PY" - "$WORKFLOW" "$TEXT" "$MODEL" <<'PYEOF'
import json, sys
from serverless_comfyui.workflows import load_library
workflow, text, model = sys.argv[1:4]
graph = load_library().get(workflow).render({"prompt": text}, prompt_id="cli").graph
print(json.dumps({"model": model, "prompt": graph}))
PYEOF
)
echo "submitting to $PROXY (model $MODEL); a scaled-to-zero app first waits for a warm pod..." >&2
prompt_id=$(curl -sf -X POST "$PROXY/openai/api/prompt" -H 'Content-Type: application/json' \
  -d "$body" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["prompt_id"])')
echo "prompt_id: $prompt_id" >&2
# The history check exits 3 when the prompt failed in ComfyUI: stop at once with its message
# (any other failure, e.g. the proxy still answering 503 during a cold start, is retried).
for _ in $(seq 1 600); do
  rc=0
  image=$(curl -sf "$PROXY/openai/api/history/$prompt_id?model=$MODEL" | "$PY" -c '
import json, sys, urllib.parse
entry = json.load(sys.stdin).get(sys.argv[1])
if entry and entry["status"].get("status_str") == "error":
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    error = errors[-1] if errors else {}
    node = "{} (node {})".format(error.get("node_type"), error.get("node_id"))
    message = str(error.get("exception_message", "")).strip()
    print(f"generation failed in {node}: {message}", file=sys.stderr)
    sys.exit(3)
for out in (entry or {}).get("outputs", {}).values():
    for img in out.get("images", []):
        print(urllib.parse.urlencode({k: img[k] for k in ("filename", "subfolder", "type")}))
        sys.exit(0)
' "$prompt_id") || rc=$?
  [ "$rc" -eq 3 ] && exit 1
  [ "$rc" -eq 0 ] && [ -n "$image" ] && break
  image=""
  sleep 1
done
[ -n "${image:-}" ] || { echo "no image after 10 minutes" >&2; exit 1; }
curl -sf "$PROXY/openai/api/view?$image&model=$MODEL" -o "$OUT"
echo "saved $OUT" >&2
