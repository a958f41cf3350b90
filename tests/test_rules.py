"""Every route the app serves (the /dicomweb mount included) has a rule, and every role gets
what its rule says: no token 401, a role too low 403, enough never 401/403."""

import re

import pytest
from starlette.routing import Mount, Route

import app as app_module
from authhelpers import bearer, token_app
from dicomsvc.http import rules

ROLES = {"rita": "reader", "ulla": "uploader", "adam": "admin"}
ENOUGH = {  # rule -> roles that pass it (for SELF: the user named in the path, or an admin)
    rules.READER: {"reader", "uploader", "admin"},
    rules.UPLOADER: {"uploader", "admin"},
    rules.ADMIN: {"admin"},
}
SAMPLE = {"id": "A" * 22, "job": "B" * 22, "dataset": "C" * 22, "study": "1.2.3", "series": "1.2.3.4", "sop": "1.2.3.4.5",
          "frames": "1", "frame": "1", "path": "7FE00010", "name": "app.js"}  # fmt: skip


def served(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(template, method) of every route, mounted ones included (HEAD is GET's)."""
    out = []
    for r in routes:
        if isinstance(r, Mount):
            out += served(r.routes, prefix + r.path)
        elif isinstance(r, Route):
            out += [(rules.template(prefix + r.path), m) for m in sorted(r.methods) if m != "HEAD"]
    return out


def missing_rules(routes) -> list[tuple[str, str]]:
    return [(path, method) for path, method in served(routes) if rules.rule(path, method) is None]


def test_every_route_has_a_rule():
    assert missing_rules(app_module.routes) == []


def test_a_new_route_without_a_rule_is_caught(monkeypatch, data_dir, import_root):
    async def handler(request):  # pragma: no cover - never reached
        raise AssertionError

    extra = [Route("/brand-new", handler, methods=["GET"]), Mount("/dicomweb", routes=[Route("/x", handler)])]
    assert missing_rules([*app_module.routes, *extra]) == [("/brand-new", "GET"), ("/dicomweb/x", "GET")]
    # and the middleware, meanwhile, lets only admins through it
    monkeypatch.setattr(app_module, "routes", [*app_module.routes, extra[0]])
    with token_app(monkeypatch, data_dir, import_root, ROLES) as (client, tokens):
        assert client.get("/brand-new", headers=bearer(tokens["rita"])).status_code == 403
        assert client.get("/brand-new", headers=bearer(tokens["ulla"])).status_code == 403
        assert client.get("/brand-new").status_code == 401


def test_rules_name_only_served_routes():
    assert set(rules.RULES) - set(served(app_module.routes)) == set()


def url_for(template: str, user: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: user if m.group(1) == "user" else SAMPLE[m.group(1)], template)


@pytest.mark.parametrize("metrics_auth", ["false", "true"])
def test_every_route_against_every_role(monkeypatch, data_dir, import_root, metrics_auth):
    table = served(app_module.routes)
    assert sum(path.startswith("/dicomweb/") for path, _ in table) > 25  # the DICOMweb mount is walked
    checked = 0
    with token_app(monkeypatch, data_dir, import_root, ROLES, metrics_auth=metrics_auth) as (client, tokens):
        for template, method in table:
            rule = rules.rule(template, method)
            for user, role in [(None, None), *ROLES.items()]:
                for path_user in ({user or "rita", "someone-else"} if "{user}" in template else {"-"}):
                    url = url_for(template, path_user)
                    answer = client.request(method, url, headers=bearer(tokens.get(user)))
                    status = answer.status_code
                    where = f"{method} {template} as {role or 'nobody'} ({url}): {status} {answer.text[:200]}"
                    if rule == rules.PUBLIC or (rule == rules.METRICS and metrics_auth == "false"):
                        assert status not in (401, 403), where
                    elif user is None:
                        assert status == 401 and answer.headers["www-authenticate"].startswith("Bearer"), where
                        assert answer.json()["error"] == "unauthorized", where
                    else:
                        if rule == rules.SELF:
                            allowed = role == "admin" or path_user == user
                        else:
                            allowed = role in ENOUGH[rules.READER if rule == rules.METRICS else rule]
                        if allowed:
                            assert status not in (401, 403) and status < 500, where
                        else:
                            assert status == 403 and answer.json()["error"] == "forbidden", where
                    checked += 1
    assert checked >= 4 * len(table)
