"""Authentication: OIDC access tokens against a local provider, API tokens and their CLI,
401/403 answers, the importer's --token, the start-up warning."""

import contextlib
import io
import logging
import sqlite3
import time

import pytest
from starlette.testclient import TestClient

from app import create_app
from authhelpers import auth_config, bearer, create_token, token_app
from dicomfiles import make_ct, save
from indexdb import database_env, index
from dicomsvc.auth.oidc import AuthFailure, OidcVerifier
from dicomsvc.auth.tokens import token_hash
from dicomsvc.cli.main import main as cli
from oidc_provider import AUDIENCE, Provider, tampered


@pytest.fixture
def provider():
    p = Provider()
    p.add_key("k1")
    yield p
    p.close()


def verifier(provider: Provider, **kwargs) -> OidcVerifier:
    return OidcVerifier(provider.issuer, AUDIENCE, **kwargs)


def refused(v: OidcVerifier, token: str) -> str:
    with pytest.raises(AuthFailure) as caught:
        v.verify(token)
    return caught.value.reason


# The verifier ----------------------------------------------------------------------------------


def test_tokens_signed_by_the_provider_pass(provider):
    provider.add_key("ec1", kind="EC")
    v = verifier(provider)
    who = v.verify(provider.token(sub="alice", roles=("uploader", "offline_access")))
    assert (who.user, who.display, who.roles, who.method) == ("alice", "alice-name", frozenset({"uploader"}), "oidc")
    assert who.role == "uploader" and who.has("reader") and not who.has("admin")
    assert v.verify(provider.token(alg="PS256")).user == "user-1"  # RSA-PSS with the same key
    assert v.verify(provider.token(kid="ec1", alg="ES256")).user == "user-1"


def test_roles_come_from_the_configured_claim(provider):
    v = verifier(provider, roles_claim="resource_access.dicomsvc.roles")
    claims = provider.claims(roles=("reader",)) | {"resource_access": {"dicomsvc": {"roles": ["admin"]}}}
    assert v.verify(provider.token(claims=claims)).roles == frozenset({"admin"})
    assert verifier(provider).verify(provider.token(claims=claims)).roles == frozenset({"reader"})


@pytest.mark.parametrize(
    "case, reason",
    [
        ("expired", "expired"),
        ("not_yet_valid", "not_yet_valid"),
        ("wrong_issuer", "wrong_issuer"),
        ("wrong_audience", "wrong_audience"),
        ("unknown_key", "unknown_key"),
        ("tampered", "bad_signature"),
        ("alg_none", "bad_algorithm"),
        ("hs256_public_key", "bad_algorithm"),
        ("no_exp", "missing_claim"),
        ("not_a_jwt", "malformed"),
    ],
)
def test_bad_tokens_are_refused(provider, case, reason):
    now = int(time.time())
    v = verifier(provider, clock_skew=60)
    stranger = Provider()  # a key the provider does not publish
    try:
        stranger.add_key("k9")
        claims = provider.claims()
        token = {
            "expired": lambda: provider.token(claims=claims | {"exp": now - 120, "iat": now - 600}),
            "not_yet_valid": lambda: provider.token(claims=claims | {"nbf": now + 600}),
            "wrong_issuer": lambda: provider.token(claims=claims | {"iss": "https://elsewhere.example"}),
            "wrong_audience": lambda: provider.token(claims=claims | {"aud": "another-service"}),
            "unknown_key": lambda: stranger.token(kid="k9", claims=claims),
            "tampered": lambda: tampered(provider.token(roles=("reader",)), realm_access={"roles": ["admin"]}),
            "alg_none": lambda: provider.unsigned(claims),
            "hs256_public_key": lambda: provider.hs256_with_public_key(claims),
            "no_exp": lambda: provider.token(claims={k: v for k, v in claims.items() if k != "exp"}),
            "not_a_jwt": lambda: "not.a.jwt",
        }[case]()
        assert refused(v, token) == reason
    finally:
        stranger.close()


def test_clock_skew_is_allowed(provider):
    now = int(time.time())
    v = verifier(provider, clock_skew=60)
    claims = provider.claims()
    assert v.verify(provider.token(claims=claims | {"exp": now - 20})).user == "user-1"  # within the skew
    assert v.verify(provider.token(claims=claims | {"nbf": now + 20})).user == "user-1"


def test_key_rotation_is_followed_and_refetches_are_rate_limited(provider):
    clock = [1000.0]
    v = verifier(provider, refetch_interval=30, clock=lambda: clock[0])
    assert v.verify(provider.token()).user == "user-1"
    assert v.fetches == 1
    provider.add_key("k2")  # the provider rotates: a new key appears in its JWKS
    clock[0] += 30
    assert v.verify(provider.token(kid="k2")).user == "user-1"  # unknown kid -> fetched again
    assert v.fetches == 2
    for n in range(20):  # made-up kids do not make us hammer the provider
        assert refused(v, provider.unsigned(provider.claims(), alg="RS256", kid=f"made-up-{n}")) == "unknown_key"
    assert v.fetches == 2 and provider.fetches["jwks"] == 2
    provider.add_key("k3")
    assert refused(v, provider.token(kid="k3")) == "unknown_key"  # too soon after the last fetch
    clock[0] += 31
    assert v.verify(provider.token(kid="k3")).user == "user-1"
    assert v.fetches == 3
    assert v.verify(provider.token(kid="k1")).user == "user-1" and v.fetches == 3  # known keys: no fetch


def test_withdrawn_keys_stop_working_after_the_max_age(provider):
    clock = [0.0]
    v = verifier(provider, max_age=3600, clock=lambda: clock[0])
    provider.add_key("k2")
    assert v.verify(provider.token(kid="k1")).user == "user-1"
    provider.published.remove("k1")
    clock[0] += 3601
    assert refused(v, provider.token(kid="k1")) == "unknown_key"
    assert v.verify(provider.token(kid="k2")).user == "user-1"


def test_an_unreachable_provider_is_503_not_a_crash(provider):
    provider.down = True
    assert refused(verifier(provider), provider.token()) == "provider_unreachable"


# Through the service ---------------------------------------------------------------------------


@pytest.fixture
def oidc_client(provider, data_dir, import_root):
    config = auth_config(
        data_dir, import_root, auth="oidc", oidc_issuer=provider.issuer, oidc_audience=AUDIENCE, oidc_refetch_interval="0"
    )
    with TestClient(create_app(config)) as client:
        yield client


def test_oidc_requests(provider, oidc_client, import_root):
    reader = provider.token(sub="rita", roles=("reader",))
    assert oidc_client.get("/stats", headers=bearer(reader)).status_code == 200
    missing = oidc_client.get("/stats")
    assert missing.status_code == 401 and missing.json()["error"] == "unauthorized"
    assert missing.headers["www-authenticate"] == 'Bearer realm="dicomsvc"'
    bad = oidc_client.get("/stats", headers=bearer(tampered(reader, sub="mallory")))
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert "mallory" not in bad.text and "rita" not in bad.text
    too_low = oidc_client.post("/dicom", headers=bearer(reader), json={"path": "x.dcm"})  # a role too low
    assert too_low.status_code == 403 and too_low.json()["error"] == "forbidden"
    assert 'error="insufficient_scope"' in too_low.headers["www-authenticate"]
    assert oidc_client.delete("/dicom?Modality=CT", headers=bearer(reader)).status_code == 403
    uploader = provider.token(sub="ulla", roles=("uploader",))
    save(make_ct(), import_root / "ct.dcm")
    stored = oidc_client.post("/dicom", headers=bearer(uploader), json={"path": "ct.dcm"})
    assert stored.status_code == 201
    assert oidc_client.get(f"/dicom/{stored.json()['id']}", headers=bearer(reader)).json()["uploaded_by"] == "ulla"
    assert oidc_client.get("/healthz").status_code == 200 and oidc_client.get("/openapi.json").status_code == 200
    no_role = provider.token(sub="nobody", roles=("offline_access",))
    assert oidc_client.get("/stats", headers=bearer(no_role)).status_code == 403
    for scheme in ("Basic dXNlcjpwYXNz", f"bearer {reader}"):  # another scheme; the scheme is case-insensitive
        answer = oidc_client.get("/stats", headers={"Authorization": scheme})
        assert answer.status_code == (401 if scheme.startswith("Basic") else 200)


def test_oidc_key_rotation_without_restart(provider, oidc_client):
    assert oidc_client.get("/stats", headers=bearer(provider.token())).status_code == 200
    provider.add_key("k2")
    assert oidc_client.get("/stats", headers=bearer(provider.token(kid="k2"))).status_code == 200


def test_api_tokens_work_under_oidc_too(provider, oidc_client, data_dir, monkeypatch):
    token = create_token(monkeypatch, data_dir, "script", "reader")
    assert oidc_client.get("/stats", headers=bearer(token)).status_code == 200


# API tokens and their command ------------------------------------------------------------------


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli(list(args))
    return code, out.getvalue(), err.getvalue()


def test_token_cli_prints_once_stores_only_the_hash_and_revokes(data_dir, import_root, monkeypatch):
    data_dir.mkdir(parents=True)
    monkeypatch.setenv("DICOMSVC_DATA_DIR", str(data_dir))
    for name, value in database_env(data_dir).items():  # the suite on PostgreSQL
        monkeypatch.setenv(name, value)
    code, token, note = run_cli("token", "create", "--user", "carol", "--role", "uploader")
    token = token.strip()
    assert code == 0 and token.startswith("dsvc_") and len(token) == 48 and token not in note
    with index(data_dir) as db:
        ((token_id, stored_hash),) = db.execute("SELECT id, hash FROM api_token").fetchall()
        if isinstance(db, sqlite3.Connection):
            dump = "\n".join(db.iterdump())
        else:  # PostgreSQL: every row of the table, as text
            dump = "\n".join(map(str, db.execute("SELECT * FROM api_token").fetchall()))
    assert stored_hash == token_hash(token) and token not in dump  # only the hash is kept
    code, listing, _ = run_cli("token", "list")
    assert code == 0 and token_id in listing and "carol\tuploader" in listing and token not in listing
    with TestClient(create_app(auth_config(data_dir, import_root, auth="token"))) as client:
        assert client.get("/stats", headers=bearer(token)).status_code == 200
        assert client.get("/stats", headers=bearer(token[:-1] + ("A" if token[-1] != "A" else "B"))).status_code == 401
        assert run_cli("token", "revoke", token_id)[0] == 0
        assert client.get("/stats", headers=bearer(token)).status_code == 401  # at once, no restart
    assert run_cli("token", "revoke", token_id)[0] == 1  # already revoked
    assert run_cli("token", "list")[1].splitlines()[1].split("\t")[4] != "-"  # revoked: when


def test_token_cli_refuses_unknown_roles(data_dir, monkeypatch):
    monkeypatch.setenv("DICOMSVC_DATA_DIR", str(data_dir))
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            cli(["token", "create", "--user", "x", "--role", "superuser"])


def test_importer_sends_its_token(data_dir, import_root, monkeypatch, tmp_path, live_server_factory):
    folder = tmp_path / "to-import"
    for n in range(3):
        save(make_ct(), folder / f"{n}.dcm")
    url, tokens = live_server_factory({"ivan": "uploader", "rita": "reader"})
    code, out, _ = run_cli("import", str(folder), "--url", url, "--token", tokens["ivan"])
    assert code == 0 and "created 3," in out
    code, out, _ = run_cli("import", str(folder), "--url", url)  # no token: every file refused
    assert code == 1 and "unauthorized" in out
    monkeypatch.setenv("DICOMSVC_TOKEN", tokens["ivan"])
    code, out, _ = run_cli("import", str(folder), "--url", url)
    assert code == 0 and "duplicates 3," in out
    with index(data_dir) as db:
        assert db.execute("SELECT DISTINCT uploaded_by FROM dicom").fetchall() == [("ivan",)]


@pytest.fixture
def live_server_factory(data_dir, import_root, monkeypatch):
    """The app with DICOMSVC_AUTH=token on a real socket; returns (url, {user: token})."""
    import socket
    import threading

    import uvicorn

    servers = []

    def start(users: dict[str, str]):
        data_dir.mkdir(parents=True, exist_ok=True)
        tokens = {u: create_token(monkeypatch, data_dir, u, r) for u, r in users.items()}
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = auth_config(data_dir, import_root, auth="token")
        server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}", tokens

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=20)


def test_uploads_record_their_user_and_jobs_theirs(monkeypatch, data_dir, import_root):
    users = {"ulla": "uploader", "rita": "reader", "adam": "admin"}
    with token_app(monkeypatch, data_dir, import_root, users) as (client, tokens):
        save(make_ct(), import_root / "a" / "1.dcm")
        save(make_ct(), import_root / "a" / "2.dcm")
        job = client.post("/dicom?async=true", headers=bearer(tokens["ulla"]), json={"path": "a"}).json()["job"]
        deadline = time.monotonic() + 60
        while (status := client.get(f"/jobs/{job}", headers=bearer(tokens["ulla"])).json())["status"] != "done":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status["created"] == 2 and status["created_by"] == "ulla"
        ids = {r["id"] for r in status["results"]}
        mine = client.get("/dicom?mine=true", headers=bearer(tokens["ulla"])).json()["items"]
        assert {i["id"] for i in mine} == ids and {i["uploaded_by"] for i in mine} == {"ulla"}
        assert client.get("/dicom?mine=true", headers=bearer(tokens["rita"])).json()["items"] == []
        assert [j["id"] for j in client.get("/jobs?mine=true", headers=bearer(tokens["ulla"])).json()["items"]] == [job]
        assert client.get("/jobs?mine=true", headers=bearer(tokens["rita"])).json()["items"] == []
        assert {i["id"] for i in client.get("/users/ulla/uploads", headers=bearer(tokens["ulla"])).json()["items"]} == ids
        assert client.get("/users/ulla/uploads", headers=bearer(tokens["rita"])).status_code == 403
        assert client.get("/users/ulla/jobs", headers=bearer(tokens["adam"])).json()["items"][0]["id"] == job
        assert client.get("/users/rita/jobs", headers=bearer(tokens["rita"])).json()["items"] == []
        stats = client.get("/stats", headers=bearer(tokens["rita"])).json()
        assert stats["users"] == 1 and stats["by_user"] == {"ulla": 2}


def test_mine_needs_a_user_when_auth_is_none(client):
    assert client.get("/dicom?mine=true").status_code == 400


def test_no_auth_stays_open_and_warns_beyond_loopback(data_dir, import_root, caplog):
    config = auth_config(data_dir, import_root, host="0.0.0.0")
    with caplog.at_level(logging.WARNING, logger="dicomsvc"):
        with TestClient(create_app(config)) as client:
            assert client.delete("/dicom?Modality=CT").status_code == 200  # everything open, as before
    assert any("DICOMSVC_AUTH=none" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dicomsvc"):
        with TestClient(create_app(auth_config(data_dir, import_root, host="127.0.0.1"))):
            pass
    assert not any("DICOMSVC_AUTH=none" in r.getMessage() for r in caplog.records)


def test_auth_settings_are_checked():
    from dicomsvc.config import Config

    with pytest.raises(ValueError, match="DICOMSVC_AUTH"):
        Config.from_env({"DICOMSVC_AUTH": "ldap"})
    with pytest.raises(ValueError, match="OIDC_ISSUER"):
        Config.from_env({"DICOMSVC_AUTH": "oidc"})
    with pytest.raises(ValueError, match="VISIBILITY"):
        Config.from_env({"DICOMSVC_VISIBILITY": "mine"})
    config = Config.from_env({"DICOMSVC_METRICS_AUTH": "true", "DICOMSVC_OIDC_CLOCK_SKEW": "0"})
    assert config.metrics_auth and config.oidc_clock_skew == 0 and config.oidc_roles_claim == "realm_access.roles"
