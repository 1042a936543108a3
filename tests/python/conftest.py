"""Fixtures for Python clients of a real crossflow gateway.

Importing this file generates Python stubs for every
`proto/crossflow/**/*.proto` into `tests/python/gen/` (gitignored) and puts
that directory on `sys.path`, so a test file simply does
`from crossflow.v1 import referral_pb2, referral_pb2_grpc`.

The `gateway` fixture (one per session) makes the demo federation with the real
binary (`crossflow demo --keep DIR`: dev PKI, keys, crossflow.toml, data), sets
its listen address to a free loopback port, starts `crossflow serve` on it,
waits until gRPC health says SERVING, and hands out mTLS channels per partner.
The demo's partners are mombaby-live, homedecor-live and beauty-live, with
agreements mombaby<->homedecor and homedecor<->beauty (and none between
mombaby and beauty); `gateway.settings` is the parsed config. Tests share one
gateway, so each test uses fresh subjects (`support.new_subject()`).

Environment:
  CROSSFLOW_BIN  the `crossflow` binary (default: target/debug/crossflow).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import grpc
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = HERE / "gen"

# How long the gateway may take to answer health SERVING after it starts.
STARTUP_TIMEOUT_SECS = 30.0
# How long it may take to stop after SIGTERM before it is killed.
SHUTDOWN_TIMEOUT_SECS = 10.0
# Name in the gateway certificate (it is issued for 127.0.0.1 and localhost).
SERVER_NAME = "localhost"


# === stubs ===


def _generate_stubs() -> None:
    """Compiles the repo's protos with grpcio-tools into GEN_DIR."""
    from grpc_tools import protoc

    protos = sorted(
        p.relative_to(PROTO_DIR).as_posix()
        for p in (PROTO_DIR / "crossflow").rglob("*.proto")
    )
    if not protos:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    # Well-known types ship with grpcio-tools; google/rpc, google/type... ship
    # (as .proto next to their _pb2 modules) with googleapis-common-protos,
    # whose Python modules the generated code then imports.
    wkt = resources.files("grpc_tools") / "_proto"
    import google.rpc  # googleapis-common-protos

    googleapis = Path(next(iter(google.rpc.__path__))).parent.parent

    shutil.rmtree(GEN_DIR, ignore_errors=True)
    GEN_DIR.mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={wkt}",
        f"--proto_path={googleapis}",
        f"--python_out={GEN_DIR}",
        f"--pyi_out={GEN_DIR}",
        f"--grpc_python_out={GEN_DIR}",
        *protos,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed ({rc}) on {protos}")


_generate_stubs()
sys.path.insert(0, str(GEN_DIR))

from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


# === the gateway process ===


class GatewayExited(RuntimeError):
    """The gateway process stopped before it was ready."""


@dataclass
class Gateway:
    """A running `crossflow serve` and mTLS channels to it, one per partner."""

    addr: str
    """`127.0.0.1:PORT` the gateway listens on."""
    dir: Path
    """Everything the federation has: pki/, keys/, data/, crossflow.toml, gateway.log."""
    pki_dir: Path
    """`ca.crt`, `gateway.crt/.key`, `<partner>.crt/.key`."""
    config: Path
    settings: dict = field(repr=False)
    """The config the gateway serves, parsed (partners, agreements...)."""
    federation: str
    partners: tuple[str, ...]
    process: subprocess.Popen = field(repr=False)
    log_path: Path = field(repr=False)
    _channels: dict[str, grpc.Channel] = field(default_factory=dict, repr=False)

    def credentials(self, partner: str) -> grpc.ChannelCredentials:
        """mTLS credentials of `partner`: the dev CA and its client cert."""
        return _credentials(self.pki_dir, partner)

    def channel(self, partner: str) -> grpc.Channel:
        """A (cached) channel that authenticates as `partner`."""
        if partner not in self._channels:
            self._channels[partner] = _channel(self.addr, self.credentials(partner))
        return self._channels[partner]

    @property
    def channels(self) -> dict[str, grpc.Channel]:
        """A channel for every partner of the federation."""
        return {p: self.channel(p) for p in self.partners}

    def agreement(self, a: str, b: str) -> dict:
        """The agreement between partners `a` and `b` (KeyError if none)."""
        for ag in self.settings.get("agreements", []):
            if set(ag["between"]) == {a, b}:
                return ag
        raise KeyError(f"no agreement between {a} and {b}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()
        _stop(self.process)


def _credentials(pki_dir: Path, partner: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki_dir / "ca.crt").read_bytes(),
        private_key=(pki_dir / f"{partner}.key").read_bytes(),
        certificate_chain=(pki_dir / f"{partner}.crt").read_bytes(),
    )


def _channel(addr: str, creds: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(
        addr, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
    )


def crossflow_bin() -> Path:
    env = os.environ.get("CROSSFLOW_BIN")
    path = Path(env) if env else ROOT / "target" / "debug" / "crossflow"
    if not path.is_absolute():
        path = ROOT / path
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"crossflow binary not found at {path}: build it with "
            "`cargo build -p crossflow-gateway --bin crossflow` or set CROSSFLOW_BIN"
        )
    return path


def _make_federation(binary: Path, dir: Path) -> None:
    """Writes the demo federation (pki/, keys/, crossflow.toml) into `dir`."""
    args = [str(binary), "demo", "--keep", str(dir)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if res.returncode == 0:
        return
    # The demo writes its federation before it drives traffic; a failure in
    # the traffic is the demo step's to report (CI runs it), not a reason to
    # skip the client tests. `serve` below still validates the config.
    needed = [dir / "crossflow.toml", dir / "pki" / "ca.crt", dir / "keys"]
    missing = [str(p) for p in needed if not p.exists()]
    output = f"{' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}"
    if missing:
        raise RuntimeError(f"{output}\nand did not write {', '.join(missing)}")
    warnings.warn(f"using the federation files anyway: {output}", stacklevel=2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_listen(config_toml: str, listen: str) -> str:
    """The config with `[gateway] listen` set to `listen`."""
    new, n = re.subn(
        r'^listen\s*=\s*"[^"]*"\s*$',
        f'listen = "{listen}"',
        config_toml,
        count=1,
        flags=re.MULTILINE,
    )
    if n != 1:
        raise RuntimeError("no `listen = \"...\"` line in the demo's crossflow.toml")
    return new


def _wait_serving(
    proc: subprocess.Popen, addr: str, creds, log_path: Path, log_start: int
) -> None:
    """Polls gRPC health (bounded) until the referral service is SERVING."""

    def log() -> str:
        with log_path.open("rb") as f:
            f.seek(log_start)
            return f.read().decode(errors="replace")

    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    request = health_pb2.HealthCheckRequest(service="crossflow.v1.ReferralService")
    last: Exception | None = None
    with _channel(addr, creds) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise GatewayExited(
                    f"crossflow serve exited {proc.returncode} before serving:\n"
                    + log()
                )
            try:
                resp = health.Check(request, timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = RuntimeError(f"health status {resp.status}")
            except grpc.RpcError as e:
                last = e
            time.sleep(0.1)
    raise RuntimeError(
        f"gateway on {addr} not SERVING after {STARTUP_TIMEOUT_SECS}s (last: {last}):\n"
        + log()
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_gateway(dir: Path, attempts: int = 3) -> Gateway:
    """Serves the demo federation from `dir`; see the module doc."""
    binary = crossflow_bin()
    # The demo's federation is the one every part of crossflow keeps working
    # (the README's first command), so its config follows the schema.
    _make_federation(binary, dir)
    config = dir / "crossflow.toml"
    pki_dir = dir / "pki"
    template = config.read_text()
    settings = tomllib.loads(template)
    federation = settings["gateway"]["federation"]
    partners = tuple(p["id"] for p in settings["partners"])

    log_path = dir / "gateway.log"
    creds = _credentials(pki_dir, partners[0])
    for attempt in range(1, attempts + 1):
        # Another process may take the free port before the gateway binds it:
        # then the gateway exits at once and we try another port.
        addr = f"127.0.0.1:{_free_port()}"
        config.write_text(_with_listen(template, addr))
        log_start = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(binary), "serve", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Plain text logs (tracing-subscriber honours NO_COLOR).
                env={**os.environ, "NO_COLOR": "1"},
            )
        try:
            _wait_serving(proc, addr, creds, log_path, log_start)
        except GatewayExited as e:
            if attempt == attempts or "binding" not in str(e):
                raise
            continue
        except BaseException:
            _stop(proc)
            raise
        return Gateway(
            addr=addr,
            dir=dir,
            pki_dir=pki_dir,
            config=config,
            settings=tomllib.loads(config.read_text()),
            federation=federation,
            partners=partners,
            process=proc,
            log_path=log_path,
        )
    raise AssertionError("unreachable")


# === fixtures ===


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    gw = start_gateway(tmp_path_factory.mktemp("federation"))
    try:
        yield gw
    finally:
        gw.close()
    # A gateway that died during the session failed every later test anyway;
    # one that exits non-zero on SIGTERM has a shutdown bug worth seeing.
    assert gw.process.returncode == 0, (
        f"crossflow serve exited {gw.process.returncode}:\n{gw.log()}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Attaches the tail of the gateway log to the report of a failed test."""
    report = yield
    gw = getattr(item, "funcargs", {}).get("gateway")
    if report.failed and isinstance(gw, Gateway):
        tail = "\n".join(gw.log().splitlines()[-60:])
        report.sections.append(("crossflow serve log (tail)", tail))
    return report
