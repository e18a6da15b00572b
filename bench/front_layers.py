"""What each layer of the nginx download front costs nginx, with overair left out.

One nginx (Debian's, `worker_processes auto`) serves the same 1 MiB file over TLS to N
clients (bench/fleet_https.py `fetch`: one kept-alive connection per client, one Range
GET per 4 KiB block, each client its own URL), configured as:

- `plain`: the file from disk (the limit bench/fleet.py compares with);
- `decision+file`: every request first passes `auth_request`, answered by a location of
  the same nginx that returns 204 at once and cached as the front caches overair's
  decisions (keyed on the URI, fresh 1 s, stale-while-revalidate 1 s), then the file
  from disk with `open_file_cache` (the front's checked copies, delivery/front_files.py);
- `decision+slices`: the same decision, then the bytes from a slice cache filled from
  the same nginx (the front before the copies are in).

It prints each run's time and nginx's CPU. What it leaves out: overair's decisions
(their CPU and their latency), `limit_req`, the range checks, the devices' MQTT.

    .venv/bin/python -m bench.front_layers [--devices 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

from tests.server_harness import free_port

from bench import fleet_https

LAYERS = ("plain", "decision+file", "decision+slices")
DECISION = """
        location = /_decision {
            internal;
            proxy_pass http://answers/decide$request_uri;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Range "";
            proxy_set_header Connection "";
            proxy_cache decisions;
            proxy_cache_key "$request_uri";
            open_file_cache max=16384 inactive=10s;
            proxy_cache_valid 204 1s;
            proxy_cache_background_update on;
            proxy_cache_lock on;
        }"""


def _location(layer: str, files: Path) -> str:
    if layer == "plain":
        return f"location /ota/ {{ root {files}; try_files /firmware.bin =404; }}"
    if layer == "decision+file":
        return (f"location /ota/ {{ auth_request /_decision; open_file_cache max=1024 inactive=60s; "
                f"root {files}; try_files /firmware.bin =404; }}" + DECISION)
    return ("location /ota/ { auth_request /_decision; slice 262144; proxy_cache slices; "
            'proxy_cache_key "$uri $slice_range"; proxy_cache_valid 200 206 10m; proxy_cache_lock on; '
            "proxy_set_header Range $slice_range; proxy_set_header Connection \"\"; "
            "proxy_pass http://answers; }" + DECISION)


def run(layer: str, devices: int, processes: int, size: int) -> fleet_https.HttpsRun:
    root = Path(tempfile.mkdtemp(prefix=f"front-layers-{layer.replace('+', '-')}-"))
    image = os.urandom(size)
    fleet_https.nginx_workdir(root, image, "bench front layers CA")
    for sub in ("tmp", "slices", "decisions"):
        (root / sub).mkdir()
    port = free_port()
    temp = "".join(f"    {kind}_temp_path {root / 'tmp' / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (root / "nginx.conf").write_text(f"""{"user root;" if os.geteuid() == 0 else ""}
worker_processes auto;
daemon off;
pid {root / 'nginx.pid'};
error_log {root / 'error.log'} error;
worker_rlimit_nofile 65536;
events {{ worker_connections 65536; }}
http {{
    access_log off;
{temp}    keepalive_requests 1000000;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_cache_path {root / 'slices'} levels=1:2 keys_zone=slices:16m max_size=1g use_temp_path=off;
    proxy_cache_path {root / 'decisions'} levels=1:2 keys_zone=decisions:32m max_size=256m inactive=30s
                     use_temp_path=off;
    upstream answers {{ server unix:{root / 'answers.sock'}; keepalive 512; }}
    server {{
        listen unix:{root / 'answers.sock'} backlog=4096;
        location /decide/ {{
            add_header Cache-Control "max-age=1, stale-while-revalidate=1";
            return 204;
        }}
        location /ota/ {{ root {root / 'files'}; try_files /firmware.bin =404; }}
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {root / 'server.crt'};
        ssl_certificate_key {root / 'server.key'};
        {_location(layer, root / 'files')}
    }}
}}
""")
    process = fleet_https.start_nginx(root, port, lambda: _tail(root / "error.log"))
    try:
        urls = [f"https://127.0.0.1:{port}/ota/firmware/app.bin?device={i}" for i in range(devices)]
        return fleet_https.fetch(root / "ca.pem", port, urls, size, hashlib.sha256(image).hexdigest(),
                                 processes, 300.0, lambda: fleet_https.nginx_cpu(process.pid))
    finally:
        process.terminate()
        process.wait(10)


def _tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-3:])
    except OSError:
        return "(no log)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--device-processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="each layer this many times, interleaved")
    args = parser.parse_args()
    plain: list[float] = []
    for _ in range(args.rounds):
        for layer in LAYERS:
            result = run(layer, args.devices, args.device_processes, 1024 * 1024)
            if layer == "plain":
                plain.append(result.seconds)
            ratio = min(plain) / result.seconds if plain and result.seconds else 0.0
            print(f"{layer:16s} {result.seconds:6.2f} s  nginx CPU {result.cpu_server_s:5.1f} s  clients CPU "
                  f"{result.cpu_clients_s:5.1f} s  complete {result.complete} {result.failures[:1]} "
                  f"plain nginx (fastest so far) / this: {ratio:.2f}", flush=True)


if __name__ == "__main__":
    main()
