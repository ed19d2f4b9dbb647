"""The Authorization header to an Identity: API keys, JWTs, development mode, and bounded garbage."""

from __future__ import annotations

import json

import jwt
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from cohort.core.errors import CohortError, ErrorCode
from cohort.security.api_keys import SqliteKeyStore
from cohort.security.authenticator import MAX_AUTHORIZATION_BYTES, Authenticator, build_authenticator
from cohort.security.identity import DEVELOPMENT_IDENTITY, Role
from cohort.security.jwt_verifier import JwtVerifier
from cohort.settings import Settings
from test_jwt_verifier import AUDIENCE, ISSUER, RSA_KEY, jwks, mint


@pytest.fixture
def key_store(tmp_path):
    store = SqliteKeyStore(tmp_path / "auth.sqlite")
    store.create_tenant("state-ka")
    yield store
    store.close()


@pytest.fixture
def verifier(tmp_path):
    path = tmp_path / "jwks.json"
    path.write_bytes(jwks((RSA_KEY, "rsa1")))
    return JwtVerifier(Settings(oidc_jwks=str(path), oidc_issuer=ISSUER, oidc_audience=AUDIENCE))


def code_of(authenticator, header) -> ErrorCode:
    with pytest.raises(CohortError) as info:
        authenticator.authenticate(header)
    return info.value.code


def test_an_api_key_and_a_jwt_each_authenticate(key_store, verifier):
    authenticator = Authenticator(key_store, verifier, "required")
    info, key = key_store.create_key("state-ka", Role.INGESTOR)
    assert authenticator.authenticate(f"Bearer {key}").subject == info.key_id
    assert authenticator.authenticate(f"bearer   {key}  ").subject == info.key_id  # scheme is case-insensitive
    assert authenticator.authenticate(f"Bearer {mint()}").via == "jwt"


@pytest.mark.parametrize("header, code", [
    (None, ErrorCode.AUTH_REQUIRED),
    ("", ErrorCode.AUTH_REQUIRED),
    ("Basic dXNlcjpwYXNz", ErrorCode.AUTH_REQUIRED),
    ("Bearer", ErrorCode.AUTH_REQUIRED),
    ("Bearer    ", ErrorCode.AUTH_REQUIRED),
    ("ck_AAAAAAAAAAAA_" + "A" * 43, ErrorCode.AUTH_REQUIRED),  # a key without its scheme
    ("Bearer ck_AAAAAAAAAAAA_" + "A" * 43, ErrorCode.AUTH_INVALID),
    ("Bearer hello", ErrorCode.AUTH_INVALID),
    ("Bearer a.b.c", ErrorCode.AUTH_INVALID),
    ("Bearer " + "a" * MAX_AUTHORIZATION_BYTES, ErrorCode.AUTH_INVALID),
])
def test_missing_or_wrong_credentials_are_coded(key_store, verifier, header, code):
    assert code_of(Authenticator(key_store, verifier, "required"), header) == code


def test_a_jwt_without_a_configured_provider_is_refused(key_store):
    with pytest.raises(CohortError) as info:
        Authenticator(key_store, None, "required").authenticate(f"Bearer {mint()}")
    assert info.value.code == ErrorCode.AUTH_INVALID and "COHORT_OIDC_JWKS" in info.value.message


def test_an_oversized_header_is_refused_before_any_parsing(key_store):
    class Exploding:
        def verify(self, token):
            raise AssertionError("parsed")

    authenticator = Authenticator(Exploding(), Exploding(), "required")  # type: ignore[arg-type]
    for token in ("ck_" + "A" * MAX_AUTHORIZATION_BYTES, "a." * 3000 + "b"):
        assert code_of(authenticator, f"Bearer {token}") == ErrorCode.AUTH_INVALID


def test_auth_off_is_the_development_admin_whatever_is_sent(key_store):
    authenticator = Authenticator(key_store, None, "off")
    for header in (None, "", "Bearer nonsense", "Basic x"):
        assert authenticator.authenticate(header) is DEVELOPMENT_IDENTITY


def test_an_unknown_auth_mode_is_a_config_error(key_store):
    with pytest.raises(CohortError) as info:
        Authenticator(key_store, None, "maybe")
    assert info.value.code == ErrorCode.CONFIG_INVALID


def test_build_authenticator_from_settings(tmp_path):
    authenticator = build_authenticator(Settings(data_dir=tmp_path))
    assert authenticator.jwt_verifier is None and authenticator.auth_mode == "required"
    assert (tmp_path / "auth.sqlite").exists()
    authenticator.close()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(CohortError):  # JWKS without issuer and audience
        build_authenticator(Settings(data_dir=tmp_path, oidc_jwks=str(path)))


@hypothesis_settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.one_of(
    st.none(), st.text(max_size=300),
    st.builds(lambda scheme, body: f"{scheme} {body}", st.sampled_from(["Bearer", "bearer", "BEARER", "Token"]),
              st.one_of(st.text(max_size=200), st.from_regex(r"ck_[A-Za-z0-9_-]{0,64}", fullmatch=True),
                        st.from_regex(r"[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{0,40}",
                                      fullmatch=True)))))
def test_any_header_is_an_identity_or_a_coded_refusal(key_store, verifier, header):
    try:
        Authenticator(key_store, verifier, "required").authenticate(header)
    except CohortError as exc:
        assert exc.code in (ErrorCode.AUTH_REQUIRED, ErrorCode.AUTH_INVALID)
    else:
        raise AssertionError("random text authenticated")


def test_garbage_jwts_never_raise_anything_else(key_store, verifier):
    token = jwt.encode({"sub": 1}, RSA_KEY, algorithm="RS256", headers={"kid": "rsa1"})
    assert code_of(Authenticator(key_store, verifier, "required"), f"Bearer {token}") == ErrorCode.AUTH_INVALID


def test_only_answers_needing_no_io_come_without_io(key_store, verifier):
    authenticator = Authenticator(key_store, verifier, "required")
    info, key = key_store.create_key("state-ka", Role.ANALYST)
    assert authenticator.authenticate_without_io(f"Bearer {key}") is None  # not verified yet: the store is read
    authenticator.authenticate(f"Bearer {key}")
    assert authenticator.authenticate_without_io(f"Bearer {key}").subject == info.key_id
    assert authenticator.authenticate_without_io(f"Bearer {mint()}") is None  # JWTs: verified off the loop
    with pytest.raises(CohortError):
        authenticator.authenticate_without_io("Basic abc")  # a bad shape is refused at once
    assert Authenticator(key_store, None, "off").authenticate_without_io(None) is DEVELOPMENT_IDENTITY


def test_a_slow_key_store_does_not_stall_the_event_loop(key_store, verifier, monkeypatch):
    import asyncio
    import time
    from types import SimpleNamespace

    from cohort.api.access import authenticate

    authenticator = Authenticator(key_store, verifier, "required")
    info, key = key_store.create_key("state-ka", Role.ANALYST)
    real_load = key_store._load_key

    def slow_load(key_id):
        time.sleep(1.0)  # a key store on a slow disk or a Redis far away
        return real_load(key_id)

    monkeypatch.setattr(key_store, "_load_key", slow_load)
    request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(authenticator=authenticator)),
                              headers={"authorization": f"Bearer {key}"})

    async def both():
        ticks = []

        async def ticker():
            for _ in range(10):
                started = time.monotonic()
                await asyncio.sleep(0.05)
                ticks.append(time.monotonic() - started)

        identity, _ = await asyncio.gather(authenticate(request), ticker())
        return identity, ticks

    identity, ticks = asyncio.run(both())
    assert identity.subject == info.key_id
    assert max(ticks) < 0.5  # the loop kept turning while the store was read
