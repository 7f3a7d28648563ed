"""Run Helm actions (helm-python-sdk) against a cluster, in their own process.

    HELM_DRIVER=memory python helm_run.py KUBECONFIG ACTIONS_JSON

ACTIONS_JSON is a list of {"action": "install"|"upgrade", "chart": PATH, "name": NAME,
"namespace": NS, "values": {...}}. Prints one JSON line per action: the release summary
(name, version, status, manifest). Exits 1 with Helm's message on the first failure.

Its own process because Helm's Go library reads HELM_DRIVER once, when it loads: the
memory storage driver (the emulator has no real Secrets semantics to spare) must be in the
environment before the process starts. With the memory driver the release history lives
in this process only, so an install and its upgrades run in one call.
"""

from __future__ import annotations

import json
import os
import sys

import helm_python
from helm_python import _native
from helm_python.config import Config, _opts


def run(cfg: Config, action: dict) -> dict:
    chart = helm_python.Chart.load(action["chart"])
    # Config.install/upgrade do not expose disable_openapi_validation (the emulator serves
    # no OpenAPI document), so call the library's entry points with it set.
    opts = _opts(namespace=action["namespace"], disable_openapi_validation=True,
                 create_namespace=action.get("create_namespace") or None)
    fn = {"install": "helm_install", "upgrade": "helm_upgrade"}[action["action"]]
    payload = _native.call_string(fn, cfg._raw(), Config._context_arg(None), chart._raw(), None, action["name"],
                                  json.dumps(action.get("values") or {}), opts)
    return json.loads(payload)


def main(argv: list[str]) -> int:
    kubeconfig, actions = argv[0], json.loads(argv[1])
    with Config(kubeconfig_path=kubeconfig, namespace=actions[0]["namespace"],
                storage_driver=os.environ.get("HELM_DRIVER") or None) as cfg:
        for action in actions:
            try:
                release = run(cfg, action)
            except helm_python.HelmError as exc:
                print(f"helm {action['action']} failed: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(release),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
