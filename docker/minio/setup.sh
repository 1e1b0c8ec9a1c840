#!/bin/sh
# compose's minio-buckets (the mc image, alias `local` = MinIO's root key from MC_HOST_local): with no arguments, make
# the bucket and the two users of docs/security.md's least privilege, idempotently (every `up` runs it again);
# with arguments, run them as one mc command (`docker compose run --rm minio-buckets cp ...`, README).
#   MINIO_WORKER_USER  read, write and delete in XICH_BUCKET (workers and the CLI)
#   MINIO_HOOKS_USER   read and list datasets/ and models/ of XICH_BUCKET only (the hooks receiver)
set -eu
if [ "$#" -gt 0 ]; then
    exec mc "$@"
fi
: "${XICH_BUCKET:?}" "${MINIO_WORKER_USER:?}" "${MINIO_WORKER_PASSWORD:?}" "${MINIO_HOOKS_USER:?}" "${MINIO_HOOKS_PASSWORD:?}"
bucket="arn:aws:s3:::$XICH_BUCKET"
policies=$(mktemp -d)
cat > "$policies/worker.json" <<JSON
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
   "Resource": ["$bucket"]},
  {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                 "s3:ListMultipartUploadParts"],
   "Resource": ["$bucket/*"]}]}
JSON
cat > "$policies/hooks.json" <<JSON
{"Version": "2012-10-17", "Statement": [
  {"Effect": "Allow", "Action": ["s3:GetBucketLocation", "s3:ListBucket"], "Resource": ["$bucket"]},
  {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["$bucket/datasets/*", "$bucket/models/*"]}]}
JSON

# attach POLICY USER: a policy already attached is no error (MinIO refuses the "change" when it is in effect)
attach() {
    if ! out=$(mc admin policy attach local "$1" --user "$2" 2>&1); then
        case "$out" in
            *"already in effect"*) ;;
            *) echo "$out" >&2; exit 1 ;;
        esac
    fi
}

mc mb --ignore-existing "local/$XICH_BUCKET"
mc admin policy create local xich-worker "$policies/worker.json"
mc admin policy create local xich-hooks "$policies/hooks.json"
mc admin user add local "$MINIO_WORKER_USER" "$MINIO_WORKER_PASSWORD"
mc admin user add local "$MINIO_HOOKS_USER" "$MINIO_HOOKS_PASSWORD"
attach xich-worker "$MINIO_WORKER_USER"
attach xich-hooks "$MINIO_HOOKS_USER"
rm -rf "$policies"
echo "bucket $XICH_BUCKET, users $MINIO_WORKER_USER (read/write) and $MINIO_HOOKS_USER (read datasets/, models/) ready"
