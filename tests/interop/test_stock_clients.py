"""Stock gRPC clients (grpcio-health-checking, grpcio-reflection) against `cpis dev`."""
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool

PUBLIC = ["cpis.gateway.v1.ChildProtection", "cpis.gateway.v1.LocalAuthority",
          "cpis.gateway.v1.Audit", "cpis.gateway.v1.Administration"]


def test_health_reports_serving_for_the_server_and_each_public_service(cpis_dev):
    stub = health_pb2_grpc.HealthStub(cpis_dev["channel"])
    for service in [""] + PUBLIC:
        status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_every_public_service_and_resolves_their_methods(cpis_dev):
    db = ProtoReflectionDescriptorDatabase(cpis_dev["channel"])
    services = set(db.get_services())
    for service in PUBLIC:
        assert service in services, services
    assert not any(s.startswith(("cpis.flag.", "cpis.access.", "cpis.attendance.")) for s in services)
    pool = DescriptorPool(db)
    lookup = pool.FindServiceByName("cpis.gateway.v1.ChildProtection").FindMethodByName("LookupChild")
    assert lookup.input_type.full_name == "cpis.gateway.v1.LookupChildRequest"
    fields = {f.name for f in lookup.output_type.fields}
    assert {"nhs_number", "flagged", "flags", "attendance", "lookup_id"} <= fields
    upload = pool.FindServiceByName("cpis.gateway.v1.LocalAuthority").FindMethodByName("UploadFlags")
    assert upload.client_streaming and not upload.server_streaming
