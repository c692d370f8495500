#!/usr/bin/env bash
# Build the container images with docker buildx (`make images`).
#
#   bash images/build.sh [comfyui] [controller] [devpod]     # default: all three
#
# Names, tags and pinned versions come from images/versions.env; a variable already set in the
# environment wins (e.g. `NUNCHAKU=true REGISTRY=my.registry/team make images`).
#   PUSH=1        push to the registry instead of loading into the local engine (docker login first)
#   PLATFORM=...  target platform (default linux/amd64: the GPU nodes)
#   DRY_RUN=1     print the build commands, build nothing (works without Docker)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")

while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^[A-Z_][A-Z0-9_]*= ]] || continue
    key=${line%%=*}
    value=${line#*=}
    if [[ -z "${!key+set}" ]]; then
        # Values are ours (versions.env): expand ${KEY} references to keys defined above.
        eval "export $key=\"$value\""
    fi
done < "$here/versions.env"

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(comfyui controller devpod)
fi

for target in "${targets[@]}"; do
    case "$target" in
        comfyui | controller | devpod) ;;
        *)
            echo "error: unknown image '$target' (comfyui, controller, devpod)" >&2
            exit 2
            ;;
    esac
done

run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ "${DRY_RUN:-0}" != 1 ]]; then
        "$@"
    fi
}

if [[ "${DRY_RUN:-0}" != 1 ]]; then
    if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
        cat >&2 <<MSG
error: no Docker engine answers here (\`docker info\` failed), so the images cannot be built on
this machine. Our development and CI machines have no Docker engine; the images are built
elsewhere: on any machine with Docker and buildx (or a CI job with Docker), from a checkout:

    make images                         # all three, loaded into the local engine
    bash images/build.sh comfyui        # one of comfyui, controller, devpod
    PUSH=1 make images                  # push to ${REGISTRY} (after docker login)

Names, tags and versions: images/versions.env. More: images/README.md.
MSG
        exit 1
    fi
    if ! docker buildx version >/dev/null 2>&1; then
        echo "error: docker buildx is not installed (https://docs.docker.com/go/buildx/)" >&2
        exit 1
    fi
fi

output=--load
if [[ "${PUSH:-0}" == 1 ]]; then
    output=--push
fi
platform=${PLATFORM:-linux/amd64}

for target in "${targets[@]}"; do
    args=()
    case "$target" in
        comfyui)
            tag=$COMFYUI_IMAGE
            if [[ "$NUNCHAKU" == true ]]; then
                tag=$tag-nunchaku
            fi
            for name in IMAGE_VERSION COMFYUI_REPO COMFYUI_VERSION COMFYUI_SHA256 TORCH_VERSION \
                TORCHVISION_VERSION TORCHAUDIO_VERSION TORCH_INDEX_URL NUNCHAKU \
                NUNCHAKU_NODES_REPO NUNCHAKU_NODES_VERSION NUNCHAKU_WHEEL_URL; do
                args+=(--build-arg "$name=${!name}")
            done
            ;;
        controller)
            tag=$CONTROLLER_IMAGE
            args+=(--build-arg "IMAGE_VERSION=$IMAGE_VERSION")
            ;;
        devpod)
            tag=$DEVPOD_IMAGE
            args+=(--build-arg "IMAGE_VERSION=$IMAGE_VERSION")
            args+=(--build-arg "HUGGINGFACE_HUB_VERSION=$HUGGINGFACE_HUB_VERSION")
            ;;
    esac
    run docker buildx build --platform "$platform" "$output" \
        --file "$here/$target/Dockerfile" --tag "$tag" "${args[@]}" "$root"
done
