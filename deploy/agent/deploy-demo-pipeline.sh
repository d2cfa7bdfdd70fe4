#!/bin/sh
# Creates the demo pipeline (demo-pipeline.yaml beside this script) in the demo environment
# and deploys it to every node there, once: a second run finds it and leaves it as it is.
# Needs an admin token; without one it says how to run it and exits without error.
#
#   FLOTILLA_URL                 api base URL (default http://localhost:8000)
#   FLOTILLA_ADMIN_TOKEN         an operator token with the admin (or editor) role
#   FLOTILLA_DEMO_ENVIRONMENT    environment name (default demo)
#   FLOTILLA_DEMO_PIPELINE       pipeline name (default demo-logs)
set -eu

url="${FLOTILLA_URL:-http://localhost:8000}"
environment="${FLOTILLA_DEMO_ENVIRONMENT:-demo}"
name="${FLOTILLA_DEMO_PIPELINE:-demo-logs}"
config="$(dirname "$0")/demo-pipeline.yaml"

if [ -z "${FLOTILLA_ADMIN_TOKEN:-}" ]; then
  echo "demo pipeline: FLOTILLA_ADMIN_TOKEN is not set, so no pipeline was deployed."
  echo "Take the admin token the api printed (docker compose logs api | grep 'First admin token')"
  echo "and run: FLOTILLA_ADMIN_TOKEN=<token> docker compose --profile demo run --rm demo-pipeline"
  exit 0
fi

# call METHOD PATH [BODY]: the response body; on any status but 2xx, says what the api
# answered and fails.
call() {
  if [ $# -ge 3 ]; then
    set -- "$1" "$2" --data-binary "$3"
  fi
  method=$1 path=$2
  shift 2
  if ! out=$(curl -sS --fail-with-body --max-time 10 -X "$method" \
      -H "Authorization: Bearer $FLOTILLA_ADMIN_TOKEN" -H "Content-Type: application/json" \
      "$@" "$url$path"); then
    echo "demo pipeline: $method $path failed: $out" >&2
    return 1
  fi
  printf '%s\n' "$out"
}

# The id of an object whose keys are all scalars ("environmentId" is not "id").
id_of() {
  sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -n 1
}

# The environment's id: environments are flat objects, one per line once split at '}'.
environments=$(call GET /api/v1/environments)
environment_id=$(printf '%s\n' "$environments" | tr '}' '\n' \
  | grep "\"name\":\"$environment\"" | id_of)
if [ -z "$environment_id" ]; then
  echo "demo pipeline: no environment named $environment" >&2
  exit 1
fi

pipelines=$(call GET "/api/v1/pipelines?environmentId=$environment_id")
if printf '%s\n' "$pipelines" | grep -q "\"name\":\"$name\""; then
  echo "demo pipeline: $name exists in $environment; left as it is"
  exit 0
fi

# The YAML as one JSON string: backslashes and quotes escaped, lines joined with \n.
yaml=$(sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/\t/\\t/g' "$config" | awk '{ printf "%s\\n", $0 }')
body="{\"environmentId\":\"$environment_id\",\"name\":\"$name\",\"configYaml\":\"$yaml\"}"
created=$(call POST /api/v1/pipelines "$body")
pipeline_id=$(printf '%s\n' "$created" | sed 's/"nodeSelector":{[^}]*}//' | id_of)
if [ -z "$pipeline_id" ]; then
  echo "demo pipeline: the api did not return the new pipeline's id" >&2
  exit 1
fi
call POST "/api/v1/pipelines/$pipeline_id/deploy" '{}' >/dev/null
echo "demo pipeline: $name created and deployed to $environment ($pipeline_id)"
