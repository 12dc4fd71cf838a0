"""Starts `cpis dev` (the real binary, built by tests/run.sh) on a free port for the suite."""
import os
import pathlib
import socket
import subprocess
import tempfile
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cpis_dev():
    binary = TARGET / "debug" / "cpis"
    assert binary.exists(), f"{binary} missing: run `cargo build --bins` (tests/run.sh does)"
    data_dir = tempfile.mkdtemp(prefix="cpis-interop-")
    address = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(data_dir, "cpis-dev.log"), "w")
    proc = subprocess.Popen([str(binary), "dev", "--data-dir", data_dir, "--listen", address],
                            stdout=log, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(address)
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.time() + 30
    while True:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING:
                break
        except grpc.RpcError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"cpis dev did not become SERVING; log in {log.name}")
        time.sleep(0.2)
    yield {"address": address, "channel": channel, "data_dir": data_dir, "binary": binary}
    channel.close()
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "cpis dev did not exit cleanly on SIGTERM"
