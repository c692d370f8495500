#!/usr/bin/env bash
# The same chart on a real (kind) cluster with real images, for machines with Docker.
# It cannot run on our development and CI machines (no Docker engine); it is kept small on
# purpose. kind nodes have no GPU, so the default FluxWorkflow runs ComfyUI on CPU (the `cpu`
# resource profile, ComfyUI's --cpu flag) with the tiny `warmup` workflow, which needs no
# weights: it proves install, wake from zero, the proxy's routing and scale back to zero.
# usage: scripts/e2e-kind.sh            (KEEP=1 keeps the cluster afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER=${CLUSTER:-serverless-comfyui-e2e}
NS=serverless-comfyui
# shellcheck source=../images/versions.env
source images/versions.env

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (this runs only where Docker does)" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers; run this where Docker runs" >&2; exit 1; }

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

make images
for image in "$COMFYUI_IMAGE" "$CONTROLLER_IMAGE" "$DEVPOD_IMAGE"; do
  kind load docker-image "$image" --name "$CLUSTER"
done

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f -
helm upgrade --install serverless-comfyui charts/serverless-comfyui -n "$NS" --wait --timeout 10m \
  --set persistence.accessModes[0]=ReadWriteOnce \
  --set model.resourceProfile=cpu:1 \
  --set model.workflow.name=warmup \
  --set 'model.models=null' \
  --set 'model.env[0].name=COMFYUI_COMMAND' \
  --set 'model.env[0].value=python /opt/ComfyUI/main.py --cpu --listen 0.0.0.0 --port 8188 --disable-auto-launch'
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=ScaledToZero fw/serverless-comfyui --timeout=5m

kubectl -n "$NS" port-forward svc/serverless-comfyui-proxy 18080:8080 >/dev/null &
forward=$!
trap 'kill $forward; cleanup' EXIT
sleep 3
echo "waking the application from zero (pulls nothing: images are loaded)..."
curl -fsS -m 900 -X GET http://127.0.0.1:18080/openai/api/system_stats -d '{"model": "serverless-comfyui"}' | head -c 200; echo
kubectl -n "$NS" get fw,pods
echo "waiting for the scale-down (scaleDownDelaySeconds + drain)..."
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=ScaledToZero fw/serverless-comfyui --timeout=5m
echo "e2e on kind: OK"
