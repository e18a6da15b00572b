"""Authorized requests per second on one worker (SigV4 check + IAM policy evaluation), and
the evaluation cost with 100 attached policies.

    .venv/bin/python -m bench.authz [--requests 5000] [--policies 100] [--repeats 3]

(a) Requests an operator typically makes (DescribeJob, ListThings, GetOTAUpdate,
CreateOTAUpdate with a JSON body, s3 GetObjectVersion) are signed beforehand by
botocore's `SigV4Auth` / `S3SigV4Auth` (signing is the client's cost, not measured). One
request is then: `overair.server.api.sigv4.verify_request` against an in-memory
credential table, a `RequestContext` built from the verified caller, and `evaluate`
against the operator's three compiled policies: OverairOTAOperator, OverairReadOnly and
an inline policy with the seed's explicit deny on the customer bucket. The SigV4 check
alone and the evaluation alone (context included) are timed too, so the reader can see
where the time goes. Everything runs in this process, one request at a time.

(b) 100 identity policies of 5 statements each, all naming the requested service so
that none is skipped by the per-service index: per policy one Deny whose action matches
but whose condition does not hold, and four Allows whose actions match but whose
resources (and, for half, conditions) do not, except the very last statement, which
allows. Every statement is therefore checked beyond its action: the worst case.

Figures are the best of `--repeats` runs. There is no physical limit to compare with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from overair.server.api.contract import Credential
from overair.server.api.sigv4 import IncomingRequest, verify_request
from overair.server.iam import managed
from overair.server.iam.policy import NamedPolicy, RequestContext, compile_policy, evaluate

ACCOUNT = "123456789012"
REGION = "us-east-1"
HOST = "overair.example:8443"
AKID = "AKIABENCHMARKEXAMPLE"
SECRET = "bench/secret/key/that/is/forty/chars/xx"
USER = "ota-operator"
USER_ARN = f"arn:aws:iam::{ACCOUNT}:user/{USER}"
CREDENTIALS = {AKID: Credential(access_key_id=AKID, secret_access_key=SECRET, principal_name=USER,
                                principal_arn=USER_ARN, active=True)}

# (service, method, path, body, IAM action, resource ARN)
Template = tuple[str, str, str, bytes, str, str]
Signed = tuple[IncomingRequest, str, str]  # the request, its IAM action and resource ARN


def _templates(i: int) -> list[Template]:
    job = f"AFR_OTA-bench-{i}"
    body = json.dumps({"otaUpdateId": f"bench-{i}", "targets": [f"arn:aws:iot:{REGION}:{ACCOUNT}:thing/t{i}"],
                       "roleArn": f"arn:aws:iam::{ACCOUNT}:role/ota-role", "files": []}).encode()
    return [
        ("iot", "GET", f"/jobs/{job}", b"", "iot:DescribeJob", f"arn:aws:iot:{REGION}:{ACCOUNT}:job/{job}"),
        ("iot", "GET", "/things", b"", "iot:ListThings", "*"),
        ("iot", "GET", f"/otaUpdates/bench-{i}", b"", "iot:GetOTAUpdate",
         f"arn:aws:iot:{REGION}:{ACCOUNT}:otaupdate/bench-{i}"),
        ("iot", "POST", f"/otaUpdates/bench-{i}", body, "iot:CreateOTAUpdate",
         f"arn:aws:iot:{REGION}:{ACCOUNT}:otaupdate/bench-{i}"),
        ("s3", "GET", f"/firmware/images/fw-{i}.bin", b"", "s3:GetObjectVersion",
         f"arn:aws:s3:::firmware/images/fw-{i}.bin"),
    ]


def _signed(service: str, method: str, path: str, body: bytes) -> IncomingRequest:
    url = f"https://{HOST}{path}"
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/json"})
    if service == "s3":
        request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(Credentials(AKID, SECRET), service, REGION).add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    headers = [("Host", parts.netloc)]
    headers += [(k, v.decode() if isinstance(v, bytes) else v) for k, v in prepared.headers.items()]
    return IncomingRequest(method, parts.scheme, parts.path, parts.query, headers, body)


def make_requests(count: int) -> list[Signed]:
    out: list[Signed] = []
    i = 0
    while len(out) < count:
        for service, method, path, body, action, resource in _templates(i):
            out.append((_signed(service, method, path, body), action, resource))
        i += 1
    return out[:count]


def operator_policies() -> list[NamedPolicy]:
    inline = compile_policy(json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyCustomerBucket", "Effect": "Deny", "Action": "s3:*",
        "Resource": ["arn:aws:s3:::customer", "arn:aws:s3:::customer/*"]}]}))
    return [managed.OVERAIR_OTA_OPERATOR.named(), managed.OVERAIR_READ_ONLY.named(),
            NamedPolicy(f"user/{USER}/no-customer-data", inline)]


def context_for(principal: str, user: str, action: str, resource: str, source_ip: str) -> RequestContext:
    now = time.time()
    return RequestContext(principal, action, resource, {
        "aws:SourceIp": source_ip,
        "aws:SecureTransport": "true",
        "aws:username": user,
        "aws:CurrentTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "aws:EpochTime": str(int(now)),
        "aws:PrincipalType": "User",
    })


def worst_case_policies(count: int) -> list[NamedPolicy]:
    out = []
    for i in range(count):
        statements: list[dict[str, object]] = [{
            "Sid": f"Deny{i}", "Effect": "Deny", "Action": "iot:*", "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }]
        for j in range(4):
            statement: dict[str, object] = {
                "Sid": f"Allow{i}x{j}", "Effect": "Allow",
                "Action": ["iot:DescribeJob", "iot:GetJobDocument", "iot:ListJobExecutionsForJob"],
                "Resource": f"arn:aws:iot:{REGION}:{ACCOUNT}:job/team-{i}-{j}-*",
            }
            if j % 2:
                statement["Condition"] = {"StringEquals": {"aws:PrincipalTag/team": f"team-{i}"}}
            statements.append(statement)
        if i == count - 1:
            statements[-1] = {"Sid": "TheMatch", "Effect": "Allow", "Action": "iot:DescribeJob",
                              "Resource": f"arn:aws:iot:*:{ACCOUNT}:job/*"}
        document = json.dumps({"Version": "2012-10-17", "Statement": statements})
        out.append(NamedPolicy(f"arn:aws:iam::{ACCOUNT}:policy/p{i}", compile_policy(document)))
    return out


def best_seconds(run: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def measure_a(requests: Sequence[Signed], repeats: int) -> tuple[float, float, float]:
    policies = operator_policies()

    def sigv4_only() -> None:
        now = time.time()
        for req, _action, _resource in requests:
            verify_request(req, CREDENTIALS.get, now, region=REGION)

    def evaluation_only() -> None:
        for _req, action, resource in requests:
            ctx = context_for(USER_ARN, USER, action, resource, "192.0.2.10")
            if not evaluate(ctx, policies).allowed:
                raise RuntimeError(f"{action} on {resource} should be allowed")

    def authorized() -> None:
        now = time.time()
        for req, action, resource in requests:
            auth = verify_request(req, CREDENTIALS.get, now, region=REGION)
            cred = auth.credential
            ctx = context_for(cred.principal_arn, cred.principal_name, action, resource, "192.0.2.10")
            if not evaluate(ctx, policies).allowed:
                raise RuntimeError(f"{action} on {resource} should be allowed")

    return (best_seconds(sigv4_only, repeats), best_seconds(evaluation_only, repeats),
            best_seconds(authorized, repeats))


def measure_b(policy_count: int, evaluations: int, repeats: int) -> float:
    policies = worst_case_policies(policy_count)
    job = f"arn:aws:iot:{REGION}:{ACCOUNT}:job/fw-1"
    ctx = context_for(USER_ARN, USER, "iot:DescribeJob", job, "192.0.2.10")
    decision = evaluate(ctx, policies)
    if (decision.policy, decision.statement) != (policies[-1].name, "TheMatch"):
        raise RuntimeError(f"worst case decided by the wrong statement: {decision}")

    def run() -> None:
        for _ in range(evaluations):
            evaluate(ctx, policies)

    return best_seconds(run, repeats) / evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    requests = make_requests(args.requests)
    sigv4_s, eval_s, both_s = measure_a(requests, args.repeats)
    n = len(requests)
    print(f"(a) {n} signed operator requests (5 kinds, iot and s3), one worker, best of {args.repeats}")
    for label, seconds in (("SigV4 verification alone:", sigv4_s),
                           ("policy evaluation alone (3 policies):", eval_s),
                           ("authorized requests (both):", both_s)):
        print(f"    {label:38s} {n / seconds:9.0f} req/s  {seconds / n * 1e6:7.1f} us each")
    per_eval = measure_b(args.policies, max(200, args.requests // 10), args.repeats)
    print(f"(b) {args.policies} policies x 5 statements, only the last statement matches (worst case)")
    print(f"    evaluation:                        {1 / per_eval:9.0f} eval/s {per_eval * 1e6:7.1f} us each")


if __name__ == "__main__":
    main()
