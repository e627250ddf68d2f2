#!/usr/bin/env bash
# Smoke test of the Docker deployment: build the CPU image, start `asr-cpu` from docker-compose.yml, wait for
# its health check, transcribe through it with the host's `asr` CLI, check token auth, stop it gracefully.
#
#   bash scripts/docker_smoke.sh                   (needs a Docker engine, compose v2 or docker-compose v1,
#                                                   and `asr` on PATH or in .venv; espeak-ng for the audio)
#   ASR_BASE_IMAGE=mirror/python:3.11-slim ASR_TORCH_INDEX=https://pypi.org/simple bash scripts/docker_smoke.sh
#                                                  (a registry mirror / an index the build can reach)
# ASR_CPU_LIMIT caps the container's cores (default: the host's, at most 4).
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
ASR=${ASR:-$(command -v asr || echo .venv/bin/asr)}
export ASR_CPU_LIMIT=${ASR_CPU_LIMIT:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
export ASR_TOKEN=smoke-$RANDOM
PORT=50052 METRICS=9091
WORK=$(mktemp -d)
cleanup() { "${COMPOSE[@]}" --profile cpu down >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }

step "build (las-asr:cpu)"
start=$(date +%s)
"${COMPOSE[@]}" --profile cpu build asr-cpu >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
echo "built in $(( $(date +%s) - start )) s; image $(docker image inspect las-asr:cpu --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"

step "up, wait for the health check"
"${COMPOSE[@]}" --profile cpu up -d asr-cpu
cid=$("${COMPOSE[@]}" --profile cpu ps -q asr-cpu)
start=$(date +%s)
until [ "$(docker inspect --format '{{.State.Health.Status}}' "$cid")" = healthy ]; do
  [ $(( $(date +%s) - start )) -gt 180 ] && { docker logs "$cid" | tail -20; echo "not healthy after 180 s"; exit 1; }
  sleep 2
done
echo "healthy after $(( $(date +%s) - start )) s"

step "transcribe through the container"
espeak-ng -w "$WORK/speech.wav" "we call it bear"
if "$ASR" transcribe --server "localhost:$PORT" --token "" "$WORK/speech.wav" 2>"$WORK/err"; then
  echo "a request without the token was served"; exit 1
fi
grep -q "bearer token" "$WORK/err" && echo "no token: refused ($(tail -1 "$WORK/err"))"
text=$("$ASR" transcribe --server "localhost:$PORT" "$WORK/speech.wav")
echo "with the token: '$text'"
[ -n "$text" ]
"$ASR" models --server "localhost:$PORT"
curl -sf "localhost:$METRICS/metrics" | grep -E '^asr_requests_total' 

step "graceful stop"
start=$(date +%s)
"${COMPOSE[@]}" --profile cpu stop asr-cpu
code=$(docker inspect --format '{{.State.ExitCode}}' "$cid")
echo "stopped in $(( $(date +%s) - start )) s, exit code $code; last log: $(docker logs "$cid" 2>&1 | tail -1)"
[ "$code" = 0 ]
echo; echo "docker smoke test passed"
