"""The provider recipe's files, rendered from the Ansible roles' own
defaults and templates - the one source of truth that provider.yml uses
too. `roles` beside this module is a link to the collection's roles/
folder, packaged with tide (pyproject's package-data).

The templates are rendered the way Ansible's template module renders them
(trim_blocks, a kept trailing newline, and the few Ansible filters they
use), so a file onboarding writes is byte for byte the file the role
writes, bar the `ansible_managed` header. Pure: no I/O but reading the
packaged role files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import jinja2
import yaml

MANAGED = "Written by tide onboard; run it again to change this file."
"""The `ansible_managed` header of every file onboarding writes."""

_RESOLVE_ROUNDS = 5


class RecipeError(ValueError):
    """A role file is missing or does not render (a packaging or role bug)."""


def roles_root() -> Traversable:
    return resources.files("tide.onboard").joinpath("roles")


@cache
def role_defaults(role: str) -> Mapping[str, Any]:
    """A role's defaults/main.yml, unrendered (values may hold `{{ }}`)."""
    path = roles_root().joinpath(role, "defaults", "main.yml")
    try:
        loaded = yaml.safe_load(path.read_text("utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"role {role} has no defaults/main.yml") from None
    if not isinstance(loaded, dict):
        raise RecipeError(f"role {role}: defaults/main.yml is not a mapping")
    return loaded


@cache
def role_vars(role: str, name: str) -> Mapping[str, Any]:
    """A role's vars/`name`.yml (e.g. per OS family); empty when absent."""
    path = roles_root().joinpath(role, "vars", f"{name}.yml")
    try:
        loaded = yaml.safe_load(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _comment(text: str) -> str:
    """Ansible's `comment` filter, plain style."""
    return "#\n" + "\n".join(f"# {line}" if line else "#" for line in text.splitlines()) + "\n#"


def _to_nice_json(value: object, indent: int = 4, sort_keys: bool = True) -> str:
    """Ansible's `to_nice_json`."""
    return json.dumps(value, indent=indent, sort_keys=sort_keys, separators=(",", ": "))


def _unique(values: Iterable[object]) -> list[object]:
    seen: list[object] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701  (configuration files, not HTML)
    )
    env.filters["comment"] = _comment
    env.filters["to_json"] = json.dumps
    env.filters["to_nice_json"] = _to_nice_json
    env.filters["unique"] = _unique
    return env


def resolve(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Variables whose string values may refer to other variables
    (`"{{ inventory_hostname }}"`), rendered until none is left."""
    out = dict(variables)
    env = _environment()
    for _ in range(_RESOLVE_ROUNDS):
        pending = {k: v for k, v in out.items() if isinstance(v, str) and "{{" in v}
        if not pending:
            return out
        for key, value in pending.items():
            try:
                out[key] = env.from_string(value).render(out)
            except jinja2.UndefinedError as exc:
                raise RecipeError(f"{key}: {exc.message}") from None
    raise RecipeError(f"variables refer to each other in a loop: {sorted(pending)}")


@cache
def _compiled(text: str) -> jinja2.Template:
    """A template, compiled once (the controller renders the worker's for
    every resource it creates)."""
    return _environment().from_string(text)


def render(role: str, template: str, variables: Mapping[str, Any]) -> str:
    """The role's templates/`template` rendered with its defaults, overridden
    by `variables`, and `ansible_managed` = MANAGED."""
    path = roles_root().joinpath(role, "templates", template)
    try:
        compiled = _compiled(path.read_text("utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"role {role} has no template {template}") from None
    context = resolve({**role_defaults(role), "ansible_managed": MANAGED, **variables})
    try:
        return compiled.render(context)
    except jinja2.UndefinedError as exc:
        raise RecipeError(f"role {role}, template {template}: {exc.message}") from None


__all__ = [
    "MANAGED",
    "RecipeError",
    "render",
    "resolve",
    "role_defaults",
    "role_vars",
    "roles_root",
]
