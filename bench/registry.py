"""Device access changes at fleet size: what an attach, a detach and a deactivation cost
with 100 and with N things registered, and how long a deactivated device keeps its
session.

    .venv/bin/python -m bench.registry [--things 10000] [--changes 200]
    .venv/bin/python -m bench.registry --bulk 10000
    .venv/bin/python -m bench.registry --claim 1000 [--claim-workers 16]

`--bulk N` measures bulk registration instead: N devices, each a line with its own CSR
(ECDSA P-256), registered by one StartThingRegistrationTask with a template that makes
the thing, signs its certificate, attaches it and puts the thing in a group, from the
call to the task's Completed (every device enforced at the broker). Compared in the same
run with the limits it is made of: CSRs checked and signed per second in one thread, and
the same rows INSERTed per second in one transaction; and one broker access change for a
batch of 500 certificates against 500 changes of one.

A real server runs (`tests.server_harness`: API, device service, its own Mosquitto with
overair's access plugin) on a fresh SQLite data directory. Setup is not measured: N
things, each with its own certificate (unique subject, signed by the fleet CA) attached
to it, are inserted directly into the database, then the broker's access is regenerated
once from the registry (the whole access file, as at a broker start), so the broker
enforces all N.

Measured, through the API (boto3, SigV4, the one IAM check, audit) with 100 things and
then with N:
- AttachThingPrincipal + DetachThingPrincipal pairs of a fresh certificate (each call
  returns once the broker enforces it: the access plugin's answer on its control topic);
- the limit it is compared to, in the same run: CreateThing calls (a registry write
  that touches no broker);
- what one change cost before (and still costs on an external broker): the whole access
  file regenerated from the registry and the broker reloaded, confirmed by the witness;
- revocation: a device holds a mutual-TLS session; UpdateCertificate INACTIVE is called;
  the time from the call until the device's client sees its connection closed.

- ListThings: a first page of 100 and a page at the end of the listing (its token made
  for the last things' names), against the first page with 100 things registered.

Left out: the device side of a reconnect storm, PostgreSQL, more than one server.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import ssl
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import insert
from tests.server_harness import RunningServer, running_server

from bench import registry_claim
from overair.server import pki
from overair.server.api.paging import key_token
from overair.server.storage.schema import DeviceCertificate, Thing, ThingGroupMember, ThingPrincipal

CHUNK = 2000
PAGE = 100


def bulk_fleet(srv: RunningServer, start: int, count: int) -> None:
    """`count` things named bench-<i>, each with an ACTIVE certificate of its own attached."""
    server = srv.server
    now = dt.datetime.now(dt.UTC)
    settings = srv.settings
    for base in range(start, start + count, CHUNK):
        things: list[dict[str, object]] = []
        certs: list[dict[str, object]] = []
        links: list[dict[str, object]] = []
        for i in range(base, min(base + CHUNK, start + count)):
            name = f"bench-{i}"
            issued = pki.issue_client_cert(server.fleet_ca, name, now)
            cert_id = pki.certificate_id(issued.cert)
            arn = settings.arn("iot", f"cert/{cert_id}")
            things.append(
                {
                    "name": name,
                    "thing_id": uuid.uuid4().hex,
                    "arn": settings.arn("iot", f"thing/{name}"),
                    "thing_type_name": None,
                    "attributes": {},
                    "version": 1,
                    "created_at": time.time(),
                }
            )
            certs.append(
                {
                    "certificate_id": cert_id,
                    "arn": arn,
                    "pem": issued.cert.public_bytes(serialization.Encoding.PEM).decode(),
                    "serial": format(issued.cert.serial_number, "x"),
                    "status": "ACTIVE",
                    "created_at": time.time(),
                    "last_modified_at": time.time(),
                }
            )
            links.append({"thing_name": name, "principal": arn})
        with server.db.session() as s:
            s.execute(insert(Thing), things)
            s.execute(insert(DeviceCertificate), certs)
            s.execute(insert(ThingPrincipal), links)


def timed(label: str, runs: int, action: Callable[[int], None]) -> float:
    """Median seconds of `action(i)` over `runs` runs."""
    seconds = []
    for i in range(runs):
        started = time.perf_counter()
        action(i)
        seconds.append(time.perf_counter() - started)
    median = statistics.median(seconds)
    print(
        f"  {label:<44} median {median * 1000:8.2f} ms   "
        f"p90 {sorted(seconds)[int(runs * 0.9)] * 1000:8.2f} ms"
    )
    return median


def revocation_seconds(srv: RunningServer, root: Path, name: str) -> float:
    """A device connects; the time from UpdateCertificate INACTIVE to its session's end."""
    iot = srv.client("iot")
    iot.create_thing(thingName=name)
    cert = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
    (root / f"{name}.crt").write_text(cert["certificatePem"])
    (root / f"{name}.key").write_text(cert["keyPair"]["PrivateKey"])
    context = ssl.create_default_context(cafile=str(srv.settings.paths.fleet_ca_cert))
    context.load_cert_chain(str(root / f"{name}.crt"), str(root / f"{name}.key"))
    connected, gone = threading.Event(), threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
    client.tls_set_context(context)
    client.reconnect_delay_set(min_delay=60, max_delay=60)
    client.on_connect = lambda *_a: connected.set()
    client.on_disconnect = lambda *_a: gone.set()
    client.connect("127.0.0.1", srv.settings.mqtt_port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(30):
            raise RuntimeError("the device could not connect")
        started = time.perf_counter()
        iot.update_certificate(certificateId=cert["certificateId"], newStatus="INACTIVE")
        if not gone.wait(30):
            raise RuntimeError("the deactivated device kept its session for 30 s")
        return time.perf_counter() - started
    finally:
        client.loop_stop()


def measure(srv: RunningServer, root: Path, label: str, changes: int, things: int) -> dict[str, float]:
    iot = srv.client("iot")
    print(f"\n{label}:")
    tag = uuid.uuid4().hex[:6]
    create = timed("CreateThing (the limit)", changes, lambda i: iot.create_thing(thingName=f"lim-{tag}-{i}"))
    cert = iot.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    iot.create_thing(thingName=f"chg-{tag}")

    def pair(_i: int) -> None:
        iot.attach_thing_principal(thingName=f"chg-{tag}", principal=cert)
        iot.detach_thing_principal(thingName=f"chg-{tag}", principal=cert)

    change = timed("Attach + Detach (per call)", changes // 2, pair) / 2
    print(
        f"  {'one access change, in force at return':<44} median {change * 1000:8.2f} ms   "
        f"= {change / create:.2f}x CreateThing"
    )
    full = timed("whole access file + reload (before, per change)", 5, lambda _i: srv.server.access.changed())
    deep = key_token(f"bench-{things - PAGE - 1:d}") if things > PAGE + 1 else None
    first = timed("ListThings, first page of 100", 20, lambda _i: iot.list_things(maxResults=PAGE))
    last = timed(
        "ListThings, a page at the end",
        20,
        lambda _i: iot.list_things(maxResults=PAGE, **({"nextToken": deep} if deep else {})),
    )
    print(f"  {'a deep page costs':<44} {last / first:8.2f}x the first")
    revoke = statistics.median(revocation_seconds(srv, root, f"rev-{tag}-{i}") for i in range(5))
    print(f"  {'deactivated device disconnected after':<44} median {revoke * 1000:8.2f} ms")
    return {"create": create, "change": change, "full": full, "revoke": revoke, "first": first, "last": last}


BULK_TEMPLATE = json.dumps({
    "Parameters": {"ThingName": {"Type": "String"}, "CSR": {"Type": "String"}},
    "Resources": {
        "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"},
                                                             "ThingGroups": ["bulk-bench"]}},
        "certificate": {"Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"}}}})


def _csrs(count: int) -> list[str]:
    """`count` CSRs, a key each (made by the devices in a factory: not measured)."""
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        request = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
                   .sign(key, hashes.SHA256()))
        out.append(request.public_bytes(serialization.Encoding.PEM).decode())
    return out


def _signing_rate(srv: RunningServer, csrs: list[str]) -> float:
    """CSRs checked (signature verified) and signed by the fleet CA per second, one thread."""
    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for i, pem in enumerate(csrs):
        request = x509.load_pem_x509_csr(pem.encode())
        assert request.is_signature_valid
        cert = pki.sign_client_key(srv.server.fleet_ca, f"rate-{i}", request.public_key(), now)  # type: ignore[arg-type]
        cert.public_bytes(serialization.Encoding.PEM)
    return len(csrs) / (time.perf_counter() - started)


def _insert_rate(srv: RunningServer, count: int) -> float:
    """Devices per second as raw INSERTs (thing, certificate, attachment, membership) in
    one transaction: what the registry's tables take at best."""
    settings, now = srv.settings, time.time()
    pem = pki.issue_client_cert(srv.server.fleet_ca, "raw", dt.datetime.now(dt.UTC)).cert_pem.decode()
    things: list[dict[str, object]] = []
    certs: list[dict[str, object]] = []
    links: list[dict[str, object]] = []
    members: list[dict[str, object]] = []
    for i in range(count):
        name, cert_id = f"raw-{i}", uuid.uuid4().hex * 2
        arn = settings.arn("iot", f"cert/{cert_id}")
        thing_arn = settings.arn("iot", f"thing/{name}")
        things.append({"name": name, "thing_id": uuid.uuid4().hex, "arn": thing_arn, "thing_type_name": None,
                       "attributes": {}, "version": 1, "created_at": now})
        certs.append({"certificate_id": cert_id, "arn": arn, "pem": pem, "serial": uuid.uuid4().hex,
                      "status": "INACTIVE", "created_at": now, "last_modified_at": now})
        links.append({"thing_name": name, "principal": arn})
        members.append({"group_name": "bulk-bench", "thing_name": name, "added_at": now})
    started = time.perf_counter()
    with srv.server.db.session() as s:
        s.execute(insert(Thing), things)
        s.execute(insert(DeviceCertificate), certs)
        s.execute(insert(ThingPrincipal), links)
        s.execute(insert(ThingGroupMember), members)
    return count / (time.perf_counter() - started)


def bulk(srv: RunningServer, count: int) -> None:
    iot, s3, iam = srv.client("iot"), srv.client("s3"), srv.client("iam")
    iot.create_thing_group(thingGroupName="bulk-bench")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "iot.amazonaws.com"}}]}
    role = iam.create_role(RoleName="bulk-bench", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    iam.put_role_policy(RoleName="bulk-bench", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": "arn:aws:s3:::bulk-bench/*"}]}))
    s3.create_bucket(Bucket="bulk-bench")
    made = time.perf_counter()
    csrs = _csrs(count)
    print(f"({count} device keys and CSRs made in {time.perf_counter() - made:.1f} s, not measured)")
    lines = "".join(json.dumps({"ThingName": f"bulk-{i}", "CSR": csr}) + "\n" for i, csr in enumerate(csrs))
    # Past 16 MiB a single PUT is refused (max_api_body_bytes): boto3 goes multipart.
    s3.upload_fileobj(io.BytesIO(lines.encode()), "bulk-bench", "devices.json")
    started = time.perf_counter()
    task = iot.start_thing_registration_task(templateBody=BULK_TEMPLATE, inputFileBucket="bulk-bench",
                                             inputFileKey="devices.json", roleArn=role)["taskId"]
    while (described := iot.describe_thing_registration_task(taskId=task))["status"] == "InProgress":
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    if (described["status"], described["successCount"]) != ("Completed", count):
        raise SystemExit(f"the task ended {described['status']} with {described['successCount']} of {count}: "
                         f"{described.get('message')}")
    sign = _signing_rate(srv, csrs[:1000])
    rows = _insert_rate(srv, count)
    floor = count / sign + count / rows
    print(f"\nbulk registration of {count} devices (thing + certificate from a CSR + attachment + group):")
    print(f"  {'StartThingRegistrationTask to Completed':<44} {seconds:8.1f} s   = "
          f"{count / seconds:7.0f} devices/s   (target: 10,000 within 60 s)")
    print(f"  {'limit: CSR check + signing, one thread':<44} {sign:8.0f} /s")
    print(f"  {'limit: raw INSERTs of the same rows':<44} {rows:8.0f} devices/s")
    print(f"  {'both limits together, one thread':<44} {floor:8.1f} s   "
          f"(the task: {seconds / floor:.1f}x that)")
    registry = srv.server.registry
    arns = [registry.cert_arn(c.certificate_id) for c in registry.list_certificates()
            if c.status == "ACTIVE"][:500]
    started = time.perf_counter()
    registry.on_access_change(arns)
    batch = time.perf_counter() - started
    started = time.perf_counter()
    for arn in arns[:50]:
        registry.on_access_change([arn])
    single = (time.perf_counter() - started) / 50
    print(f"  {'one access change for 500 certificates':<44} {batch * 1000:8.1f} ms   "
          f"(500 changes of one: {single * 500 * 1000:.0f} ms, {single * 500 / batch:.0f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--things", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--bulk", type=int, default=0, metavar="N",
                        help="measure bulk registration of N devices instead")
    parser.add_argument("--claim", type=int, default=0, metavar="N",
                        help="measure fleet provisioning by claim of N devices instead "
                             "(bench/registry_claim.py)")
    parser.add_argument("--claim-workers", type=int, default=16, metavar="W",
                        help="devices provisioning at once with --claim")
    args = parser.parse_args()
    if args.claim:
        with (
            tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp,
            running_server(Path(tmp) / "data", limits=registry_claim.LIFTED) as srv,
        ):
            made = time.perf_counter()
            csrs = _csrs(args.claim)
            print(f"({args.claim} device keys and CSRs made in {time.perf_counter() - made:.1f} s, "
                  "not measured)")
            registry_claim.claim(srv, Path(tmp), args.claim, args.claim_workers, csrs,
                                 lambda sample: _signing_rate(srv, sample))
        return
    if args.bulk:
        with (
            tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp,
            running_server(Path(tmp) / "data") as srv,
        ):
            bulk(srv, args.bulk)
        return
    with (
        tempfile.TemporaryDirectory(prefix="overair-bench-") as tmp,
        running_server(Path(tmp) / "data") as srv,
    ):
        root = Path(tmp)
        if not srv.server._changes_in_place():
            raise SystemExit("the broker does not take access changes on its control topic (plugin missing?)")
        bulk_fleet(srv, 0, 100)
        srv.server.access.changed()
        small = measure(srv, root, "100 things", args.changes, 100)
        started = time.perf_counter()
        bulk_fleet(srv, 100, args.things - 100)
        srv.server.access.changed()
        print(
            f"\n(set-up: {args.things} things with certificates inserted and enforced in "
            f"{time.perf_counter() - started:.1f} s)"
        )
        large = measure(srv, root, f"{args.things} things", args.changes, args.things)
    print(
        f"\naccess change at {args.things} things / at 100: {large['change'] / small['change']:.2f}x "
        f"(target: within 2x); at {args.things} things "
        f"{large['change'] / large['create']:.2f}x a CreateThing "
        f"(target: within 3x); whole-file reload at {args.things}: {large['full'] * 1000:.0f} ms "
        f"({large['full'] / large['change']:.0f}x a change); revocation "
        f"{large['revoke'] * 1000:.0f} ms (target: under 1 s); a 100-item page deep in {args.things} things "
        f"{large['last'] / small['first']:.2f}x the first page with 100 things (target: within 2x)"
    )


if __name__ == "__main__":
    main()
