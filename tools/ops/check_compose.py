"""Checks docker-compose.yml's structure without a container daemon: the services, what the
Oracle must have (its models read-only, its state on a named volume, a health check that runs
the binary itself, its four ports) and that the Scout waits for the Oracle to be healthy.

Usage: python tools/ops/check_compose.py docker-compose.yml
"""

from __future__ import annotations

import sys

import yaml


def fail(msg: str) -> None:
    print(f"docker-compose.yml: {msg}", file=sys.stderr)
    sys.exit(1)


def main(path: str) -> None:
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") or fail("no services")
    oracle = services.get("oracle") or fail("no oracle service")
    volumes = oracle.get("volumes") or []
    if not any(v.startswith("./models:/models") and v.endswith(":ro") for v in volumes):
        fail("the oracle must mount ./models at /models read-only")
    named = set((doc.get("volumes") or {}).keys())
    state = [v.split(":")[0] for v in volumes if v.split(":")[1:2] == ["/var/lib/shard"]]
    if not state or state[0] not in named:
        fail("the oracle's /var/lib/shard must be a named volume")
    test = (oracle.get("healthcheck") or {}).get("test") or fail("the oracle has no health check")
    if test[:2] != ["CMD", "/usr/local/bin/shard-oracle"] or "healthcheck" not in test:
        fail(f"the health check must run the binary itself in exec form, not {test}")
    ports = {str(p).split(":")[-1] for p in oracle.get("ports") or []}
    for want in ("8080", "9090", "9091", "9092/udp"):
        if want not in ports:
            fail(f"the oracle does not publish {want}")
    scout = services.get("scout")
    if scout is not None:
        dep = (scout.get("depends_on") or {}).get("oracle") or {}
        if dep.get("condition") != "service_healthy":
            fail("the scout must wait for the oracle to be healthy")
    print(f"{path}: {len(services)} services, structure ok")


if __name__ == "__main__":
    main(sys.argv[1])
