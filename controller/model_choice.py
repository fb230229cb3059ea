"""Which model a command acts on, now that one gateway (or fleet) serves several and one state
file holds rollouts of several.

``run``: ``--model``, else the policy's ``model:`` when the file sets it, else the one model the
gateways serve; several: refused, naming them. Operator commands: ``--model``, else the one model
the state file holds rollouts of; several: refused, naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx

from controller.gateway_paths import MODELS_PATH
from controller.rollout_store import RolloutStore


class ModelChoiceError(Exception):
    """No single model is meant; the message names the choices and asks for ``--model``."""


def gateway_models(gateways: Sequence[str], client: httpx.Client) -> list[str]:
    """The models the gateways serve (``GET /v2/models`` on each, together), by name; raises
    ``ModelChoiceError`` naming each gateway that did not answer when none did."""
    served: set[str] = set()
    problems = []
    for url in gateways:
        try:
            response = client.get(f"{url}{MODELS_PATH}")
            response.raise_for_status()
            served.update(str(entry["name"]) for entry in response.json()["models"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{url}: {exc.__class__.__name__}: {exc}")
    if not served:
        raise ModelChoiceError("no gateway said which models it serves (GET "
                               f"{MODELS_PATH}: {'; '.join(problems)}): pass --model")  # fmt: skip
    return sorted(served)


def choose_run_model(
    explicit: str | None, policy_model: str | None, served: Callable[[], list[str]]
) -> str:
    """``explicit`` (--model), else ``policy_model`` (None unless the policy file sets it), else
    the one model ``served()`` lists. A model named but not served is refused too, while the
    gateways can say what they serve (a gateway that cannot is judged by the rollout itself)."""
    named = explicit or policy_model
    try:
        models = served()
    except ModelChoiceError:
        if named is not None:
            return named
        raise
    if named is not None:
        if models and named not in models:
            where = "--model" if explicit else "the policy's model"
            raise ModelChoiceError(f"{where} {named} is not served: the gateways serve "
                                   f"{', '.join(models)}")  # fmt: skip
        return named
    if len(models) == 1:
        return models[0]
    if not models:
        raise ModelChoiceError("the gateways serve no model: pass --model")
    raise ModelChoiceError(f"the gateways serve {', '.join(models)}: pass --model")


def choose_rollout_model(store: RolloutStore, explicit: str | None) -> str:
    """The model an operator's command acts on: ``explicit``, when the state file holds a rollout
    of it, else the one model the file holds rollouts of."""
    models = store.models()
    if explicit is not None:
        if explicit not in models:
            held = f"; it holds rollouts of {', '.join(models)}" if models else ""
            raise ModelChoiceError(f"no rollout of model {explicit} in {store.path}{held}")
        return explicit
    if not models:
        raise ModelChoiceError(f"no rollout recorded in {store.path}")
    if len(models) > 1:
        raise ModelChoiceError(f"{store.path} holds rollouts of {', '.join(models)}: pass --model")
    return models[0]
