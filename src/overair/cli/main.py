"""`overair`: set up, run and operate an overair server."""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from overair.cli import audit, backup, common, db, fleet, iam, image, ota, signing
from overair.cli import bundle as bundle_cli
from overair.cli import events as events_cli
from overair.cli.common import api_errors, print_error
from overair.cli.logs import LogFormat, configure_logging
from overair.core.errors import OverairError

app = typer.Typer(help="overair: self-hosted secure over-the-air updates for IoT fleets.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
thing_app = typer.Typer(help="Devices in the registry.", no_args_is_help=True)
app.add_typer(thing_app, name="thing")


ProfileOption = Annotated[str | None, typer.Option(
    "--profile", envvar="AWS_PROFILE", help="AWS profile for API commands run without --data-dir.")]
EndpointOption = Annotated[str | None, typer.Option(
    "--endpoint-url", help="The overair server's API URL (else AWS_ENDPOINT_URL or the profile's "
                           "endpoint_url).")]
RegionOption = Annotated[str | None, typer.Option(
    "--region", help="Region (else AWS_REGION, AWS_DEFAULT_REGION or the profile's).")]


@app.callback()
def connect(profile: ProfileOption = None, endpoint_url: EndpointOption = None,
            region: RegionOption = None) -> None:
    """overair: self-hosted secure over-the-air updates for IoT fleets. API commands run on
    the server host with --data-dir, or anywhere as an IAM user of an AWS profile."""
    common.connection.profile = profile
    common.connection.endpoint_url = endpoint_url
    common.connection.region = region


signing.register(app)
audit.register(app)
iam.register(app)
db.register(app)
ota.register(app)
fleet.register(app, thing_app)
image.register(app)
backup.register(app)
bundle_cli.register(app)
events_cli.register(app)
console = Console(stderr=True)

DataDirOption = Annotated[Path, typer.Option("--data-dir", help="The server's data directory.",
                                             envvar="OVERAIR_DATA_DIR")]

# Top-level packages of the `server` extra (pyproject.toml): `pip install overair` alone
# gives the device agent, and these commands then need the extra.
_SERVER_EXTRA_MODULES = frozenset({"alembic", "boto3", "botocore", "gmqtt", "pkcs11", "psycopg", "sqlalchemy",
                                   "starlette", "uvicorn", "prometheus_client"})


def main() -> None:
    """The `overair` command: the CLI, with a clear answer instead of a traceback when a
    command needs the server extra that is not installed."""
    try:
        app()
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _SERVER_EXTRA_MODULES:
            raise
        print_error(console, "MissingServerExtra",
                    f"this command needs overair's server extra ({exc.name} is not installed): "
                    "pip install 'overair[server]'")
        sys.exit(2)


def _fail(exc: OverairError) -> None:
    print_error(console, exc.code, exc.message)
    raise typer.Exit(2)


@app.command()
def init(data_dir: DataDirOption,
         hostname: Annotated[list[str] | None, typer.Option(
             help="Extra name or address devices use to reach the broker (repeatable).")] = None,
         http_port: int = 8080, mqtt_port: int = 8883,
         download_port: Annotated[int, typer.Option(help="HTTPS port for device downloads.")] = 8443,
         metrics_port: Annotated[int, typer.Option(
             help="Serve Prometheus metrics on this port of the API's host (0: off).")] = 0,
         database_url: Annotated[str, typer.Option(help="PostgreSQL URL; default SQLite.")] = "",
         firmware_bucket: Annotated[list[str] | None, typer.Option(
             help="Bucket the overair-ota service role may read firmware from (repeatable; "
                  "default: firmware).")] = None,
         force: Annotated[bool, typer.Option(help="Destroy an existing data directory.")] = False) -> None:
    """Create a data directory: CAs, certificates, keys, database, admin credentials."""
    from overair.server.bootstrap import DEFAULT_FIRMWARE_BUCKETS, initialize

    try:
        result = initialize(data_dir, hostnames=tuple(hostname or ()), http_port=http_port,
                            mqtt_port=mqtt_port, download_port=download_port, database_url=database_url,
                            metrics_port=metrics_port, force=force,
                            firmware_buckets=tuple(firmware_bucket or DEFAULT_FIRMWARE_BUCKETS))
    except OverairError as exc:
        _fail(exc)
        return
    paths = result.settings.paths
    console.print(f"[green]initialised[/green] {data_dir}")
    console.print(f"  administrator credentials: {paths.credentials} (profile default)")
    console.print(f"  fleet root CA:             {paths.fleet_ca_cert}")
    console.print(f"  code-signing root:         {paths.code_signing_root} "
                  "[yellow](DEVELOPMENT ONLY: import your own for production)[/yellow]")
    console.print(f"  start the server with:     overair serve --data-dir {data_dir}")


@app.command()
def serve(data_dir: DataDirOption,
          http_port: Annotated[int | None, typer.Option(help="HTTP API port.")] = None,
          mqtt_port: Annotated[int | None, typer.Option(help="MQTT (mutual TLS) port.")] = None,
          http_host: Annotated[str | None, typer.Option(help="Address the API binds to.")] = None,
          broker: Annotated[str | None, typer.Option(
              help="Use an existing broker (mqtts://host:port) instead of running Mosquitto; it must "
                   "use overair's ACL and CRL (docs/security.md, External broker).")] = None,
          broker_reload_command: Annotated[str | None, typer.Option(
              help="With --broker: the command that makes it reload overair's ACL and CRL "
                   "(e.g. 'systemctl reload mosquitto').")] = None,
          tls_cert: Annotated[Path | None, typer.Option(help="HTTPS certificate for the API.")] = None,
          tls_key: Annotated[Path | None, typer.Option(help="HTTPS key for the API.")] = None,
          database_url: Annotated[str | None, typer.Option(help="PostgreSQL URL.")] = None,
          download_url: Annotated[str | None, typer.Option(
              help="The download endpoint's address as devices reach it, https://host[:port] (the "
                   "port is left out of URLs when it is 443, as FreeRTOS HTTP devices need). Default: "
                   "https://<first --hostname of init>:<download port>.")] = None,
          metrics_port: Annotated[int | None, typer.Option(
              help="Serve Prometheus metrics at http://<http host>:PORT/metrics (0: off; default: "
                   "overair.toml's metrics_port).")] = None,
          log_format: Annotated[LogFormat, typer.Option(help="Log lines as text or JSON.")] = LogFormat.TEXT,
          trusted_proxy: Annotated[list[str] | None, typer.Option(
              help="A reverse proxy (address or CIDR) whose X-Forwarded-For/-Proto are believed; "
                   "repeat for several. Default: none, only the connection counts.")] = None,
          verbose: bool = False) -> None:
    """Run the server: HTTP API, device service and a Mosquitto broker it configures."""
    from overair.server.app import Server
    from overair.server.settings import load_settings

    configure_logging(log_format, verbose=verbose)
    try:
        settings = load_settings(data_dir, http_port=http_port, mqtt_port=mqtt_port, http_host=http_host,
                                 broker_url=broker, http_tls_cert=tls_cert, http_tls_key=tls_key,
                                 broker_reload_command=tuple(shlex.split(broker_reload_command))
                                 if broker_reload_command else None,
                                 database_url=database_url, download_public_url=download_url,
                                 metrics_port=metrics_port,
                                 trusted_proxies=tuple(trusted_proxy) if trusted_proxy else None)
        server = Server(settings)
    except OverairError as exc:
        _fail(exc)
        return

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await server.run(stop)

    try:
        asyncio.run(main())
    except OverairError as exc:
        _fail(exc)


@app.command("broker-config")
def broker_config(data_dir: DataDirOption,
                  listen_host: Annotated[str, typer.Option(
                      help="Address the external broker listens on for devices.")] = "127.0.0.1",
                  listen_port: Annotated[int, typer.Option(help="Its port for devices.")] = 8883) -> None:
    """Print the Mosquitto settings an external broker (serve --broker) needs, and create the
    ACL file it reads (granting nothing until `overair serve` writes the real one)."""
    from overair.server.files import write_atomic
    from overair.server.gateway.broker import render_external_config
    from overair.server.settings import load_settings

    try:
        paths = load_settings(data_dir).paths
    except OverairError as exc:
        _fail(exc)
        return
    acl = paths.broker / "acl"
    if not acl.exists():
        write_atomic(acl, b"# overair serve writes this file; until then it grants nothing.\n", mode=0o640)
    sys.stdout.write(render_external_config(
        host=listen_host, port=listen_port, ca=paths.fleet_ca_cert.resolve(),
        cert=paths.broker_cert.resolve(), key=paths.broker_key.resolve(), crl=paths.crl.resolve(),
        acl=acl.resolve()))


def _deployment_keys(path: Path) -> bytes | None:
    """The deployment public keys for bundles (F1 F2); None for a data directory made
    before deployment keys (its server creates them at its next start)."""
    return path.read_bytes() if path.exists() else None


@thing_app.command("create")
def thing_create(name: str, out: Annotated[Path, typer.Option(help="Where to write the device bundle.")],
                 data_dir: DataDirOption,
                 group: Annotated[str | None, typer.Option(help="Add the thing to this group.")] = None,
                 factory_image: Annotated[Path | None, typer.Option(
                     help="The image the device runs before its first update.")] = None) -> None:
    """Register a device and write the bundle its agent starts from. Without
    --factory-image the agent has no image to boot until its first update arrives: give
    it the image the device ships with (it is copied into the bundle)."""
    from overair.cli.client import ApiClients
    from overair.cli.provisioning import provision_thing
    from overair.server.settings import DataDir, load_settings

    with api_errors():
        load_settings(data_dir)  # a clear error if it is not a data directory
        clients = ApiClients.from_data_dir(data_dir)
        paths = DataDir(data_dir)
        config = provision_thing(clients.client("iot"), name, out,
                                 fleet_ca_pem=paths.fleet_ca_cert.read_bytes(),
                                 code_signing_roots_pem=paths.code_signing_root.read_bytes(),
                                 revocation_signer_pem=paths.revocation_signer_cert.read_bytes(),
                                 deployment_keys_pem=_deployment_keys(paths.deployment_keys),
                                 group=group, factory_image=factory_image)
    console.print(f"[green]created[/green] thing {name}; start its agent with: "
                  f"overair-agent run --config {config}")


@app.command()
def demo(devices: Annotated[int, typer.Option(help="How many simulated devices.")] = 5,
         json_output: Annotated[bool, typer.Option("--json", help="End with a JSON summary line.")] = False,
         timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 120.0) -> None:
    """A complete signed rollout to a simulated fleet, on a throwaway server."""
    from overair.cli.demo import run_demo

    if devices < 1:
        console.print("[red]error[/red]: --devices must be at least 1")
        raise typer.Exit(2)
    ok = run_demo(devices, json_output=json_output, timeout=timeout)
    sys.exit(0 if ok else 1)
