#!/usr/bin/env bash
# The FreeRTOS OTA workflow with the AWS CLI, against overair (or AWS).
#
# Only the endpoint and the keys differ from AWS: every call is a plain `aws` command
# with --endpoint-url (leave OVERAIR_ENDPOINT empty to talk to AWS itself). Two
# identities take part, as in the seed's workflow:
#   - the administrator (whatever credentials the CLI finds: AWS_ACCESS_KEY_ID/...,
#     AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE) sets up the things and their group, the
#     OTA service role and the OTA operator user with the seed's operator policy;
#   - the operator, with its own new access key, creates a versioned bucket, uploads the
#     firmware, imports the code-signing certificate, creates a signing profile and the
#     OTA update, and follows it until every device reports SUCCEEDED.
#
# Usage: ota_workflow_awscli.sh FIRMWARE SIGNING_CERT SIGNING_KEY
# Settings (environment, with defaults):
#   OVERAIR_ENDPOINT=http://127.0.0.1:8080   AWS_DEFAULT_REGION=us-east-1
#   OTA_THINGS=ota-cli-1,ota-cli-2  OTA_GROUP=ota-cli-fleet  OTA_BUCKET=ota-cli-firmware
#   OTA_FIRMWARE_VERSION=1.1.0  OTA_SIGNING_PROFILE=ota_cli_profile  OTA_SIGNING_CHAIN=
#   OTA_OPERATOR=ota-cli-operator  OTA_SERVICE_ROLE=ota-cli-service-role
#   OTA_UPDATE_ID=ota-cli-<time>  OTA_TIMEOUT=600 (seconds to wait for the devices)
set -euo pipefail

if [ $# -ne 3 ]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
FIRMWARE=$1 SIGNING_CERT=$2 SIGNING_KEY=$3

ENDPOINT=${OVERAIR_ENDPOINT-http://127.0.0.1:8080}
export AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:-us-east-1}
THINGS=${OTA_THINGS:-ota-cli-1,ota-cli-2}
GROUP=${OTA_GROUP:-ota-cli-fleet}
BUCKET=${OTA_BUCKET:-ota-cli-firmware}
FIRMWARE_VERSION=${OTA_FIRMWARE_VERSION:-1.1.0}
PROFILE=${OTA_SIGNING_PROFILE:-ota_cli_profile}
OPERATOR=${OTA_OPERATOR:-ota-cli-operator}
ROLE=${OTA_SERVICE_ROLE:-ota-cli-service-role}
OTA_ID=${OTA_UPDATE_ID:-ota-cli-$(date +%s)}
TIMEOUT=${OTA_TIMEOUT:-600}
KEY=firmware/$OTA_ID.bin
IFS=, read -r -a THING_LIST <<<"$THINGS"

# `aws` as the administrator, and as the operator (its key only, no profile).
admin() { aws ${ENDPOINT:+--endpoint-url "$ENDPOINT"} "$@"; }
operator() {
    env -u AWS_PROFILE -u AWS_SESSION_TOKEN AWS_SHARED_CREDENTIALS_FILE=/dev/null \
        AWS_ACCESS_KEY_ID="$OPERATOR_KEY_ID" AWS_SECRET_ACCESS_KEY="$OPERATOR_SECRET" \
        aws ${ENDPOINT:+--endpoint-url "$ENDPOINT"} "$@"
}
policy() { printf '{"Version": "2012-10-17", "Statement": [%s]}' "$1"; }

# ------------------------------------------------------------------ the administrator

for thing in "${THING_LIST[@]}"; do
    if admin iot describe-thing --thing-name "$thing" >/dev/null 2>&1; then
        echo "thing $thing: exists"
    else
        admin iot create-thing --thing-name "$thing" >/dev/null
        echo "thing $thing: created"
    fi
done
admin iot describe-thing-group --thing-group-name "$GROUP" >/dev/null 2>&1 \
    || admin iot create-thing-group --thing-group-name "$GROUP" >/dev/null
for thing in "${THING_LIST[@]}"; do
    admin iot add-thing-to-thing-group --thing-group-name "$GROUP" --thing-name "$thing"
done
echo "thing group $GROUP: ${#THING_LIST[@]} thing(s)"

# The OTA service role: AWSIoTOTAUpdate, plus reading the firmware bucket and writing the
# signing job's result under signed/ (as AWS's OTA service role needs).
if ! admin iam get-role --role-name "$ROLE" >/dev/null 2>&1; then
    admin iam create-role --role-name "$ROLE" --description "OTA service role (example)" \
        --assume-role-policy-document "$(policy '{"Effect": "Allow",
            "Principal": {"Service": "iot.amazonaws.com"}, "Action": "sts:AssumeRole"}')" >/dev/null
fi
admin iam attach-role-policy --role-name "$ROLE" \
    --policy-arn arn:aws:iam::aws:policy/service-role/AWSIoTOTAUpdate
admin iam put-role-policy --role-name "$ROLE" --policy-name ReadFirmware \
    --policy-document "$(policy '{"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
        "Resource": "arn:aws:s3:::'"$BUCKET"'/*"},
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::'"$BUCKET"'/signed/*"}')"
echo "service role $ROLE"

# The operator: the seed's OTA operator policy. The seed's list leaves out uploading the
# image and creating the signing profile; this operator does both, so it may do exactly
# that, for this bucket and this profile.
admin iam get-user --user-name "$OPERATOR" >/dev/null 2>&1 \
    || admin iam create-user --user-name "$OPERATOR" >/dev/null
admin iam attach-user-policy --user-name "$OPERATOR" \
    --policy-arn arn:aws:iam::aws:policy/OverairOTAOperator
admin iam put-user-policy --user-name "$OPERATOR" --policy-name PublishFirmware \
    --policy-document "$(policy '{"Effect": "Allow", "Action": "s3:PutObject",
        "Resource": "arn:aws:s3:::'"$BUCKET"'/*"},
        {"Effect": "Allow", "Action": "signer:PutSigningProfile",
         "Resource": "arn:aws:signer:*:*:/signing-profiles/'"$PROFILE"'"}')"
read -r OPERATOR_KEY_ID OPERATOR_SECRET < <(admin iam create-access-key --user-name "$OPERATOR" \
    --query 'AccessKey.[AccessKeyId, SecretAccessKey]' --output text)
# Keys are credentials: this run's key goes away with the run.
trap 'admin iam delete-access-key --user-name "$OPERATOR" --access-key-id "$OPERATOR_KEY_ID"' EXIT
echo "operator $OPERATOR: access key $OPERATOR_KEY_ID"

# ------------------------------------------------------------------- the OTA operator

if ! out=$(operator s3api create-bucket --bucket "$BUCKET" 2>&1); then
    grep -q BucketAlreadyOwnedByYou <<<"$out" || { echo "$out" >&2; exit 1; }
fi
operator s3api put-bucket-versioning --bucket "$BUCKET" --versioning-configuration Status=Enabled
VERSION=$(operator s3api put-object --bucket "$BUCKET" --key "$KEY" --body "$FIRMWARE" \
    --query VersionId --output text)
echo "firmware s3://$BUCKET/$KEY: version $VERSION"

CHAIN_ARGS=()
if [ -n "${OTA_SIGNING_CHAIN:-}" ]; then CHAIN_ARGS=(--certificate-chain "fileb://$OTA_SIGNING_CHAIN"); fi
CERT_ARN=$(operator acm import-certificate --certificate "fileb://$SIGNING_CERT" \
    --private-key "fileb://$SIGNING_KEY" "${CHAIN_ARGS[@]}" --query CertificateArn --output text)
echo "code-signing certificate: $CERT_ARN"
operator signer put-signing-profile --profile-name "$PROFILE" --platform-id AmazonFreeRTOS-Default \
    --signing-material certificateArn="$CERT_ARN" \
    --signing-parameters certname=/certs/ota-cli-signer.pem >/dev/null
echo "signing profile $PROFILE"

ROLE_ARN=$(operator iam list-roles --query "Roles[?RoleName=='$ROLE'].Arn" --output text)
GROUP_ARN=$(operator iot list-thing-groups --name-prefix-filter "$GROUP" \
    --query "thingGroups[?groupName=='$GROUP'].groupArn" --output text)

operator iot create-ota-update --ota-update-id "$OTA_ID" --description "firmware $FIRMWARE_VERSION" \
    --targets "$GROUP_ARN" --target-selection SNAPSHOT --protocols MQTT --role-arn "$ROLE_ARN" \
    --files "$(printf '[{"fileName": "/firmware/app.bin", "fileVersion": "%s",
        "fileLocation": {"s3Location": {"bucket": "%s", "key": "%s", "version": "%s"}},
        "codeSigning": {"startSigningJobParameter": {"signingProfileName": "%s",
            "destination": {"s3Destination": {"bucket": "%s", "prefix": "signed/"}}}}}]' \
        "$FIRMWARE_VERSION" "$BUCKET" "$KEY" "$VERSION" "$PROFILE" "$BUCKET")" >/dev/null
echo "OTA update $OTA_ID: requested"

deadline=$((SECONDS + 120))
while true; do
    read -r STATUS JOB_ID < <(operator iot get-ota-update --ota-update-id "$OTA_ID" \
        --query 'otaUpdateInfo.[otaUpdateStatus, awsIotJobId]' --output text)
    case $STATUS in
        CREATE_COMPLETE) echo "OTA update $OTA_ID: $STATUS, job $JOB_ID"; break ;;
        CREATE_FAILED)
            operator iot get-ota-update --ota-update-id "$OTA_ID" --query otaUpdateInfo.errorInfo >&2
            exit 1 ;;
    esac
    if [ $SECONDS -gt $deadline ]; then echo "OTA update still $STATUS after 120 s" >&2; exit 1; fi
    sleep 1
done

# Follow the job until every device SUCCEEDED (the CLI pages through the executions).
deadline=$((SECONDS + TIMEOUT))
shown=
while true; do
    progress=$(operator iot list-job-executions-for-job --job-id "$JOB_ID" \
        --query 'executionSummaries[].[thingArn, jobExecutionSummary.status]' --output text \
        | sed 's|^.*/||' | sort | tr '\t\n' '= ' | sed 's/ $//')
    if [ "$progress" != "$shown" ]; then echo "  $progress"; shown=$progress; fi
    if grep -Eq '=(FAILED|REJECTED|TIMED_OUT|CANCELED|REMOVED)' <<<"$progress"; then
        echo "devices did not update: $progress" >&2; exit 1
    fi
    succeeded=$({ grep -o '=SUCCEEDED' <<<"$progress" || true; } | wc -l)
    if [ "$succeeded" -eq "${#THING_LIST[@]}" ]; then
        echo "all $succeeded device(s) SUCCEEDED"; break
    fi
    if [ $SECONDS -gt $deadline ]; then echo "timed out after $TIMEOUT s: $progress" >&2; exit 1; fi
    sleep 1
done
