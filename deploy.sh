#!/usr/bin/env bash
# From a Google Cloud project to a ComfyUI endpoint on Cloud Run with one NVIDIA L4.
#
#   ./deploy.sh [options] PROJECT_ID REGION TAG
#
# Safe to run again: it enables the APIs, creates only what is missing (Artifact Registry
# repository, service accounts, least-privilege IAM, secrets, buckets, Cloud Tasks queues),
# builds the image with Cloud Build, deploys the service and prints its URL with a curl line.
# Run with --help for the options; see docs/operators.md for quotas, secrets and costs.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly ROOT

usage() {
    cat <<'EOF'
Usage: ./deploy.sh [options] PROJECT_ID REGION TAG

Options (each also read from the environment variable in brackets):
  --service NAME            Cloud Run service name [SERVICE] (comfyui)
  --model-type TYPE         models baked into the image, a type of models.txt or base [MODEL_TYPE] (flux1-dev-fp8:
                            FLUX.1 dev, non-commercial licence; flux1-schnell is Apache-2.0; see
                            docs/operators.md, "Model licences")
  --min-instances N         instances kept warm; each bills its GPU all the time [MIN_INSTANCES] (0)
  --max-instances N         most instances (each one L4 of quota) [MAX_INSTANCES] (3)
  --concurrency N           requests one instance takes at once: 2 is one running on the GPU and the
                            next queued behind it; more only wait in the instance [CONCURRENCY] (2)
  --timeout SECONDS         request timeout, at most 3600 [TIMEOUT] (3600)
  --cpu N / --memory SIZE   per instance; with an L4, 4-8 CPU and 16Gi-32Gi [CPU] (8) [MEMORY] (32Gi)
  --bucket NAME             bucket for job inputs and outputs [BUCKET] (PROJECT_ID-SERVICE)
  --retention-days N        days before inputs/ and outputs/ objects are deleted [RETENTION_DAYS] (7)
  --queue-prefix PREFIX     Cloud Tasks queues PREFIX-high/-normal/-low [QUEUE_PREFIX] (SERVICE)
  --webhook-secret NAME     Secret Manager secret with the webhook signing key [WEBHOOK_SECRET_NAME]
                            (SERVICE-webhook-secret); created when missing from WEBHOOK_SECRET, or random
  --hf-secret NAME          Secret Manager secret with the Hugging Face token [HF_SECRET] (hf-token);
                            created when missing from HF_TOKEN (blank when the model type is not gated)
  --repository NAME         Artifact Registry repository [REPOSITORY] (comfyui)
  --models-mount gs://B/P   runtime models: mount bucket B read-only and link files from P; nothing
                            is copied, nothing counts against memory (preferred) [MODELS_MOUNT].
                            Without it, --models-source or --bake-models, a model type whose files
                            exceed 10 GB is mounted from gs://PROJECT_ID-SERVICE-models, which
                            deploy.sh fills with a models-only Cloud Build (docs/operators.md)
  --models-source gs://B/P  runtime models: download MODEL_TYPE's files from gs://B/P at each start
                            into the in-memory disk; refused when they do not fit --memory with room
                            to run or cannot arrive within the startup probe's window [MODELS_SOURCE]
  --model-cache-bucket NAME a read-write Cloud Storage volume backs the cache of models named by URL:
                            each verified download is copied into bucket NAME (created in REGION when
                            missing), and a new instance links it from there instead of downloading it
                            again [MODEL_CACHE_BUCKET] (off; docs/models-by-url.md)
  --bake-models             bake the models into the image even above 10 GB (Google advises under
                            10 GB in a Cloud Run GPU image) [BAKE_MODELS=true]
  --keep-images N           Artifact Registry keeps the N newest images; untagged ones go after 7
                            days, others after 30 [KEEP_IMAGES] (5)
  --gpu-zonal-redundancy    reserve failover capacity (costs more, needs its own quota) [GPU_ZONAL_REDUNDANCY=true]
  --custom-nodes "URL[@REF] ..."   extra custom nodes baked into the image [CUSTOM_NODES]
  --snapshot FILE           a ComfyUI-Manager snapshot (JSON): its git nodes are baked into the image
                            at the snapshot's commits, beside deploy/custom_nodes.txt; replaces
                            deploy/snapshot.json for this build [SNAPSHOT]
  --civitai                 workflows may name Civitai models (civitai://ID; docs/models-by-url.md) [CIVITAI=true]
  --civitai-secret NAME     as --civitai, and the worker sends the Civitai API token in Secret Manager secret
                            NAME; created from CIVITAI_TOKEN when missing [CIVITAI_SECRET]
  --skip-build              deploy an image already pushed under TAG [SKIP_BUILD=true]
  --allow-region            deploy to a REGION off the list of Cloud Run L4 regions: asia-south1 (L4 by
                            invitation) or one added since [ALLOW_REGION=true]
  --metrics                 add Managed Service for Prometheus' collector as a sidecar: /metrics lands
                            in Cloud Monitoring [METRICS_SIDECAR=true] (image: GMP_SIDECAR_IMAGE)
  --public                  the api role open to the internet, every caller with an API key from the
                            Secret Manager secret SERVICE-api-keys (docs/security.md, "Access")
  --dry-run                 print every command without running any [DRY_RUN=true]
  -h, --help                this text
EOF
}

die() {
    echo "deploy.sh: $*" >&2
    exit 2
}

# ---------------------------------------------------------------- options
SERVICE=${SERVICE:-comfyui}
MODEL_TYPE=${MODEL_TYPE:-flux1-dev-fp8}
MIN_INSTANCES=${MIN_INSTANCES:-0}
MAX_INSTANCES=${MAX_INSTANCES:-3}
CONCURRENCY=${CONCURRENCY:-2}
TIMEOUT=${TIMEOUT:-3600}
CPU=${CPU:-8}
MEMORY=${MEMORY:-32Gi}
BUCKET=${BUCKET:-}
RETENTION_DAYS=${RETENTION_DAYS:-7}
QUEUE_PREFIX=${QUEUE_PREFIX:-}
WEBHOOK_SECRET_NAME=${WEBHOOK_SECRET_NAME:-}
HF_SECRET=${HF_SECRET:-hf-token}
REPOSITORY=${REPOSITORY:-comfyui}
MODELS_SOURCE=${MODELS_SOURCE:-}
MODELS_MOUNT=${MODELS_MOUNT:-}
MODEL_CACHE_BUCKET=${MODEL_CACHE_BUCKET:-}
BAKE_MODELS=${BAKE_MODELS:-false}
GPU_ZONAL_REDUNDANCY=${GPU_ZONAL_REDUNDANCY:-false}
CUSTOM_NODES=${CUSTOM_NODES:-}
SNAPSHOT=${SNAPSHOT:-}
CIVITAI=${CIVITAI:-false}
CIVITAI_SECRET=${CIVITAI_SECRET:-}
KEEP_IMAGES=${KEEP_IMAGES:-5}
SKIP_BUILD=${SKIP_BUILD:-false}
DRY_RUN=${DRY_RUN:-false}
METRICS_SIDECAR=${METRICS_SIDECAR:-false}
ALLOW_REGION=${ALLOW_REGION:-false}
GMP_SIDECAR_IMAGE=${GMP_SIDECAR_IMAGE:-us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.2.0}

positional=()
while [[ $# -gt 0 ]]; do
    case $1 in
        -h | --help) usage; exit 0 ;;
        --dry-run) DRY_RUN=true; shift; continue ;;
        --skip-build) SKIP_BUILD=true; shift; continue ;;
        --metrics) METRICS_SIDECAR=true; shift; continue ;;
        --allow-region) ALLOW_REGION=true; shift; continue ;;
        --public) PUBLIC_API=true; shift; continue ;;
        --bake-models) BAKE_MODELS=true; shift; continue ;;
        --civitai) CIVITAI=true; shift; continue ;;
        --gpu-zonal-redundancy) GPU_ZONAL_REDUNDANCY=true; shift; continue ;;
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    esac
    case $1 in
        --service | --model-type | --min-instances | --max-instances | --concurrency | --timeout | \
            --cpu | --memory | --bucket | --retention-days | --queue-prefix | --webhook-secret | \
            --hf-secret | --repository | --models-source | --models-mount | --model-cache-bucket | --custom-nodes | --snapshot | --civitai-secret | --keep-images)
            [[ $# -ge 2 ]] || die "$1 needs a value"
            case $1 in
                --service) SERVICE=$2 ;;
                --model-type) MODEL_TYPE=$2 ;;
                --min-instances) MIN_INSTANCES=$2 ;;
                --max-instances) MAX_INSTANCES=$2 ;;
                --concurrency) CONCURRENCY=$2 ;;
                --timeout) TIMEOUT=$2 ;;
                --cpu) CPU=$2 ;;
                --memory) MEMORY=$2 ;;
                --bucket) BUCKET=$2 ;;
                --retention-days) RETENTION_DAYS=$2 ;;
                --queue-prefix) QUEUE_PREFIX=$2 ;;
                --webhook-secret) WEBHOOK_SECRET_NAME=$2 ;;
                --hf-secret) HF_SECRET=$2 ;;
                --repository) REPOSITORY=$2 ;;
                --models-source) MODELS_SOURCE=$2 ;;
                --models-mount) MODELS_MOUNT=$2 ;;
                --model-cache-bucket) MODEL_CACHE_BUCKET=$2 ;;
                --custom-nodes) CUSTOM_NODES=$2 ;;
                --snapshot) SNAPSHOT=$2 ;;
                --civitai-secret) CIVITAI_SECRET=$2 ;;
                --keep-images) KEEP_IMAGES=$2 ;;
            esac
            shift 2
            ;;
        -*) usage >&2; die "unknown option $1" ;;
        *) positional+=("$1"); shift ;;
    esac
done
if [[ ${#positional[@]} -ne 3 ]]; then
    usage >&2
    die "expected PROJECT_ID REGION TAG, got ${#positional[@]} argument(s)"
fi
PROJECT=${positional[0]}
REGION=${positional[1]}
TAG=${positional[2]}
QUEUE_PREFIX=${QUEUE_PREFIX:-$SERVICE}
WEBHOOK_SECRET_NAME=${WEBHOOK_SECRET_NAME:-$SERVICE-webhook-secret}
BUCKET=${BUCKET:-$PROJECT-$SERVICE}
BUILD_BUCKET=$PROJECT-$SERVICE-build

# ---------------------------------------------------------------- checks
[[ $PROJECT =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] || die "bad PROJECT_ID '$PROJECT'"
[[ $REGION =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "bad REGION '$REGION'"
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "bad TAG '$TAG' (a Docker tag)"
[[ $SERVICE =~ ^[a-z][a-z0-9-]{0,22}[a-z0-9]$ ]] ||
    die "bad --service '$SERVICE' (lowercase letters, digits, '-'; at most 24 characters)"
for pair in "min-instances:$MIN_INSTANCES" "max-instances:$MAX_INSTANCES" "concurrency:$CONCURRENCY" \
    "timeout:$TIMEOUT" "cpu:$CPU" "retention-days:$RETENTION_DAYS" "keep-images:$KEEP_IMAGES"; do
    [[ ${pair#*:} =~ ^[0-9]+$ ]] || die "--${pair%%:*} must be a whole number, got '${pair#*:}'"
done
((MAX_INSTANCES >= 1)) || die "--max-instances must be at least 1"
((MIN_INSTANCES <= MAX_INSTANCES)) || die "--min-instances ($MIN_INSTANCES) exceeds --max-instances ($MAX_INSTANCES)"
((CONCURRENCY >= 1 && CONCURRENCY <= 1000)) || die "--concurrency must be 1..1000"
((TIMEOUT >= 1 && TIMEOUT <= 3600)) || die "--timeout must be 1..3600 seconds"
# Cloud Run's limits for an instance with one L4 GPU.
((CPU >= 4 && CPU <= 8)) || die "--cpu must be 4..8 with an L4 GPU, got $CPU"
((KEEP_IMAGES >= 1)) || die "--keep-images must be at least 1"
((RETENTION_DAYS >= 1)) || die "--retention-days must be at least 1"
[[ $MEMORY =~ ^[0-9]+Gi$ ]] || die "--memory must be like 32Gi, got '$MEMORY'"
((${MEMORY%Gi} >= 16 && ${MEMORY%Gi} <= 32)) || die "--memory must be 16Gi..32Gi with an L4 GPU, got $MEMORY"
[[ $BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || die "bad --bucket '$BUCKET'"
[[ $QUEUE_PREFIX =~ ^[A-Za-z0-9-]{1,90}$ ]] || die "bad --queue-prefix '$QUEUE_PREFIX'"
for flag in "$GPU_ZONAL_REDUNDANCY" "$SKIP_BUILD" "$DRY_RUN" "$METRICS_SIDECAR" "$ALLOW_REGION" "$BAKE_MODELS" "$CIVITAI"; do
    [[ $flag == true || $flag == false ]] || die "boolean settings take true or false, got '$flag'"
done
# Cloud Run's regions with the NVIDIA L4 (its GPU page); asia-south1 has it by invitation only, so
# it takes --allow-region, as does a region added since. Checked before anything is created or
# built: elsewhere the deploy would fail after a build of tens of GB.
L4_REGIONS="us-central1 us-east4 europe-west1 europe-west4 asia-southeast1"
if [[ " $L4_REGIONS " != *" $REGION "* ]]; then
    if [[ $ALLOW_REGION != true ]]; then
        invitation=""
        if [[ $REGION == asia-south1 ]]; then
            invitation=" (asia-south1 offers it by invitation: if your project has one, add --allow-region)"
        fi
        die "REGION $REGION has no Cloud Run L4 GPUs$invitation; they are in: $L4_REGIONS. --allow-region deploys there anyway"
    fi
    echo "deploy.sh: warning: $REGION is not on the list of Cloud Run L4 regions ($L4_REGIONS); going on (--allow-region)" >&2
fi

# Model types come from models.txt, the one file that lists models.
mapfile -t KNOWN_TYPES < <(awk '!/^[[:space:]]*(#|$)/ { n = split($1, t, ","); for (i = 1; i <= n; i++) print t[i] }' \
    "$ROOT/models.txt" | sort -u)
KNOWN_TYPES=(base "${KNOWN_TYPES[@]}")
known=" ${KNOWN_TYPES[*]} "
[[ $known == *" $MODEL_TYPE "* ]] || die "unknown --model-type '$MODEL_TYPE'; models.txt knows: ${KNOWN_TYPES[*]}"
# Model types whose files sit in gated Hugging Face repositories (see models.txt).
GATED_TYPES=" flux1-dev sd3 "

if [[ -n $CIVITAI_SECRET ]]; then
    [[ $CIVITAI_SECRET =~ ^[A-Za-z0-9_-]{1,255}$ ]] || die "bad --civitai-secret '$CIVITAI_SECRET' (a Secret Manager secret name)"
    CIVITAI=true
fi
# A ComfyUI-Manager snapshot is checked here, by the parser the build runs, not after an upload.
if [[ -n $SNAPSHOT ]]; then
    [[ $SKIP_BUILD != true ]] || die "--snapshot goes into the image's build; --skip-build builds nothing"
    [[ -f $SNAPSHOT ]] || die "--snapshot: no such file '$SNAPSHOT'"
    if command -v python3 >/dev/null; then
        python3 "$ROOT/deploy/comfyui_snapshot.py" --check "$SNAPSHOT" >&2 || die "--snapshot: '$SNAPSHOT' is not a usable ComfyUI-Manager snapshot"
    fi
fi

if [[ -n $MODELS_SOURCE && -n $MODELS_MOUNT ]]; then
    die "choose one of --models-source and --models-mount"
fi
if [[ $BAKE_MODELS == true && -n $MODELS_SOURCE$MODELS_MOUNT ]]; then
    die "--bake-models puts the models in the image: drop --models-source/--models-mount, or --bake-models"
fi
# MODEL_TYPE's files: their bytes (models.txt's SIZE column) and a digest of what lands (URL, DEST,
# SHA256, SIZE of each line), which names the model set in the models bucket.
model_lines() {
    awk -v type="$MODEL_TYPE" '!/^[[:space:]]*(#|$)/ {
        n = split($1, t, ","); for (i = 1; i <= n; i++) if (t[i] == type) print $2, $3, $4, $5 }' "$ROOT/models.txt"
}
model_bytes=$(model_lines | awk '{ total += $4 } END { printf "%.0f", total }')
model_gb=$(awk -v b="$model_bytes" 'BEGIN { printf "%.1f", b / 1e9 }')
# Google advises baking at most 10 GB of models into a Cloud Run GPU image (its GPU best practices,
# docs/operators.md "Cold starts"): a larger model set is by default served from a Cloud Storage
# volume, a models bucket this script owns, fills once per model set and mounts.
BAKE_LIMIT_GB=10
MODELS_BUCKET=$PROJECT-$SERVICE-models
OWN_MODELS=false
if [[ -n $MODELS_MOUNT ]]; then
    models_way="mounted from $MODELS_MOUNT (--models-mount)"
elif [[ -n $MODELS_SOURCE ]]; then
    models_way="downloaded from $MODELS_SOURCE at each start (--models-source)"
elif ((model_bytes == 0)); then
    models_way="none: model type $MODEL_TYPE has no files"
elif ((model_bytes <= BAKE_LIMIT_GB * 1000000000)); then
    models_way="baked into the image: $MODEL_TYPE's files are $model_gb GB, within the $BAKE_LIMIT_GB GB Google advises for a Cloud Run GPU image"
elif [[ $BAKE_MODELS == true ]]; then
    models_way="baked into the image (--bake-models): $MODEL_TYPE's files are $model_gb GB"
    echo "deploy.sh: warning: --bake-models: $MODEL_TYPE's files are $model_gb GB, over the $BAKE_LIMIT_GB GB Google advises baking into a Cloud Run GPU image; expect slower builds and deploys and a copy of the models per image (docs/operators.md, \"Cold starts\")" >&2
else
    OWN_MODELS=true
    [[ $MODELS_BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || die "bad models bucket name '$MODELS_BUCKET'"
    if command -v sha256sum >/dev/null; then
        MODELS_DIGEST=$(model_lines | sha256sum | cut -c1-16)
    else # macOS
        MODELS_DIGEST=$(model_lines | shasum -a 256 | cut -c1-16)
    fi
    # A model set is never changed in place: a new models.txt line makes a new prefix, so running
    # revisions keep reading theirs. The marker is written last: a fill cut short is redone.
    MODELS_MOUNT=gs://$MODELS_BUCKET/$MODEL_TYPE/$MODELS_DIGEST
    MODELS_MARKER=.complete
    models_way="mounted from $MODELS_MOUNT: $MODEL_TYPE's files are $model_gb GB, over the $BAKE_LIMIT_GB GB Google advises baking into a Cloud Run GPU image (--bake-models bakes them anyway)"
fi
RUNTIME_MODELS=""
MOUNT_BUCKET=""
if [[ -n $MODELS_SOURCE ]]; then
    [[ $MODELS_SOURCE =~ ^gs://([a-z0-9][a-z0-9._-]+[a-z0-9])(/.*)?$ ]] || die "--models-source must be gs://BUCKET[/PREFIX]"
    MOUNT_BUCKET=${BASH_REMATCH[1]}
    RUNTIME_MODELS=$MODELS_SOURCE
elif [[ -n $MODELS_MOUNT ]]; then
    [[ $MODELS_MOUNT =~ ^gs://([a-z0-9][a-z0-9._-]+[a-z0-9])(/.*)?$ ]] || die "--models-mount must be gs://BUCKET[/PREFIX]"
    MOUNT_BUCKET=${BASH_REMATCH[1]}
    prefix=${BASH_REMATCH[2]:-}
    prefix=${prefix%/}
    RUNTIME_MODELS=/mnt/models$prefix
fi
# The model cache's store is a bucket of its own: the run account may write there, and nowhere
# near the models set or the job files.
if [[ -n $MODEL_CACHE_BUCKET ]]; then
    [[ $MODEL_CACHE_BUCKET =~ ^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$ ]] || die "bad --model-cache-bucket '$MODEL_CACHE_BUCKET' (a bucket name, without gs://)"
    for other in "$MOUNT_BUCKET" "$MODELS_BUCKET" "$BUCKET" "$BUILD_BUCKET"; do
        [[ $MODEL_CACHE_BUCKET != "$other" ]] || die "--model-cache-bucket must be a bucket of its own, not $other (the run account gets write access to it)"
    done
fi
# Downloaded runtime models land on Cloud Run's in-memory disk: they must fit --memory with room
# left for ComfyUI, PyTorch and the images it makes, and arrive within the startup probe's window
# (STARTUP_WINDOW_S, Cloud Run's most) at a conservative in-region rate, with ComfyUI's own boot
# on top. Larger model types belong on the mount.
RUN_RESERVE_GIB=8
STARTUP_WINDOW_S=240
BOOT_S=60
DOWNLOAD_MB_PER_S=150
if [[ -n $MODELS_SOURCE ]]; then
    model_gib=$(((model_bytes + (1 << 30) - 1) >> 30))
    download_s=$((model_bytes / (DOWNLOAD_MB_PER_S * 1000000)))
    if ((model_gib + RUN_RESERVE_GIB > ${MEMORY%Gi})); then
        die "--models-source: $MODEL_TYPE's files are $model_gib GiB; downloaded, they sit in the instance's in-memory disk and do not fit --memory $MEMORY with ${RUN_RESERVE_GIB} GiB to run. Use --models-mount $MODELS_SOURCE (a Cloud Storage volume: nothing copied, nothing counted against memory)"
    fi
    if ((download_s + BOOT_S > STARTUP_WINDOW_S)); then
        die "--models-source: $MODEL_TYPE's files ($model_gib GiB) need about ${download_s} s to download at ${DOWNLOAD_MB_PER_S} MB/s, past the ${STARTUP_WINDOW_S} s startup window with ComfyUI's boot. Use --models-mount $MODELS_SOURCE"
    fi
fi
# With runtime models the image carries none; MODEL_TYPE still tells the service which to fetch.
BUILD_MODEL_TYPE=$MODEL_TYPE
if [[ -n $RUNTIME_MODELS ]]; then
    BUILD_MODEL_TYPE=base
fi

IMAGE=$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/$SERVICE:$TAG
API_SERVICE=$SERVICE-api
API_IMAGE=$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/$SERVICE-api:$TAG
RUN_SA=$SERVICE-run@$PROJECT.iam.gserviceaccount.com
TASKS_SA=$SERVICE-tasks@$PROJECT.iam.gserviceaccount.com
BUILD_SA=$SERVICE-build@$PROJECT.iam.gserviceaccount.com

# ---------------------------------------------------------------- helpers
show() {
    local out="+" arg
    for arg in "$@"; do
        out+=" $(printf '%q' "$arg")"
    done
    echo "$out" >&2
}

# run CMD...: print, then run (unless --dry-run).
run() {
    show "$@"
    if [[ $DRY_RUN == true ]]; then
        return 0
    fi
    "$@"
}

# exists CMD...: whether a describe command succeeds. Under --dry-run: printed, taken as missing.
exists() {
    show "$@"
    if [[ $DRY_RUN == true ]]; then
        return 1
    fi
    "$@" >/dev/null 2>&1
}

# capture PLACEHOLDER CMD...: the command's output (under --dry-run: PLACEHOLDER).
capture() {
    local placeholder=$1
    shift
    show "$@"
    if [[ $DRY_RUN == true ]]; then
        echo "$placeholder"
        return 0
    fi
    "$@"
}

# run_with_input VALUE CMD...: like run, with VALUE on the command's stdin (never printed).
run_with_input() {
    local value=$1
    shift
    show "$@"
    if [[ $DRY_RUN == true ]]; then
        return 0
    fi
    printf '%s' "$value" | "$@"
}

# retry CMD...: IAM changes on an account created seconds ago may need a moment to take.
# RETRY_DELAY_S (default 5) scales the waits; RETRY_ATTEMPTS (default 6) bounds the tries.
retry() {
    local attempt=1 delay=${RETRY_DELAY_S:-5}
    until run "$@"; do
        if [[ $DRY_RUN == true ]] || ((attempt >= ${RETRY_ATTEMPTS:-6})); then
            return 1
        fi
        echo "deploy.sh: retrying in $((attempt * delay))s" >&2
        sleep $((attempt * delay))
        attempt=$((attempt + 1))
    done
}

step() {
    echo "==> $*" >&2
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "deploy.sh: models: $models_way" >&2

# ---------------------------------------------------------------- 1. APIs
step "Enabling APIs in $PROJECT"
run gcloud services enable run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com \
    cloudtasks.googleapis.com secretmanager.googleapis.com storage.googleapis.com iam.googleapis.com \
    iamcredentials.googleapis.com --project="$PROJECT"
PROJECT_NUMBER=$(capture PROJECT_NUMBER gcloud projects describe "$PROJECT" --format="value(projectNumber)")
# Cloud Run's deterministic URL: the task target and the OIDC audience the service checks.
SERVICE_URL=https://$SERVICE-$PROJECT_NUMBER.$REGION.run.app
API_URL=https://$API_SERVICE-$PROJECT_NUMBER.$REGION.run.app

# ---------------------------------------------------------------- 2. Artifact Registry
step "Artifact Registry repository $REPOSITORY"
if ! exists gcloud artifacts repositories describe "$REPOSITORY" --location="$REGION" --project="$PROJECT"; then
    run gcloud artifacts repositories create "$REPOSITORY" --repository-format=docker --location="$REGION" \
        --description="ComfyUI service images" --project="$PROJECT"
fi
# Images run to tens of GB: keep the newest KEEP_IMAGES and the build cache, drop the rest.
cat >"$TMP/cleanup-policy.json" <<EOF
[
  {"name": "keep-newest", "action": {"type": "Keep"}, "mostRecentVersions": {"keepCount": $KEEP_IMAGES}},
  {"name": "keep-build-cache", "action": {"type": "Keep"}, "condition": {"tagState": "tagged", "tagPrefixes": ["buildcache"]}},
  {"name": "delete-untagged", "action": {"type": "Delete"}, "condition": {"tagState": "untagged", "olderThan": "7d"}},
  {"name": "delete-old", "action": {"type": "Delete"}, "condition": {"tagState": "any", "olderThan": "30d"}}
]
EOF
run gcloud artifacts repositories set-cleanup-policies "$REPOSITORY" --location="$REGION" \
    --policy="$TMP/cleanup-policy.json" --no-dry-run --project="$PROJECT"

# ---------------------------------------------------------------- 3. service accounts
step "Service accounts"
# Set when this run created an account: its grants below are seconds old.
FRESH_IAM=false
ensure_sa() {
    local name=$1 description=$2
    if ! exists gcloud iam service-accounts describe "$name@$PROJECT.iam.gserviceaccount.com" --project="$PROJECT"; then
        run gcloud iam service-accounts create "$name" --display-name="$description" --project="$PROJECT"
        FRESH_IAM=true
    fi
}
ensure_sa "$SERVICE-run" "$SERVICE Cloud Run runtime"
ensure_sa "$SERVICE-tasks" "$SERVICE Cloud Tasks invoker"
ensure_sa "$SERVICE-build" "$SERVICE Cloud Build"

# ---------------------------------------------------------------- 4. secrets
step "Secrets"
if ! exists gcloud secrets describe "$HF_SECRET" --project="$PROJECT"; then
    # Gated files are fetched by a build: the image's (baked) or the models bucket's (OWN_MODELS).
    if [[ -z ${HF_TOKEN:-} && $GATED_TYPES == *" $MODEL_TYPE "* && (-z $RUNTIME_MODELS || $OWN_MODELS == true) ]]; then
        message="model type $MODEL_TYPE is gated on Hugging Face: set HF_TOKEN (a token whose account accepted the licence) or create the secret $HF_SECRET first"
        if [[ $DRY_RUN != true ]]; then
            die "$message"
        fi
        echo "deploy.sh: (a real run would stop here) $message" >&2
    fi
    # A blank token (one newline) stands for "no token" for model types that are not gated.
    run_with_input "${HF_TOKEN:-$'\n'}" \
        gcloud secrets create "$HF_SECRET" --replication-policy=automatic --data-file=- --project="$PROJECT"
fi
if [[ -n $CIVITAI_SECRET ]] && ! exists gcloud secrets describe "$CIVITAI_SECRET" --project="$PROJECT"; then
    if [[ -z ${CIVITAI_TOKEN:-} ]]; then
        message="--civitai-secret $CIVITAI_SECRET does not exist: set CIVITAI_TOKEN (a Civitai API key) or create the secret first"
        if [[ $DRY_RUN != true ]]; then
            die "$message"
        fi
        echo "deploy.sh: (a real run would stop here) $message" >&2
    fi
    run_with_input "${CIVITAI_TOKEN:-}" \
        gcloud secrets create "$CIVITAI_SECRET" --replication-policy=automatic --data-file=- --project="$PROJECT"
fi
if ! exists gcloud secrets describe "$WEBHOOK_SECRET_NAME" --project="$PROJECT"; then
    webhook_secret=${WEBHOOK_SECRET:-whsec_$(head -c 32 /dev/urandom | base64)}
    run_with_input "$webhook_secret" \
        gcloud secrets create "$WEBHOOK_SECRET_NAME" --replication-policy=automatic --data-file=- --project="$PROJECT"
fi

# ---------------------------------------------------------------- 5. buckets
step "Buckets"
cat >"$TMP/outputs-lifecycle.json" <<EOF
{"rule": [
  {"action": {"type": "Delete"}, "condition": {"age": $RETENTION_DAYS, "matchesPrefix": ["inputs/", "outputs/"]}},
  {"action": {"type": "Delete"}, "condition": {"age": $((RETENTION_DAYS > 30 ? RETENTION_DAYS : 30)), "matchesPrefix": ["jobs/"]}}
]}
EOF
cat >"$TMP/build-lifecycle.json" <<'EOF'
{"rule": [{"action": {"type": "Delete"}, "condition": {"age": 7}}]}
EOF
ensure_bucket() {
    local bucket=$1 lifecycle=${2:-}
    if ! exists gcloud storage buckets describe "gs://$bucket" --project="$PROJECT"; then
        run gcloud storage buckets create "gs://$bucket" --location="$REGION" --uniform-bucket-level-access \
            --public-access-prevention --project="$PROJECT"
    fi
    if [[ -n $lifecycle ]]; then
        run gcloud storage buckets update "gs://$bucket" --lifecycle-file="$lifecycle" --project="$PROJECT"
    fi
}
ensure_bucket "$BUCKET" "$TMP/outputs-lifecycle.json"
ensure_bucket "$BUILD_BUCKET" "$TMP/build-lifecycle.json"
if [[ $OWN_MODELS == true ]]; then
    ensure_bucket "$MODELS_BUCKET" # no lifecycle: a model set stays until an operator deletes it
fi
if [[ -n $MODEL_CACHE_BUCKET ]]; then
    ensure_bucket "$MODEL_CACHE_BUCKET" # no lifecycle: DELETE /models/cache/{key} removes an entry
fi

# ---------------------------------------------------------------- 6. Cloud Tasks queues
step "Cloud Tasks queues $QUEUE_PREFIX-{high,normal,low,webhooks}"
# lane:max dispatches per second:max concurrent dispatches:max backoff. A job task is a token:
# the delivery runs the first job in the store's line (strict priority), so each job queue may
# dispatch as many tasks at once as there are request slots (max instances x concurrency); more
# would only meet Cloud Run's 429. Backoff stays short so a freed GPU is not left idle. The job
# bounds its own runs (JOB_MAX_ATTEMPTS) and then answers 2xx, so the queues retry without a count
# limit and their 24-hour retry window is only a backstop (86400s: gcloud sends the value as it is,
# and the API takes a duration only as seconds ending in s). The webhooks queue is the outbox: one
# task per job event, to /tasks/webhook, whose own count (WEBHOOK_MAX_ATTEMPTS) ends it.
SLOTS=$((MAX_INSTANCES * CONCURRENCY))
for spec in "high:50:$SLOTS:10s" "normal:10:$SLOTS:10s" "low:1:$SLOTS:10s" "webhooks:50:100:300s"; do
    IFS=: read -r lane rate concurrent max_backoff <<<"$spec"
    queue=$QUEUE_PREFIX-$lane
    settings=(--max-dispatches-per-second="$rate" --max-concurrent-dispatches="$concurrent"
        --max-attempts=-1 --max-retry-duration=86400s --min-backoff=1s --max-backoff="$max_backoff")
    if exists gcloud tasks queues describe "$queue" --location="$REGION" --project="$PROJECT"; then
        run gcloud tasks queues update "$queue" --location="$REGION" "${settings[@]}" --project="$PROJECT"
    else
        run gcloud tasks queues create "$queue" --location="$REGION" "${settings[@]}" --project="$PROJECT"
    fi
done

# ---------------------------------------------------------------- 7. least-privilege IAM
step "IAM"
# The runtime account: its own bucket objects, its queues' tasks, its webhook secret, signing
# URLs as itself, and creating tasks that call the service as the invoker account.
retry gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
    --member="serviceAccount:$RUN_SA" --role=roles/storage.objectAdmin --project="$PROJECT"
for lane in high normal low webhooks; do
    for role in roles/cloudtasks.enqueuer roles/cloudtasks.taskDeleter; do
        retry gcloud tasks queues add-iam-policy-binding "$QUEUE_PREFIX-$lane" --location="$REGION" \
            --member="serviceAccount:$RUN_SA" --role="$role" --project="$PROJECT"
    done
done
retry gcloud secrets add-iam-policy-binding "$WEBHOOK_SECRET_NAME" \
    --member="serviceAccount:$RUN_SA" --role=roles/secretmanager.secretAccessor --project="$PROJECT"
retry gcloud iam service-accounts add-iam-policy-binding "$RUN_SA" \
    --member="serviceAccount:$RUN_SA" --role=roles/iam.serviceAccountTokenCreator --project="$PROJECT"
retry gcloud iam service-accounts add-iam-policy-binding "$TASKS_SA" \
    --member="serviceAccount:$RUN_SA" --role=roles/iam.serviceAccountUser --project="$PROJECT"
if [[ -n $CIVITAI_SECRET ]]; then
    retry gcloud secrets add-iam-policy-binding "$CIVITAI_SECRET" \
        --member="serviceAccount:$RUN_SA" --role=roles/secretmanager.secretAccessor --project="$PROJECT"
fi
if [[ -n $MOUNT_BUCKET ]]; then
    retry gcloud storage buckets add-iam-policy-binding "gs://$MOUNT_BUCKET" \
        --member="serviceAccount:$RUN_SA" --role=roles/storage.objectViewer --project="$PROJECT"
fi
if [[ -n $MODEL_CACHE_BUCKET ]]; then # read, write and delete objects there: the cache's entries
    retry gcloud storage buckets add-iam-policy-binding "gs://$MODEL_CACHE_BUCKET" \
        --member="serviceAccount:$RUN_SA" --role=roles/storage.objectUser --project="$PROJECT"
fi
# The build account: read its staged source, write logs, push images, read the Hugging Face token,
# and fill the models bucket when this script owns it.
retry gcloud storage buckets add-iam-policy-binding "gs://$BUILD_BUCKET" \
    --member="serviceAccount:$BUILD_SA" --role=roles/storage.objectViewer --project="$PROJECT"
if [[ $OWN_MODELS == true ]]; then
    retry gcloud storage buckets add-iam-policy-binding "gs://$MODELS_BUCKET" \
        --member="serviceAccount:$BUILD_SA" --role=roles/storage.objectAdmin --project="$PROJECT"
fi
retry gcloud projects add-iam-policy-binding "$PROJECT" \
    --member="serviceAccount:$BUILD_SA" --role=roles/logging.logWriter --condition=None
retry gcloud artifacts repositories add-iam-policy-binding "$REPOSITORY" --location="$REGION" \
    --member="serviceAccount:$BUILD_SA" --role=roles/artifactregistry.writer --project="$PROJECT"
retry gcloud secrets add-iam-policy-binding "$HF_SECRET" \
    --member="serviceAccount:$BUILD_SA" --role=roles/secretmanager.secretAccessor --project="$PROJECT"
retry gcloud secrets add-iam-policy-binding "$HF_SECRET" \
    --member="serviceAccount:$RUN_SA" --role=roles/secretmanager.secretAccessor --project="$PROJECT"

# submit LABEL CMD...: a Cloud Build, retried when the build account's grants are seconds old.
submit() {
    if [[ $FRESH_IAM == true ]]; then
        # The build account and its grants are seconds old: Cloud Build may not see them yet.
        RETRY_ATTEMPTS=3 retry "$@"
    else
        run "$@"
    fi
}

# ---------------------------------------------------------------- 8. models bucket
# The model set is data, not image: it is filled even with --skip-build, once per model set.
if [[ $OWN_MODELS == true ]]; then
    step "Models: $MODEL_TYPE in $MODELS_MOUNT"
    if exists gcloud storage objects describe "$MODELS_MOUNT/$MODELS_MARKER" --project="$PROJECT"; then
        echo "deploy.sh: models: $MODELS_MOUNT already holds $MODEL_TYPE's files; nothing to copy" >&2
    else
        submit gcloud builds submit "$ROOT" --config="$ROOT/deploy/cloudbuild-models.yaml" --region="$REGION" \
            --substitutions="_MODEL_TYPE=$MODEL_TYPE,_HF_SECRET=$HF_SECRET,_MODELS_URI=$MODELS_MOUNT,_MARKER=$MODELS_MARKER" \
            --service-account="projects/$PROJECT/serviceAccounts/$BUILD_SA" \
            --gcs-source-staging-dir="gs://$BUILD_BUCKET/source" --project="$PROJECT"
    fi
fi

# ---------------------------------------------------------------- 9. build
if [[ $SKIP_BUILD == true ]]; then
    step "Skipping the build: deploying $IMAGE"
else
    step "Building $IMAGE with Cloud Build (model type $BUILD_MODEL_TYPE)"
    substitutions=_REGION=$REGION,_REPOSITORY=$REPOSITORY,_SERVICE=$SERVICE,_TAG=$TAG
    substitutions+=,_MODEL_TYPE=$BUILD_MODEL_TYPE,_HF_SECRET=$HF_SECRET,_DEPLOY=false,_BAKE_MODELS=$BAKE_MODELS
    if [[ -n $CUSTOM_NODES ]]; then
        [[ $CUSTOM_NODES != *,* ]] || die "--custom-nodes is space-separated; commas are not allowed"
        substitutions+=,_CUSTOM_NODES=$CUSTOM_NODES
    fi
    source=$ROOT
    if [[ -n $SNAPSHOT ]]; then
        # The build context as .dockerignore lets it in (an allowlist), staged with the snapshot
        # as deploy/snapshot.json: the operator's checkout is left as it is.
        source=$TMP/context
        mkdir -p "$source/deploy"
        cp "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$source/"
        while IFS= read -r allowed; do
            allowed=${allowed%/}
            if [[ -e $ROOT/$allowed ]]; then
                mkdir -p "$(dirname "$source/$allowed")"
                cp -R "$ROOT/$allowed" "$source/$allowed"
            fi
        done < <(sed -n 's/^!//p' "$ROOT/.dockerignore")
        if [[ -f $ROOT/deploy/snapshot.json ]]; then
            echo "deploy.sh: --snapshot $SNAPSHOT replaces deploy/snapshot.json for this build" >&2
        fi
        cp "$SNAPSHOT" "$source/deploy/snapshot.json"
    fi
    build=(gcloud builds submit "$source" --config="$ROOT/cloudbuild.yaml" --region="$REGION"
        --substitutions="$substitutions"
        --service-account="projects/$PROJECT/serviceAccounts/$BUILD_SA"
        --gcs-source-staging-dir="gs://$BUILD_BUCKET/source" --project="$PROJECT")
    submit "${build[@]}"
fi

# ---------------------------------------------------------------- 10. deploy
# Two services from one codebase (docs/architecture.md, "Roles"): the api ($API_SERVICE: CPU only,
# scales to zero: async submits, /status, /cancel, listings, webhook delivery) and the worker
# ($SERVICE: ComfyUI on the L4: sync /predict, /models, /tasks/run). Polling /status or
# submitting a job never starts a GPU; job tasks go to the worker, webhook tasks to the api.
common_env=MODEL_TYPE=$MODEL_TYPE,GOOGLE_CLOUD_PROJECT=$PROJECT,GCS_BUCKET=$BUCKET
common_env+=,TASKS_LOCATION=$REGION,TASKS_QUEUE_PREFIX=$QUEUE_PREFIX,TASKS_SERVICE_ACCOUNT=$TASKS_SA
common_env+=,API_URL=$API_URL,WORKER_URL=$SERVICE_URL,OUTPUT_RETENTION_DAYS=$RETENTION_DAYS
# Civitai models: both roles check model references, only the worker fetches (and holds the token).
common_env+=,CIVITAI_MODELS=$CIVITAI

# The deploys are retried when the grants before them may be seconds old: with --skip-build no
# build stands between the IAM step and them, and an account made in this run may not have
# reached Cloud Run yet (the build is retried for the same reason).
deploy_service() {
    if [[ $SKIP_BUILD == true || $FRESH_IAM == true ]]; then
        RETRY_ATTEMPTS=3 retry "$@"
    else
        run "$@"
    fi
}

step "Deploying $API_SERVICE (api role) to Cloud Run in $REGION"
api_access=(--no-allow-unauthenticated "--set-env-vars=$common_env,SERVICE_ROLE=api,SERVICE_URL=$API_URL"
    "--set-secrets=WEBHOOK_SECRET=$WEBHOOK_SECRET_NAME:latest")
if [[ ${PUBLIC_API:-false} == true ]]; then # keys required: the secret holds their hashes (handler/access/cli.py)
    api_access=(--allow-unauthenticated "${api_access[1]},PUBLIC_SERVICE=1" "${api_access[2]},API_KEYS=$SERVICE-api-keys:latest")
fi
deploy_service gcloud run deploy "$API_SERVICE" --region="$REGION" --project="$PROJECT" \
    --service-account="$RUN_SA" --image="$API_IMAGE" --cpu=1 --memory=1Gi \
    --min-instances=0 --max-instances=10 --concurrency=80 --timeout=60 \
    "${api_access[@]}" --quiet
retry gcloud run services add-iam-policy-binding "$API_SERVICE" --region="$REGION" \
    --member="serviceAccount:$TASKS_SA" --role=roles/run.invoker --project="$PROJECT"

step "Deploying $SERVICE (worker role) to Cloud Run in $REGION"
env_vars=$common_env,SERVICE_ROLE=worker,SERVICE_URL=$SERVICE_URL
if [[ -n $RUNTIME_MODELS ]]; then
    env_vars+=,MODELS_SOURCE=$RUNTIME_MODELS
fi
# Secrets are replaced as a whole too (--set-secrets): a run without --civitai-secret takes that
# token away. The Hugging Face token serves hf:// models named at run time as it served the build
# (a blank secret means none).
worker_secrets="HF_TOKEN=$HF_SECRET:latest"
if [[ -n $CIVITAI_SECRET ]]; then
    worker_secrets+=",CIVITAI_TOKEN=$CIVITAI_SECRET:latest"
fi
if [[ $GPU_ZONAL_REDUNDANCY == true ]]; then
    redundancy=--gpu-zonal-redundancy
else
    redundancy=--no-gpu-zonal-redundancy
fi
# Volumes are replaced as a whole, so a re-run converges on exactly what these options say.
volumes=(--clear-volumes)
mounts=(--clear-volume-mounts)
if [[ -n $MODELS_MOUNT ]]; then
    volumes+=(--add-volume="name=models,type=cloud-storage,bucket=$MOUNT_BUCKET,readonly=true")
    mounts+=(--add-volume-mount="volume=models,mount-path=/mnt/models")
fi
if [[ -n $MODEL_CACHE_BUCKET ]]; then
    volumes+=(--add-volume="name=model-cache,type=cloud-storage,bucket=$MODEL_CACHE_BUCKET")
    mounts+=(--add-volume-mount="volume=model-cache,mount-path=/mnt/model-cache")
    env_vars+=,MODEL_CACHE_STORE=/mnt/model-cache
fi
# --metrics: the service gets two containers, the app (ingress, port 8080) and Managed Service
# for Prometheus' collector, started after it, whose default configuration scrapes the app's
# /metrics on port 8080 into Cloud Monitoring. The run identity writes the metrics.
app_container=()
collector=()
if [[ $METRICS_SIDECAR == true ]]; then
    retry gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$RUN_SA" \
        --role=roles/monitoring.metricWriter --condition=None
    app_container=(--container=app --port=8080)
    collector=(--container=collector --image="$GMP_SIDECAR_IMAGE" --cpu=1 --memory=512Mi --depends-on=app)
fi
# The service's flags first, then the (app) container's: gcloud reads flags after --container as
# that container's.
deploy_service gcloud run deploy "$SERVICE" --region="$REGION" --project="$PROJECT" \
    --service-account="$RUN_SA" --gpu-type=nvidia-l4 "$redundancy" \
    --no-cpu-throttling --execution-environment=gen2 \
    --min-instances="$MIN_INSTANCES" --max-instances="$MAX_INSTANCES" \
    --concurrency="$CONCURRENCY" --timeout="$TIMEOUT" \
    "${volumes[@]}" --no-allow-unauthenticated --quiet \
    "${app_container[@]}" --image="$IMAGE" --gpu=1 --cpu="$CPU" --memory="$MEMORY" \
    --startup-probe="httpGet.path=/healthz,initialDelaySeconds=0,periodSeconds=10,failureThreshold=$((STARTUP_WINDOW_S / 10)),timeoutSeconds=5" \
    --set-env-vars="$env_vars" --set-secrets="$worker_secrets" \
    "${mounts[@]}" "${collector[@]}"
retry gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" \
    --member="serviceAccount:$TASKS_SA" --role=roles/run.invoker --project="$PROJECT"

URL=$(capture "$SERVICE_URL" gcloud run services describe "$SERVICE" --region="$REGION" \
    --project="$PROJECT" --format="value(status.url)")
if [[ $DRY_RUN == true ]]; then
    echo "Dry run: nothing was changed."
fi
cat <<EOF

Worker: $SERVICE ($IMAGE)
URL:    $URL            (sync /predict, /models)
API:    $API_URL        (async /predict, /status, /cancel, /workflows)
Try it (your account needs roles/run.invoker on the services; project owners have it):
  curl -H "Authorization: Bearer \$(gcloud auth print-identity-token)" $URL/healthz
  curl -H "Authorization: Bearer \$(gcloud auth print-identity-token)" $URL/models
  curl -H "Authorization: Bearer \$(gcloud auth print-identity-token)" $API_URL/workflows
EOF
