"""OIDC JWTs: real RS256/ES256 signatures from keys made here, a JWKS file and a JWKS served over HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.identity import Role, Scope
from cohort.security.jwt_verifier import JwtVerifier
from cohort.settings import Settings

ISSUER, AUDIENCE = "https://id.example.gov.in/realms/diksha", "cohort"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key, kid: str) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
    return {**algorithm.to_jwk(private_key.public_key(), as_dict=True), "kid": kid, "use": "sig"}


def jwks(*pairs) -> bytes:
    return json.dumps({"keys": [public_jwk(key, kid) for key, kid in pairs]}).encode()


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "teacher-42", "iat": now, "exp": now + 300,
            "cohort_role": "educator", "cohort_tenant": "state-ka", "cohort_scope": "batch:b1"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key=RSA_KEY, alg="RS256", kid="rsa1", **overrides) -> str:
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, sign=lambda signing_input: b"") -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


@pytest.fixture
def jwks_file(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks((RSA_KEY, "rsa1"), (EC_KEY, "ec1")))
    return path


def oidc_settings(source, **overrides) -> Settings:
    return Settings(oidc_jwks=str(source), oidc_issuer=ISSUER, oidc_audience=AUDIENCE, **overrides)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def verifier(jwks_file):
    return JwtVerifier(oidc_settings(jwks_file), clock=Clock())


def refusal(verifier, token) -> str:
    with pytest.raises(CohortError) as info:
        verifier.verify(token)
    assert info.value.code == ErrorCode.AUTH_INVALID
    assert all(part[:16] not in info.value.message for part in token.split(".") if part)
    return info.value.message


def test_valid_rs256_and_es256_tokens_map_their_claims_to_an_identity(verifier):
    identity = verifier.verify(mint())
    assert (identity.subject, identity.role, identity.tenant, identity.scope, identity.via) == (
        "teacher-42", Role.EDUCATOR, "state-ka", Scope("batch", ("b1",)), "jwt")
    identity = verifier.verify(mint(EC_KEY, "ES256", "ec1", cohort_role="analyst", cohort_scope=None,
                                    aud=["other-app", AUDIENCE]))
    assert (identity.role, identity.tenant, identity.scope) == (Role.ANALYST, "state-ka", None)
    admin = verifier.verify(mint(cohort_role="admin", cohort_tenant=None, cohort_scope=None))
    assert admin.role is Role.ADMIN and admin.tenant is None


def test_claim_names_come_from_the_settings(jwks_file):
    verifier = JwtVerifier(oidc_settings(jwks_file, oidc_role_claim="r", oidc_tenant_claim="channel",
                                         oidc_scope_claim="s"))
    token = mint(cohort_role=None, cohort_tenant=None, cohort_scope=None, r="ingestor", channel="0126684405")
    assert verifier.verify(token).tenant == "0126684405"


@pytest.mark.parametrize("token, reason", [
    (lambda: mint(OTHER_RSA_KEY), "signature does not verify"),
    (lambda: mint(exp=int(time.time()) - 120), "expired"),
    (lambda: mint(nbf=int(time.time()) + 120), "not yet valid"),
    (lambda: mint(aud="another-app"), "audience"),
    (lambda: mint(iss="https://evil.example"), "issuer"),
    (lambda: mint(exp=None), "claim exp missing"),
    (lambda: mint(sub=None), "claim sub missing"),
    (lambda: mint(kid="rotated-away"), "signing key unknown"),
    (lambda: mint(EC_KEY, "ES256", "rsa1"), "does not match its signing key"),  # an EC token against an RSA key
    (lambda: mint(alg="RS512"), "algorithm not accepted"),  # not in COHORT_OIDC_ALGORITHMS
    (lambda: hand_made({"alg": "none", "kid": "rsa1"}, claims()), "algorithm not accepted"),
    (lambda: hand_made({"alg": "none"}, claims()), "algorithm not accepted"),
    (lambda: hand_made({"alg": ["RS256"], "kid": "rsa1"}, claims()), "algorithm not accepted"),
    (lambda: hand_made({"alg": "RS256", "kid": {"x": 1}}, claims()), "invalid"),
    (lambda: mint(cohort_role="superuser"), "not a role"),
    (lambda: mint(cohort_role=None), "not a role"),
    (lambda: mint(cohort_role="admin"), "admin spans every tenant"),
    (lambda: mint(cohort_tenant=None), "tenant"),
    (lambda: mint(cohort_tenant="../etc/passwd"), "tenant"),
    (lambda: mint(cohort_scope="batch:"), "scope"),
    (lambda: mint(cohort_scope=["batch:b1"]), "not text"),
    (lambda: mint(sub="x" * 256), "sub"),
    (lambda: mint(exp="tomorrow"), "malformed"),
])
def test_a_bad_token_is_refused_with_its_reason(verifier, token, reason):
    assert reason in refusal(verifier, token())


def test_a_token_within_the_leeway_passes(verifier):
    assert verifier.verify(mint(exp=int(time.time()) - 10, nbf=int(time.time()) + 10)).subject == "teacher-42"


def test_hs256_signed_with_the_public_key_is_refused(tmp_path):
    """The classic confusion attack: the public key (which anyone may fetch) used as an HMAC secret."""
    one = tmp_path / "one.json"
    one.write_bytes(jwks((RSA_KEY, "rsa1")))
    pem = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    for kid in ("rsa1", None):
        header = {"alg": "HS256", **({"kid": kid} if kid else {})}
        token = hand_made(header, claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
        assert "algorithm not accepted" in refusal(JwtVerifier(oidc_settings(one)), token)


@pytest.mark.parametrize("overrides, fragment", [
    ({"oidc_algorithms": ["RS256", "HS256"]}, "HS256"),
    ({"oidc_algorithms": ["none"]}, "none"),
    ({"oidc_algorithms": []}, "empty"),
    ({"oidc_issuer": ""}, "ISSUER"),
    ({"oidc_audience": ""}, "AUDIENCE"),
    ({"oidc_jwks": "http://id.example.gov.in/jwks"}, "https"),
    ({"oidc_jwks": "/nonexistent/jwks.json"}, "no file"),
    ({"oidc_jwks": ""}, "empty"),
])
def test_unsafe_or_incomplete_settings_refuse_to_start(jwks_file, overrides, fragment):
    values = {"oidc_jwks": str(jwks_file), "oidc_issuer": ISSUER, "oidc_audience": AUDIENCE, **overrides}
    with pytest.raises(CohortError) as info:
        JwtVerifier(Settings(**values))
    assert info.value.code == ErrorCode.CONFIG_INVALID and fragment in info.value.message


def test_a_token_without_kid_uses_a_one_key_jwks_only(tmp_path, jwks_file):
    one = tmp_path / "one.json"
    one.write_bytes(jwks((RSA_KEY, "rsa1")))
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert JwtVerifier(oidc_settings(one)).verify(token).subject == "teacher-42"
    assert "signing key unknown" in refusal(JwtVerifier(oidc_settings(jwks_file)), token)


def test_symmetric_and_private_keys_in_the_jwks_are_ignored(tmp_path):
    path = tmp_path / "jwks.json"
    private = {**jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True), "kid": "rsa1"}
    oct_key = {"kty": "oct", "k": _b64(b"secret"), "kid": "hs"}
    path.write_text(json.dumps({"keys": [private, oct_key]}))
    verifier = JwtVerifier(oidc_settings(path))
    assert "signing key unknown" in refusal(verifier, mint())


class JwksServer:
    """A JWKS on real HTTP at 127.0.0.1, its document replaceable, its requests counted."""

    def __init__(self, document: bytes):
        self.document, self.requests, self.status = document, 0, 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests += 1
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(owner.document)))
                self.end_headers()
                self.wfile.write(owner.document)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/diksha/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server():
    server = JwksServer(jwks((RSA_KEY, "rsa1")))
    yield server
    server.close()


def test_jwks_over_http_is_fetched_once_and_refetched_for_a_rotated_key_at_most_once_a_minute(jwks_server):
    clock = Clock()
    verifier = JwtVerifier(oidc_settings(jwks_server.url), clock=clock)
    for _ in range(5):
        assert verifier.verify(mint()).subject == "teacher-42"
    assert jwks_server.requests == 1
    jwks_server.document = jwks((RSA_KEY, "rsa1"), (EC_KEY, "ec2"))  # the provider rotates in a new key
    clock.now += 61
    assert verifier.verify(mint(EC_KEY, "ES256", "ec2")).role is Role.EDUCATOR  # unknown kid: one refetch
    assert jwks_server.requests == 2
    for _ in range(20):  # unknown ids cannot make Cohort hammer the provider
        assert "signing key unknown" in refusal(verifier, mint(kid="nobody"))
    assert jwks_server.requests == 2
    clock.now += 61
    refusal(verifier, mint(kid="nobody"))
    assert jwks_server.requests == 3


def test_a_key_the_provider_withdrew_stops_working_after_an_hour(jwks_server):
    clock = Clock()
    verifier = JwtVerifier(oidc_settings(jwks_server.url), clock=clock)
    assert verifier.verify(mint()).subject == "teacher-42"
    jwks_server.document = jwks((EC_KEY, "ec2"))
    clock.now += 3600
    assert "signing key unknown" in refusal(verifier, mint())


def test_an_unreachable_or_broken_provider_is_a_401_and_old_keys_are_kept(jwks_server):
    clock = Clock()
    jwks_server.status = 503
    verifier = JwtVerifier(oidc_settings(jwks_server.url), clock=clock, fetch_timeout_s=2)
    assert "JWKS) are unavailable" in refusal(verifier, mint())
    jwks_server.status = 200
    clock.now += 61
    assert verifier.verify(mint()).subject == "teacher-42"
    jwks_server.document = b"<html>maintenance</html>"
    clock.now += 3600
    assert verifier.verify(mint()).subject == "teacher-42"  # the fetch failed: the keys read before stay
    jwks_server.close()
    clock.now += 3600
    assert verifier.verify(mint()).subject == "teacher-42"


_B64 = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=60)


@hypothesis_settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=st.one_of(st.text(max_size=200), st.builds(lambda a, b, c: f"{a}.{b}.{c}", _B64, _B64, _B64),
                       st.builds(lambda h, c: hand_made(h, c, lambda d: b"sig"),
                                 st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "jku"]),
                                                 st.one_of(st.text(max_size=10), st.integers(), st.none(),
                                                           st.sampled_from(["RS256", "ES256", "rsa1", "ec1"]))),
                                 st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=8), st.integers(),
                                                                                st.floats(allow_nan=True))))))
def test_garbage_is_always_a_coded_refusal(verifier, token):
    with pytest.raises(CohortError) as info:
        verifier.verify(token)
    assert info.value.code == ErrorCode.AUTH_INVALID


@pytest.mark.parametrize("alg, key", [("RS256", RSA_KEY), ("ES256", EC_KEY)])
def test_verify_cost(verifier, alg, key):
    """Not a bound (the machine is shared): prints µs per verified token for the report."""
    token = mint(key, alg, "rsa1" if alg == "RS256" else "ec1")
    verifier.verify(token)
    start = time.perf_counter()
    for _ in range(300):
        verifier.verify(token)
    micros = (time.perf_counter() - start) / 300 * 1e6
    print(f"\nJWT {alg} verify: {micros:.0f} µs")
    assert micros < 20_000
