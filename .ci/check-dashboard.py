#!/usr/bin/env python3
"""Checks a provisioned Grafana dashboard beyond "it parses": unique panel ids and titles,
panels inside the 24-column grid without overlapping, every query on the dashboard's
Prometheus data source, and every PromQL expression valid (each one checked by
`promtool check rules` as a recording rule, Grafana's range variables replaced).

Usage: check-dashboard.py DASHBOARD.json [PROMTOOL]
"""

import json
import os
import subprocess
import sys
import tempfile

# Grafana's interval variables, as a window PromQL accepts.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def main():
    path = sys.argv[1]
    promtool = sys.argv[2] if len(sys.argv) > 2 else "promtool"
    errors = []
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dashboard:
            errors.append(f"dashboard has no {key}")
    panels = dashboard.get("panels", [])
    ids, titles, cells, exprs = set(), set(), {}, []
    for p in panels:
        title = p.get("title", "")
        where = f"panel {p.get('id')} «{title}»"
        if p.get("id") in ids:
            errors.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if p.get("type") != "row":
            if title in titles:
                errors.append(f"{where}: duplicate title")
            titles.add(title)
        g = p.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or x < 0 or w < 1 or h < 1 or x + w > 24:
            errors.append(f"{where}: gridPos {g} outside the 24-column grid")
            continue
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                other = cells.get((cx, cy))
                if other is not None:
                    errors.append(f"{where}: overlaps panel {other}")
                    break
                cells[(cx, cy)] = p.get("id")
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        targets = p.get("targets", [])
        if not targets:
            errors.append(f"{where}: no query")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs):
            errors.append(f"{where}: duplicate refId")
        for t in [p] + targets:
            uid = t.get("datasource", {}).get("uid")
            if uid != "${datasource}":
                errors.append(f"{where}: data source {uid!r}, not the dashboard's ${{datasource}}")
        for t in targets:
            expr = t.get("expr", "")
            if not expr.strip():
                errors.append(f"{where}: query {t.get('refId')} has no expression")
                continue
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            exprs.append((where, expr))

    # Every expression as a recording rule: promtool parses each one.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, (_, e) in enumerate(exprs)
    ]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump(rules, f)  # JSON is YAML
        rules_path = f.name
    try:
        out = subprocess.run([promtool, "check", "rules", rules_path],
                             capture_output=True, text=True)
    finally:
        os.unlink(rules_path)
    if out.returncode != 0:
        errors.append("promtool rejects a query:\n" + out.stdout + out.stderr)

    for e in errors:
        print(e)
    print(f"{len(panels)} panels, {len(exprs)} queries checked")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
