"""The walkthrough's calls through stubs generated from `proto/` by grpcio-tools, as a hospital or
council integrator would make them, against `cpis dev` over plaintext and over TLS; rich error
details decoded with grpcio-status."""
import base64
import itertools
import json
import os
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

ADMIN_ORG, LA, OTHER_LA, TRUST, SITE, OUTSIDER = "X26", "706", "709", "RQX", "RQX01", "RYY"
AUDIT_ACTIONS = {"ListAuditEvents", "GetCheckpoint", "VerifyAuditLog"}
_serial = itertools.count(1)


def nhs_number():
    """A fresh valid NHS number (Modulus 11 check digit) for each call."""
    while True:
        first_nine = f"{999_300_000 + next(_serial):09d}"
        total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1)))
        check = 11 - total % 11
        if check == 11:
            check = 0
        if check != 10:
            return first_nine + str(check)


def auth(token):
    return [("authorization", f"Bearer {token}")]


class World:
    """Stubs, tokens and onboarded organisations for one running `cpis dev`."""

    def __init__(self, dev, pb):
        self.pb = pb
        self.t = pb["types"]
        ch = dev["channel"]
        self.lookup = pb["child_protection_grpc"].ChildProtectionStub(ch)
        self.la = pb["local_authority_grpc"].LocalAuthorityStub(ch)
        self.audit = pb["audit_grpc"].AuditStub(ch)
        self.admin = pb["administration_grpc"].AdministrationStub(ch)
        token = dev["token"]
        self.admin_token = token("admin", ADMIN_ORG, "R0001", "CPIS_ADMIN")
        self.auditor_token = token("caldicott", ADMIN_ORG, "R5105", "CPIS_AUDIT")
        self.la_token = token("la.worker", LA, "R9000", "CPIS_LA_MANAGE")
        self.clinician_token = token("dr.jones", TRUST, "R8000", "B0107")
        self.gp_token = token("dr.gp", TRUST, "R8000", "B0170")
        self.outsider_token = token("dr.out", OUTSIDER, "R8000", "B0107")
        admin = pb["administration"]
        for ods, name, kind, onboarded in [
            (LA, "Tower Hamlets", self.t.ORGANISATION_KIND_LOCAL_AUTHORITY, True),
            (OTHER_LA, "Lancashire", self.t.ORGANISATION_KIND_LOCAL_AUTHORITY, True),
            (TRUST, "Homerton University Hospital", self.t.ORGANISATION_KIND_HEALTH, True),
            (OUTSIDER, "A trust not yet onboarded", self.t.ORGANISATION_KIND_HEALTH, False),
        ]:
            org = self.admin.UpsertOrganisation(
                admin.UpsertOrganisationRequest(ods_code=ods, name=name, kind=kind, onboarded=onboarded),
                metadata=auth(self.admin_token), timeout=10)
            assert (org.ods_code, org.onboarded) == (ods, onboarded)

    def record(self, nhs, flag_type=None, start="2025-01-10", **over):
        fields = dict(nhs_number=nhs, flag_type=flag_type or self.t.FLAG_TYPE_CPP, start_date=start,
                      emergency_phone="020 7364 4079", office_hours_phone="020 7364 5006",
                      email="mash@example.org")
        fields.update(over)
        return self.t.FlagRecord(**fields)

    def lookup_request(self, nhs, kind=None, site=SITE, setting=None, request_id=""):
        cp = self.pb["child_protection"]
        return cp.LookupChildRequest(
            nhs_number=nhs,
            access_kind=self.t.ACCESS_KIND_UNSCHEDULED if kind is None else kind,
            setting=self.t.Setting(ods_code=site,
                                   setting_type=self.t.SETTING_TYPE_EMERGENCY_DEPARTMENT
                                   if setting is None else setting),
            request_id=request_id)

    def upload(self, upload_id, *batches):
        la = self.pb["local_authority"]
        messages = [la.UploadFlagsRequest(upload_id=upload_id, records=batch) for batch in batches]
        return self.la.UploadFlags(iter(messages), metadata=auth(self.la_token), timeout=20)

    def audit_count(self):
        """Audit records of everything but the auditor's own calls (which are audited too)."""
        audit = self.pb["audit"]
        count, token = 0, ""
        while True:
            page = self.audit.ListAuditEvents(
                audit.ListAuditEventsRequest(page_size=1000, page_token=token),
                metadata=auth(self.auditor_token), timeout=10)
            count += sum(1 for e in page.events if e.action not in AUDIT_ACTIONS)
            token = page.next_page_token
            if not token:
                return count


@pytest.fixture(scope="session")
def world(cpis_dev, pb):
    return World(cpis_dev, pb)


def test_the_walkthrough_runs_through_generated_stubs(world, pb):
    w, la = world, pb["local_authority"]
    child, unborn = nhs_number(), nhs_number()

    # The LA uploads its daily file as a client stream of two messages.
    report = w.upload("daily-2025-01-10",
                      [w.record(child)],
                      [w.record(unborn, w.t.FLAG_TYPE_UCPP, "2025-01-01", due_date="2099-03-01")])
    assert report.status == w.t.UPLOAD_STATUS_SUCCESS, report
    assert (report.accepted, report.rejected) == (2, 0)
    assert [r.index for r in report.results] == [0, 1]
    assert all(r.code == w.t.RECORD_CODE_ACCEPTED and r.message == "" for r in report.results)

    # A clinician in the ED looks the child up: flagged, with whom to call, no attendance yet.
    first = w.lookup.LookupChild(w.lookup_request(f"{child[:3]} {child[3:6]} {child[6:]}"),
                                 metadata=auth(w.clinician_token), timeout=10)
    assert first.nhs_number == child and first.flagged
    (flag,) = first.flags
    assert flag.flag_type == w.t.FLAG_TYPE_CPP and flag.active
    assert flag.local_authority.ods_code == LA
    assert flag.local_authority.name == "Tower Hamlets"
    assert flag.local_authority.emergency_phone == "020 7364 4079"
    assert first.attendance.available and first.attendance.last_30_days == 0
    assert first.lookup_id and first.looked_up_at.seconds > 0

    # The second lookup sees the first as an attendance.
    second = w.lookup.LookupChild(w.lookup_request(child), metadata=auth(w.clinician_token), timeout=10)
    assert second.attendance.last_30_days == 1 and second.attendance.last_365_days == 1
    (seen,) = second.attendance.recent
    assert (seen.ods_code, seen.setting_type) == (SITE, w.t.SETTING_TYPE_EMERGENCY_DEPARTMENT)

    # A silent read from general practice notifies nobody.
    silent = w.lookup.LookupChild(
        w.lookup_request(unborn, w.t.ACCESS_KIND_SCHEDULED, "RQX02", w.t.SETTING_TYPE_GP_PRACTICE),
        metadata=auth(w.gp_token), timeout=10)
    assert silent.flagged and silent.flags[0].flag_type == w.t.FLAG_TYPE_UCPP

    # The LA lists its flags and its notifications: one per notifying lookup, none for the silent one.
    flags = w.la.ListFlags(la.ListFlagsRequest(page_size=1000), metadata=auth(w.la_token), timeout=10)
    assert {child, unborn} <= {f.nhs_number for f in flags.flags}
    listed = w.la.ListNotifications(la.ListNotificationsRequest(from_start=True, page_size=1000),
                                    metadata=auth(w.la_token), timeout=10).notifications
    mine = [n for n in listed if n.nhs_number in (child, unborn)]
    assert [n.lookup_id for n in mine] == [first.lookup_id, second.lookup_id], mine
    assert all(n.kind == w.t.NOTIFICATION_KIND_ACCESS and n.user_id == "dr.jones"
               and n.ods_code == SITE for n in mine)
    cursors = [n.cursor for n in listed]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)

    # Watching from the start delivers the same notifications, in cursor order, then waits.
    watch = w.la.WatchNotifications(la.WatchNotificationsRequest(from_start=True),
                                    metadata=auth(w.la_token), timeout=15)
    watched = []
    for n in watch:
        watched.append(n)
        if n.lookup_id == second.lookup_id:
            break
    watch.cancel()
    assert [n.cursor for n in watched] == cursors[:len(watched)]

    # A lookup made while watching arrives on the open stream.
    watch = w.la.WatchNotifications(la.WatchNotificationsRequest(after_cursor=cursors[-1]),
                                    metadata=auth(w.la_token), timeout=15)
    third = w.lookup.LookupChild(w.lookup_request(child), metadata=auth(w.clinician_token), timeout=10)
    live = next(iter(watch))
    watch.cancel()
    assert (live.lookup_id, live.cursor) == (third.lookup_id, cursors[-1] + 1)

    # Acknowledging moves the LA's cursor; listing with after_cursor 0 then starts after it.
    ack = w.la.AcknowledgeNotifications(la.AcknowledgeNotificationsRequest(up_to_cursor=live.cursor),
                                        metadata=auth(w.la_token), timeout=10)
    assert (ack.acknowledged_cursor, ack.backlog) == (live.cursor, 0)
    rest = w.la.ListNotifications(la.ListNotificationsRequest(page_size=10),
                                  metadata=auth(w.la_token), timeout=10)
    assert list(rest.notifications) == []

    # The auditor finds every decision about the child, verifies the chain and a checkpoint.
    audit = pb["audit"]
    events = w.audit.ListAuditEvents(audit.ListAuditEventsRequest(nhs_number=child, page_size=100),
                                     metadata=auth(w.auditor_token), timeout=10).events
    # The auditor's own call is audited too (with the number it asked about).
    assert events[-1].action == "ListAuditEvents" and events[-1].user_id == "caldicott"
    events = [e for e in events if e.action == "LookupChild"]
    assert [e.lookup_id for e in events] == [first.lookup_id, second.lookup_id, third.lookup_id], events
    assert all(e.action == "LookupChild" and e.outcome == w.t.AUDIT_OUTCOME_ALLOWED
               and e.user_id == "dr.jones" and e.site_ods_code == SITE and len(e.hash) == 32
               for e in events), events
    from google.protobuf import empty_pb2
    checkpoint = w.audit.GetCheckpoint(empty_pb2.Empty(), metadata=auth(w.auditor_token), timeout=10)
    assert checkpoint.sequence >= events[-1].sequence and checkpoint.signature and checkpoint.key_id
    verified = w.audit.VerifyAuditLog(audit.VerifyAuditLogRequest(checkpoint=checkpoint),
                                      metadata=auth(w.auditor_token), timeout=10)
    assert verified.ok and verified.first_bad_sequence == 0, verified
    assert verified.records_checked >= checkpoint.sequence


def test_bad_records_are_codes_in_an_ok_answer(world):
    w = world
    good, bad_dates = nhs_number(), nhs_number()
    report = w.upload("mixed-1", [
        w.record(good),
        w.record("943 476 5918"),
        w.record(bad_dates, start="2025-02-30"),
        w.record(good, w.t.FLAG_TYPE_LAC, emergency_phone=""),
    ])
    assert report.status == w.t.UPLOAD_STATUS_PARTIAL
    assert [r.code for r in report.results] == [
        w.t.RECORD_CODE_ACCEPTED, w.t.RECORD_CODE_INVALID_NHS_NUMBER,
        w.t.RECORD_CODE_INVALID_DATES, w.t.RECORD_CODE_INVALID_FIELD]
    assert all(r.message for r in report.results[1:])
    assert (report.accepted, report.rejected) == (1, 3)


def violations(error):
    """The google.rpc.BadRequest field paths carried by an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    fields = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields |= {v.field for v in bad.field_violations}
            assert all(v.description for v in bad.field_violations)
    return fields


def error_info(error):
    status = rpc_status.from_call(error)
    assert status is not None, "no grpc-status-details-bin trailer"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def test_invalid_argument_carries_every_field_violation(world, pb):
    w = world
    before = w.audit_count()
    cp = pb["child_protection"]
    request = cp.LookupChildRequest(
        nhs_number="943 476 5918", access_kind=w.t.ACCESS_KIND_UNSPECIFIED,
        setting=w.t.Setting(ods_code="R!", setting_type=w.t.SETTING_TYPE_UNSPECIFIED),
        request_id="x" * 200)
    with pytest.raises(grpc.RpcError) as raised:
        w.lookup.LookupChild(request, metadata=auth(w.clinician_token), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(raised.value) == {"nhs_number", "access_kind", "setting.ods_code",
                                        "setting.setting_type", "request_id"}

    la = pb["local_authority"]
    with pytest.raises(grpc.RpcError) as raised:
        w.la.EndFlag(la.EndFlagRequest(nhs_number=nhs_number(), flag_type=w.t.FLAG_TYPE_CPP,
                                       start_date="2025-03-01", end_date="2025-02-01"),
                     metadata=auth(w.la_token), timeout=10)
    assert "end_date" in violations(raised.value)
    assert w.audit_count() == before, "a validation failure was audited"


def test_permission_denied_carries_error_info_with_the_reason(world):
    w = world
    cases = [
        (w.gp_token, w.lookup_request(nhs_number()), "MISSING_ACTIVITY"),
        (w.outsider_token, w.lookup_request(nhs_number(), site="RYY01"), "ORGANISATION_NOT_ONBOARDED"),
        (w.clinician_token, w.lookup_request(nhs_number(), site="RZZ01"), "SETTING_NOT_IN_ORGANISATION"),
    ]
    for token, request, reason in cases:
        with pytest.raises(grpc.RpcError) as raised:
            w.lookup.LookupChild(request, metadata=auth(token), timeout=10)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(raised.value)
        assert (info.domain, info.reason) == ("cpis", reason)


def jwt(header, claims, key=None):
    """A compact JWS; signed with `key` (Ed25519) unless None (then the signature is empty)."""
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = key.sign(signing_input.encode()) if key is not None else b""
    return signing_input + "." + b64(signature)


def test_calls_without_a_valid_token_are_unauthenticated(world, cpis_dev):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    w, data_dir = world, cpis_dev["data_dir"]
    with open(os.path.join(data_dir, "jwks.json")) as f:
        kid = json.load(f)["keys"][0]["kid"]
    with open(os.path.join(data_dir, "dev-signing-key.pem")) as f:
        der = base64.b64decode("".join(l for l in f if not l.startswith("-----")))
    # aws-lc writes PKCS#8 v2 (with the public key), which `cryptography` does not read: take
    # the 32-byte seed from its privateKey OCTET STRING (04 20 inside 04 22).
    seed_at = der.index(bytes([0x04, 0x22, 0x04, 0x20])) + 4
    real_key = Ed25519PrivateKey.from_private_bytes(der[seed_at:seed_at + 32])
    now = int(time.time())
    # A CIS2 ID token's claims (nationalrbacaccess and selectedrole scopes), as CIS2 names them.
    claims = {"iss": "cpis-dev", "aud": "cpis", "sub": "555000000101", "nhsid_useruid": "555000000101",
              "name": "Dr Jones",
              "nhsid_nrbac_roles": [{"person_orgid": "555000000201", "person_roleid": "555000000301",
                                     "org_code": TRUST, "role_code": "S8000:G8000:R8000",
                                     "role_name": '"Clinical":"Clinical Provision":"Clinical Practitioner Access Role"',
                                     "activity_codes": ["B0107"]}],
              "selected_roleid": "555000000301", "authentication_assurance_level": "3",
              "acr": "AAL3_ANY", "iat": now, "nbf": now, "exp": now + 600}
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    # The control: a token made this way with the real key is accepted.
    good = jwt(header, claims, real_key)
    assert w.lookup.LookupChild(w.lookup_request(nhs_number()), metadata=auth(good), timeout=10).lookup_id
    refused = {
        "no token": [],
        "not a JWT": auth("not-a-jwt"),
        "expired": auth(jwt(header, dict(claims, exp=now - 3600, nbf=now - 7200), real_key)),
        "forged": auth(jwt(header, claims, Ed25519PrivateKey.generate())),
        "alg none": auth(jwt({"alg": "none", "typ": "JWT", "kid": kid}, claims)),
        "wrong audience": auth(jwt(header, dict(claims, aud="someone-else"), real_key)),
        "wrong issuer": auth(jwt(header, dict(claims, iss="someone-else"), real_key)),
        "no selected role": auth(jwt(header, {k: v for k, v in claims.items() if k != "selected_roleid"},
                                     real_key)),
        "selected role not held": auth(jwt(header, dict(claims, selected_roleid="555000000399"), real_key)),
    }
    before = w.audit_count()
    for what, metadata in refused.items():
        with pytest.raises(grpc.RpcError) as raised:
            w.lookup.LookupChild(w.lookup_request(nhs_number()), metadata=metadata, timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
    assert w.audit_count() == before, "an unauthenticated call was audited"


def test_a_second_channel_after_the_first_sees_the_same_data(world, cpis_dev, pb):
    """A new connection (new TLS handshake) reads what another connection wrote."""
    w = world
    child = nhs_number()
    w.upload("handshake-1", [w.record(child)])
    with cpis_dev["new_channel"]() as channel:
        stub = pb["child_protection_grpc"].ChildProtectionStub(channel)
        answer = stub.LookupChild(w.lookup_request(child), metadata=auth(w.clinician_token), timeout=10)
    assert answer.flagged
