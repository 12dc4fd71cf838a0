"""Starts `cpis dev` (the real binary, built by tests/run.sh) on a free port for the suite, once
over plaintext and once over TLS (a CA and a server certificate made here with `cryptography`),
and generates Python stubs from `proto/` with grpcio-tools into a temporary directory, the way
an integrator would. Nothing generated is ever written into the repository."""
import datetime
import importlib
import ipaddress
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from importlib import resources

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PROTO = ROOT / "proto"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def pb():
    """The generated `cpis.gateway.v1` modules (messages and stubs), by short name."""
    out = tempfile.mkdtemp(prefix="cpis-stubs-")
    sources = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "cpis" / "gateway" / "v1").glob("*.proto"))
    assert sources, "no public .proto files found"
    from grpc_tools import protoc
    well_known = str(resources.files("grpc_tools") / "_proto")
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO}", f"-I{well_known}",
                      f"--python_out={out}", f"--grpc_python_out={out}", *sources])
    assert rc == 0, f"protoc failed on {sources}"
    sys.path.insert(0, out)
    modules = {}
    for source in sources:
        name = pathlib.Path(source).stem
        base = "cpis.gateway.v1." + name
        modules[name] = importlib.import_module(base + "_pb2")
        modules[name + "_grpc"] = importlib.import_module(base + "_pb2_grpc")
    yield modules
    sys.path.remove(out)
    shutil.rmtree(out, ignore_errors=True)


def make_tls(directory):
    """A CA and a server certificate for localhost / 127.0.0.1 signed by it (P-256)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpis interop test CA")])
    ca = (x509.CertificateBuilder()
          .subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": os.path.join(directory, "ca.pem"), "cert": os.path.join(directory, "server.pem"),
             "key": os.path.join(directory, "server.key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="session", params=["plaintext", "tls"])
def cpis_dev(request):
    binary = TARGET / "debug" / "cpis"
    assert binary.exists(), f"{binary} missing: run `cargo build --bins` (tests/run.sh does)"
    data_dir = tempfile.mkdtemp(prefix=f"cpis-interop-{request.param}-")
    address = f"127.0.0.1:{free_port()}"
    command = [str(binary), "dev", "--data-dir", data_dir, "--listen", address]
    tls = None
    if request.param == "tls":
        tls = make_tls(data_dir)
        command += ["--tls-cert", tls["cert"], "--tls-key", tls["key"]]
    log = open(os.path.join(data_dir, "cpis-dev.log"), "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def new_channel():
        if tls is None:
            return grpc.insecure_channel(address)
        with open(tls["ca"], "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        return grpc.secure_channel(address, credentials)

    channel = new_channel()
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

    def token(user, org, role, *activities, ttl="1h"):
        args = [str(binary), "token", "--data-dir", data_dir, "--user", user, "--org", org,
                "--role", role, "--ttl", ttl]
        for a in activities:
            args += ["--activity", a]
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
        lines = out.strip().splitlines()
        assert len(lines) == 1, f"cpis token printed more than the token: {out!r}"
        return lines[0]

    yield {"address": address, "channel": channel, "data_dir": data_dir, "binary": binary,
           "mode": request.param, "tls": tls, "new_channel": new_channel, "token": token}
    channel.close()
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "cpis dev did not exit cleanly on SIGTERM"
