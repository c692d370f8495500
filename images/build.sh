#!/usr/bin/env bash
# Build the container images (`make images`): with docker buildx where `docker buildx version`
# works, else with podman (buildah) and the project's own storage (images/podman.sh). Same
# Dockerfiles, same build arguments (images/versions.env) either way.
#
#   bash images/build.sh [comfyui] [controller] [devpod]     # default: all three
#   bash images/build.sh --save DIR [IMAGE...]  # also write DIR/<image>.oci.tar (containerd import)
#   bash images/build.sh --check [IMAGE...]     # exit 0 if the images are built from these inputs
#
# Names, tags and pinned versions come from images/versions.env; a variable already set in the
# environment wins (e.g. `NUNCHAKU=true REGISTRY=my.registry/team make images`).
#   ENGINE=docker|podman  default: docker where `docker buildx version` works, else podman
#   BASE=local|upstream   default (auto): upstream (BASE_IMAGE) where its registry answers, else a
#                         local Debian base made with mmdebstrap (see versions.env)
#   COMFYUI_SOURCE_URL, COMFYUI_SHA256   ComfyUI's source archive (URL or path) and its digest
#   PUSH=1        docker: push to the registry instead of loading into the local engine
#   PLATFORM=...  docker: target platform (default linux/amd64: the GPU nodes)
#   DRY_RUN=1     print the build commands, build nothing (needs no engine)
#   SERVERLESS_COMFYUI_IMAGES_CACHE   podman storage, the local base, fetched sources, stamps
#                 (default ~/.cache/serverless-comfyui/containers)
#
# Each image is cached by a hash of its inputs (Dockerfile, its .dockerignore, every file the
# build context sends, build arguments, the base image's id, ComfyUI's archive digest): the hash is
# the image's label io.serverless-comfyui.inputs, and an image whose label matches is not rebuilt
# ("cached"). A new build of an image removes what its earlier builds left in the storage.
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

usage() { sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

save_dir=""
check=0
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --save)
            [[ $# -ge 2 ]] || { echo "error: --save needs a folder" >&2; exit 2; }
            save_dir=$2
            shift 2
            ;;
        --save=*) save_dir=${1#--save=}; shift ;;
        --check) check=1; shift ;;
        -h | --help) usage; exit 0 ;;
        comfyui | controller | devpod) targets+=("$1"); shift ;;
        *)
            echo "error: unknown image '$1' (comfyui, controller, devpod)" >&2
            exit 2
            ;;
    esac
done
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(comfyui controller devpod)
fi
dry=${DRY_RUN:-0}

cache=${SERVERLESS_COMFYUI_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/serverless-comfyui/containers}
ca_bundle=/etc/ssl/certs/ca-certificates.crt

run() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
    if [[ "$dry" != 1 ]]; then
        "$@"
    fi
}

log() { printf '[images] %s\n' "$*" >&2; }

# -- engine ------------------------------------------------------------------------------------
engine=${ENGINE:-}
if [[ -z "$engine" ]]; then
    if command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
        engine=docker
    else
        engine=podman
    fi
fi
case "$engine" in
    docker) cli=(docker) ;;
    podman)
        cli=(bash "$here/podman.sh")
        if [[ "$dry" != 1 ]]; then
            bash "$root/scripts/ensure-container-tools.sh"
        fi
        ;;
    *) echo "error: ENGINE must be docker or podman, not '$engine'" >&2; exit 2 ;;
esac
if [[ "$engine" == docker && "$dry" != 1 ]] && ! docker info >/dev/null 2>&1; then
    echo "error: docker buildx is installed but no Docker engine answers (\`docker info\`)" >&2
    echo "       (ENGINE=podman builds without one; see images/README.md)" >&2
    exit 1
fi
if [[ "${PUSH:-0}" == 1 && "$engine" != docker ]]; then
    echo "error: PUSH=1 needs docker buildx; with podman: bash images/podman.sh push TAG" >&2
    exit 2
fi

image_label() { # image label -> value, empty when the image or the label is missing
    "${cli[@]}" image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}
image_id() { "${cli[@]}" image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
remove_earlier_build() { # target hash: what an earlier build of target left (intermediate
    # stages and its final image once no tag points at it), found by its inputs label; an image
    # that is still in use stays.
    local ids id pass
    for pass in 1 2; do # children before their parents
        ids=$("${cli[@]}" images --quiet --no-trunc --filter dangling=true \
            --filter "label=io.serverless-comfyui.inputs=$2" 2>/dev/null || true)
        for id in $ids; do
            "${cli[@]}" rmi "$id" >/dev/null 2>&1 || [[ $pass == 1 ]] ||
                log "$1: kept $id of an earlier build (in use)"
        done
    done
}
sha256_of() { sha256sum | cut -c1-64; }

# -- the base image ----------------------------------------------------------------------------
base=${BASE:-auto}
if [[ "$base" == auto ]]; then
    if [[ "$engine" == docker ]]; then
        base=upstream
    elif command -v skopeo >/dev/null 2>&1 &&
        timeout 30 skopeo inspect --raw "docker://$BASE_IMAGE" >/dev/null 2>&1; then
        base=upstream
    else
        base=local
        log "no registry answers for $BASE_IMAGE: building on a local Debian base (BASE=local)"
    fi
fi

case "$base" in
    upstream)
        base_image=$BASE_IMAGE
        if [[ "$dry" == 1 ]]; then
            base_id=$base_image
        elif [[ "$engine" == podman ]]; then
            [[ -n "$(image_id "$base_image")" ]] || "${cli[@]}" pull "$base_image" >&2
            base_id=$(image_id "$base_image")
        else
            # docker buildx resolves the base itself; its reference (pin a digest) is the input.
            base_id=$base_image
        fi
        ;;
    local)
        recipe="mmdebstrap $(mmdebstrap --version 2>/dev/null | awk '{print $2}') --variant=minbase"
        recipe+=" --include=$LOCAL_BASE_PACKAGES $LOCAL_BASE_SUITE $LOCAL_BASE_MIRROR"
        base_hash=$(printf '%s\n' "$recipe" | sha256_of | cut -c1-12)
        base_image=localhost/serverless-comfyui/base:$LOCAL_BASE_SUITE-$base_hash
        base_id=$base_image
        if [[ "$dry" != 1 ]]; then
            base_id=$(image_id "$base_image")
            if [[ -z "$base_id" && "$check" == 1 ]]; then
                echo "stale: the local base $base_image is not built" >&2
                exit 1
            fi
            if [[ -z "$base_id" ]]; then
                log "building $base_image ($recipe)"
                started=$SECONDS
                mkdir -p "$cache/base"
                workdir=$(mktemp -d "$cache/base/.$LOCAL_BASE_SUITE-$base_hash.XXXXXX")
                tarball=$workdir/base.tar
                mmdebstrap --quiet --variant=minbase --include="$LOCAL_BASE_PACKAGES" \
                    "$LOCAL_BASE_SUITE" "$tarball" "$LOCAL_BASE_MIRROR" >&2
                if [[ "$engine" == podman ]]; then
                    "${cli[@]}" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
                        "$tarball" "$base_image" >/dev/null
                else
                    docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
                        "$tarball" "$base_image" >/dev/null
                fi
                rm -rf "$workdir"
                base_id=$(image_id "$base_image")
                log "base $base_image built in $((SECONDS - started))s"
            fi
        fi
        ;;
    *) echo "error: BASE must be local, upstream or auto, not '$base'" >&2; exit 2 ;;
esac

# -- ComfyUI's source: fetched and verified on the host, sent as a build context ---------------
comfyui_source=""
comfyui_digest=${COMFYUI_SHA256:-}
prepare_comfyui_source() {
    local sources=$cache/sources
    if [[ -n "$comfyui_digest" && -f "$sources/comfyui-$comfyui_digest/.complete" ]]; then
        comfyui_source=$sources/comfyui-$comfyui_digest/tree
        return
    fi
    if [[ "$dry" == 1 ]]; then
        comfyui_source=$sources/comfyui-${comfyui_digest:-SHA256}/tree
        return
    fi
    mkdir -p "$sources"
    local tmp out url=$COMFYUI_SOURCE_URL
    if [[ "$url" != *://* && "$url" != /* ]]; then
        url=$root/$url # a relative path is relative to the repository root
    fi
    tmp=$(mktemp -d "$sources/.fetch.XXXXXX")
    out=$(python3 "$here/comfyui/fetch_source.py" --repo "$COMFYUI_REPO" --ref "$COMFYUI_VERSION" \
        --url "$url" --sha256 "$comfyui_digest" --dest "$tmp/tree") || {
        rm -rf "$tmp"
        exit 1
    }
    log "$out"
    local digest
    digest=$(sed -n 's/.*(sha256 \([0-9a-f]\{64\}\)).*/\1/p' <<<"$out")
    if [[ -z "$comfyui_digest" ]]; then
        log "COMFYUI_SHA256 is empty: $COMFYUI_SOURCE_URL has sha256 $digest" \
            "(set COMFYUI_SHA256=$digest to pin it)"
        comfyui_digest=$digest
    fi
    touch "$tmp/.complete"
    rm -rf "$sources/comfyui-$digest"
    mv "$tmp" "$sources/comfyui-$digest"
    comfyui_source=$sources/comfyui-$digest/tree
}

# -- inputs hash -------------------------------------------------------------------------------
context_files() { # the files the context sends: the .dockerignore's allowlist (`!path` lines)
    local name=$1 path
    (
        cd "$root"
        sed -n 's/^!\(.*\)$/\1/p' "images/$name/Dockerfile.dockerignore" | while read -r path; do
            path=${path%/}
            find "$path" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' \
                ! -path '*.egg-info/*'
        done | LC_ALL=C sort -u
    )
}

inputs_hash() { # name build-args...
    local name=$1
    shift
    {
        printf 'engine %s\nbase %s\n' "$engine" "$base_id"
        printf 'arg %s\n' "$@"
        if [[ "$name" == comfyui ]]; then
            printf 'comfyui-source %s\n' "$comfyui_digest"
        fi
        cd "$root"
        sha256sum "images/$name/Dockerfile" "images/$name/Dockerfile.dockerignore"
        context_files "$name" | tr '\n' '\0' | xargs -0 -r sha256sum
    } | sha256_of
}

# -- build -------------------------------------------------------------------------------------
platform=${PLATFORM:-linux/amd64}
stale=0
for target in "${targets[@]}"; do
    args=(--build-arg "BASE_IMAGE=$base_image" --build-arg "IMAGE_VERSION=$IMAGE_VERSION")
    contexts=()
    case "$target" in
        comfyui)
            tag=$COMFYUI_IMAGE
            if [[ "$NUNCHAKU" == true ]]; then
                tag=$tag-nunchaku
            fi
            prepare_comfyui_source
            for name in COMFYUI_VERSION TORCH_VERSION NUNCHAKU NUNCHAKU_NODES_REPO \
                NUNCHAKU_NODES_VERSION NUNCHAKU_WHEEL_URL; do
                args+=(--build-arg "$name=${!name}")
            done
            args+=(--build-arg "COMFYUI_SHA256=$comfyui_digest")
            contexts=(--build-context "comfyui-source=$comfyui_source")
            ;;
        controller)
            tag=$CONTROLLER_IMAGE
            ;;
        devpod)
            tag=$DEVPOD_IMAGE
            args+=(--build-arg "HUGGINGFACE_HUB_VERSION=$HUGGINGFACE_HUB_VERSION")
            ;;
    esac
    hash=$(inputs_hash "$target" "${args[@]}")
    label=io.serverless-comfyui.inputs
    if [[ "$dry" != 1 && "$(image_label "$tag" "$label")" == "$hash" ]]; then
        log "$target: cached ($tag, inputs ${hash:0:12})"
        mkdir -p "$cache/stamps"
        [[ -f "$cache/stamps/$target-$hash" ]] || image_id "$tag" >"$cache/stamps/$target-$hash"
    elif [[ "$check" == 1 ]]; then
        echo "stale: $target ($tag) is not built from the current inputs (${hash:0:12})" >&2
        stale=1
        continue
    else
        log "$target: building $tag (inputs ${hash:0:12}, base $base_image)"
        started=$SECONDS
        common=(--file "$here/$target/Dockerfile" --tag "$tag" --label "$label=$hash"
            "${args[@]}" "${contexts[@]}")
        if [[ "$engine" == docker ]]; then
            output=--load
            if [[ "${PUSH:-0}" == 1 ]]; then
                output=--push
            fi
            run docker buildx build --platform "$platform" "$output" "${common[@]}" "$root"
        else
            # Same Dockerfile and .dockerignore; pip in the build reaches PyPI through the host's
            # network and trusts the host's CA bundle (mounted read-only during RUN steps).
            run "${cli[@]}" build --pull=never --layers --network host \
                --ignorefile "$here/$target/Dockerfile.dockerignore" \
                --volume "$ca_bundle:$ca_bundle:ro" "${common[@]}" "$root"
        fi
        if [[ "$dry" != 1 ]]; then
            mkdir -p "$cache/stamps"
            image_id "$tag" >"$cache/stamps/$target-$hash"
            log "$target: built in $((SECONDS - started))s"
        fi
    fi
    if [[ "$dry" != 1 ]]; then
        for stamp in "$cache/stamps/$target"-*; do
            [[ -f "$stamp" && "$stamp" != "$cache/stamps/$target-$hash" ]] || continue
            remove_earlier_build "$target" "${stamp##*/"$target"-}"
            rm -f "$stamp"
        done
    fi
    if [[ -n "$save_dir" ]]; then
        archive=$save_dir/$target.oci.tar
        if [[ "$dry" != 1 && -f "$archive" && "$(cat "$archive.inputs" 2>/dev/null)" == "$hash" ]]
        then
            log "$target: $archive cached"
        else
            [[ "$dry" == 1 ]] || mkdir -p "$save_dir"
            [[ "$dry" == 1 ]] || rm -f "$archive" "$archive.inputs" "$archive.partial"
            if [[ "$engine" == docker ]]; then
                run docker save --output "$archive.partial" "$tag"
            else
                run "${cli[@]}" save --format oci-archive --output "$archive.partial" "$tag"
            fi
            if [[ "$dry" != 1 ]]; then
                mv "$archive.partial" "$archive"
                printf '%s\n' "$hash" >"$archive.inputs"
                log "$target: saved $archive"
            fi
        fi
    fi
done
exit "$stale"
