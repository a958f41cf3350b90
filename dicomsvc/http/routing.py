"""Which route a request is for, as its template (``/dicom/{id}/file``) and path parameters.

Logs, metrics and the audit trail name routes by template, never by URL: a path
holds ids and UIDs, a query string search values (patient IDs, names).
"""

import re
from collections.abc import Iterable
from weakref import WeakKeyDictionary

from starlette.routing import BaseRoute, Match, Mount

_templates: "WeakKeyDictionary[object, dict[int, str]]" = WeakKeyDictionary()
_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


def plain(path: str) -> str:
    """A route path without convertors, as templates are shown: ``{path:path}`` -> ``{path}``."""
    return _CONVERTOR.sub(r"{\1}", path)


def templates(routes: Iterable[BaseRoute], prefix: str = "") -> dict[int, str]:
    """``id(route)`` -> its full template, for every route (mounted ones with their mount's path)."""
    found: dict[int, str] = {}
    for route in routes:
        if isinstance(route, Mount):
            found |= templates(route.routes, prefix + route.path)
        else:
            found[id(route)] = plain(prefix + getattr(route, "path", ""))
    return found


def all_routes(routes: Iterable[BaseRoute], prefix: str = "") -> list[tuple[str, frozenset[str], BaseRoute]]:
    """Every route as (template, methods, route), mounted ones included."""
    found = []
    for route in routes:
        if isinstance(route, Mount):
            found += all_routes(route.routes, prefix + route.path)
        else:
            methods = frozenset(getattr(route, "methods", None) or ())
            found.append((plain(prefix + getattr(route, "path", "")), methods, route))
    return found


def _app_templates(app) -> dict[int, str]:
    table = _templates.get(app)
    if table is None:
        table = _templates[app] = templates(app.routes)
    return table


def match(scope: dict) -> tuple[str | None, dict]:
    """(template, path parameters) of the request: the route the router chose, or, for a
    request answered before routing (refused by authentication, say), the route that
    matches its path and method. (None, {}) when none does."""
    app = scope.get("app")
    if app is None or not hasattr(app, "routes"):
        return None, {}
    table = _app_templates(app)
    route = scope.get("route")
    if route is not None and id(route) in table:
        return table[id(route)], dict(scope.get("path_params") or {})
    return _match(app.routes, scope, "")


_SETTLED = "dicomsvc.route"  # the scope key ``settled`` keeps its answer under


def settled(scope: dict) -> tuple[str | None, dict]:
    """``match(scope)`` once the request has been answered -- for the middlewares that observe
    it (request log, metrics, audit trail), in their ``finally``: worked out by the first of
    them, kept in the scope for the others. (Not before the answer: routing may not be done.)"""
    found = scope.get(_SETTLED)
    if found is None:
        found = scope[_SETTLED] = match(scope)
    return found


def template(scope: dict) -> str | None:
    """The route template of a request that has been routed (None before, or for no route)."""
    app, route = scope.get("app"), scope.get("route")
    if app is None or route is None or not hasattr(app, "routes"):
        return None
    return _app_templates(app).get(id(route))


def _match(routes: Iterable[BaseRoute], scope: dict, prefix: str) -> tuple[str | None, dict]:
    partial = None
    for route in routes:
        kind, child = route.matches(scope)
        if kind == Match.NONE:
            continue
        if isinstance(route, Mount):
            if kind == Match.FULL:
                template, params = _match(route.routes, {**scope, **child}, prefix + route.path)
                if template is not None:
                    return template, params
            continue
        if kind == Match.FULL:
            return plain(prefix + route.path), dict(child.get("path_params") or {})
        if partial is None:
            partial = (plain(prefix + route.path), dict(child.get("path_params") or {}))
    return partial if partial is not None else (None, {})
