#!/usr/bin/env bash
# Build the worker image, tag it `latest` and an immutable build tag (UTC date-time, git commit,
# `-dirty` for uncommitted changes: 20261127-142501-4f846bc), and push both to Docker Hub.
# Run `./build-and-push.sh --help` for the options; `--dry-run` prints every command instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER_USER="${DOCKER_USER:-visgateai}"
IMAGE_NAME="${IMAGE_NAME:-inference}"
REGISTRY="${DOCKER_REGISTRY:-docker.io}"
ENV_FILE="${ENV_FILE:-$ROOT/.env.local}"
PLATFORM="${PLATFORM:-linux/amd64}"

usage() {
  cat <<EOF
Usage: ./build-and-push.sh [options]

Builds the image from ./Dockerfile, tags it ${DOCKER_USER}/${IMAGE_NAME}:latest and with a
build tag that no later push reuses, ${DOCKER_USER}/${IMAGE_NAME}:YYYYMMDD-HHMMSS-COMMIT (UTC
date-time and git short commit, then -dirty when tracked files have uncommitted changes), and
pushes both tags. --xformers and --bake-model add a suffix to both (latest-xformers, ...).

Options:
  --dry-run            print every command (login, build, tag, push) without running any;
                       needs neither docker nor a Docker engine
  --no-push            build and tag only (no login, no push)
  --xformers           build with INSTALL_XFORMERS=1 (xformers matched to the image's torch)
  --bake-model ID      bake model ID's weights into the image (BAKE_MODEL); a gated or private
                       model needs HF_TOKEN in the environment, passed as a BuildKit secret
  --build-arg K=V      pass a further build argument to docker build (repeatable); not
                       BAKE_MODEL or INSTALL_XFORMERS: use --bake-model and --xformers, which
                       also give the image its own tags
  -h, --help           show this help

Environment:
  DOCKER_USER          Docker Hub user or organisation (default: visgateai)
  IMAGE_NAME           image name (default: inference)
  DOCKER_REGISTRY      registry to log in to (default: docker.io)
  DOCKER_HUB_PAT       Docker Hub access token; else read from ENV_FILE when present.
                       Without one, the push uses the credentials of an earlier 'docker login'.
  ENV_FILE             file holding DOCKER_HUB_PAT=... (default: .env.local next to this script)
  PLATFORM             target platform (default: linux/amd64, what Runpod runs)
  HF_TOKEN             token for --bake-model (never printed; sent as --secret id=hf_token)
EOF
}

die() {
  echo "build-and-push.sh: error: $*" >&2
  exit 1
}

DRY_RUN=0
PUSH=1
BUILD_ARGS=()
BAKE=0
# Tag suffix for non-default builds: a baked or xformers image must never become plain `latest`,
# where an endpoint that forgot HF_MODEL_ID would silently serve the baked model.
VARIANT=""

while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --no-push) PUSH=0 ;;
    --xformers) BUILD_ARGS+=(--build-arg INSTALL_XFORMERS=1); VARIANT+="-xformers" ;;
    --bake-model)
      [ "$#" -ge 2 ] && [ -n "$2" ] || die "--bake-model needs a model id"
      BUILD_ARGS+=(--build-arg "BAKE_MODEL=$2")
      BAKE=1
      model_tag="${2##*/}"; model_tag="${model_tag,,}"; model_tag="${model_tag//[^a-z0-9_.-]/-}"
      VARIANT+="-${model_tag}"
      shift ;;
    --build-arg)
      [ "$#" -ge 2 ] && [[ "$2" == *=* ]] || die "--build-arg needs KEY=VALUE"
      case "${2%%=*}" in
        BAKE_MODEL) die "--build-arg BAKE_MODEL=...: use --bake-model ID, which tags the image apart (:latest-<model>) instead of replacing :latest" ;;
        INSTALL_XFORMERS) die "--build-arg INSTALL_XFORMERS=...: use --xformers, which tags the image apart (:latest-xformers) instead of replacing :latest" ;;
      esac
      BUILD_ARGS+=(--build-arg "$2")
      shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
  shift
done

IMAGE="${DOCKER_USER}/${IMAGE_NAME}"
LATEST_TAG="latest${VARIANT}"
# The build tag names when and from what the image was built, so a second push never overwrites
# a tag an endpoint already runs: UTC date-time, git short commit, `-dirty` when tracked files
# differ from that commit (untracked files are not counted, as with `git describe --dirty`).
command -v git >/dev/null 2>&1 || die "git not found: the build tag names the commit the image is built from"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)" \
  || die "$ROOT is not a git checkout with a commit: the build tag names the commit the image is built from"
DIRTY=""
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  DIRTY="-dirty"
fi
DATE_TAG="$(date -u +%Y%m%d-%H%M%S)-${COMMIT}${DIRTY}${VARIANT}"

# Print a command (each word single-quoted when it needs to be), then run it unless dry run.
run() {
  local word line="+"
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      line+=" $word"
    else
      line+=" '${word//\'/\'\\\'\'}'"
    fi
  done
  printf '%s\n' "$line"
  if [ "$DRY_RUN" -eq 0 ]; then
    "$@"
  fi
}

# DOCKER_HUB_PAT from the environment, else from ENV_FILE. The file is read, not sourced: it may
# hold other settings, and nothing in it is executed. The value is never printed.
read_pat() {
  if [ -n "${DOCKER_HUB_PAT:-}" ]; then
    printf '%s' "$DOCKER_HUB_PAT"
    return 0
  fi
  [ -f "$ENV_FILE" ] || return 0
  local line value
  line="$(grep -E '^[[:space:]]*(export[[:space:]]+)?DOCKER_HUB_PAT=' "$ENV_FILE" | tail -n 1 || true)"
  value="${line#*=}"
  value="${value%$'\r'}"
  value="${value%\"}"; value="${value#\"}"
  value="${value%\'}"; value="${value#\'}"
  printf '%s' "$value"
}

if [ "$DRY_RUN" -eq 0 ]; then
  command -v docker >/dev/null 2>&1 \
    || die "docker not found: install Docker (https://docs.docker.com/get-docker/), or use --dry-run to see the commands"
  docker info >/dev/null 2>&1 \
    || die "cannot reach a Docker engine (is the daemon running, and may this user use it?)"
fi

if [ "$PUSH" -eq 1 ]; then
  PAT="$(read_pat)"
  if [ -n "$PAT" ]; then
    echo "+ docker login -u ${DOCKER_USER} --password-stdin ${REGISTRY}  # token from DOCKER_HUB_PAT"
    if [ "$DRY_RUN" -eq 0 ]; then
      printf '%s' "$PAT" | docker login -u "$DOCKER_USER" --password-stdin "$REGISTRY" >/dev/null \
        || die "docker login failed for ${DOCKER_USER} at ${REGISTRY}: check DOCKER_HUB_PAT (in ${ENV_FILE} or the environment) and DOCKER_USER"
    fi
  else
    echo "# no DOCKER_HUB_PAT (environment or ${ENV_FILE}): pushing with the credentials of an earlier 'docker login'"
  fi
  unset PAT
fi

SECRET_ARGS=()
if [ "$BAKE" -eq 1 ] && [ -n "${HF_TOKEN:-}" ]; then
  SECRET_ARGS=(--secret "id=hf_token,env=HF_TOKEN")
elif [ "$BAKE" -eq 1 ]; then
  echo "# no HF_TOKEN: baking without a token (fine for public models only)"
fi

run env DOCKER_BUILDKIT=1 docker build --platform "$PLATFORM" \
  ${BUILD_ARGS[@]+"${BUILD_ARGS[@]}"} ${SECRET_ARGS[@]+"${SECRET_ARGS[@]}"} \
  -t "${IMAGE}:${LATEST_TAG}" "$ROOT"
run docker tag "${IMAGE}:${LATEST_TAG}" "${IMAGE}:${DATE_TAG}"

if [ "$DRY_RUN" -eq 1 ]; then
  if [ "$PUSH" -eq 1 ]; then
    run docker push "${IMAGE}:${LATEST_TAG}"
    run docker push "${IMAGE}:${DATE_TAG}"
  fi
  echo "dry run: nothing was run"
elif [ "$PUSH" -eq 1 ]; then
  run docker push "${IMAGE}:${LATEST_TAG}" \
    || die "push of ${IMAGE}:${LATEST_TAG} failed: is ${DOCKER_USER} logged in to ${REGISTRY} with push rights?"
  run docker push "${IMAGE}:${DATE_TAG}" || die "push of ${IMAGE}:${DATE_TAG} failed"
  echo "pushed ${IMAGE}:${LATEST_TAG} and ${IMAGE}:${DATE_TAG}"
else
  echo "built ${IMAGE}:${LATEST_TAG} and ${IMAGE}:${DATE_TAG} (not pushed)"
fi
