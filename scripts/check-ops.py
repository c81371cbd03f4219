#!/usr/bin/env python3
"""Sanity checks for the operator files in deploy/ (stdlib only).

    check-ops.py DASHBOARD ALERTS --metrics SCRAPE

- DASHBOARD (deploy/grafana/stomp-broker.json): valid JSON; the keys Grafana
  needs (title, uid, schemaVersion, panels, the ${DS_PROMETHEUS} input);
  unique integer panel ids; every panel has a type, a title and a gridPos
  inside the 24-column grid that overlaps no other panel; every data panel
  uses the ${DS_PROMETHEUS} datasource and has targets, each with a
  non-empty expr and a unique refId.
- Metric names: every metric named by a dashboard expr, a templating query or
  an alert expr in ALERTS must be a family in SCRAPE, the text of a live
  /metrics of a broker with Kafka bridge and cluster enabled (a family is
  known by its "# TYPE" line, which the broker writes even before a labelled
  sample exists). Names Prometheus itself makes (`up`) are allowed.

Exits 1 listing every problem.
"""
import argparse
import json
import re
import sys

# Series Prometheus creates itself for each scrape target, not the broker.
PROMETHEUS_SERIES = {"up"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "atan2"}
DS_UID = "${DS_PROMETHEUS}"


def metric_names(expr):
    """Metric names in a PromQL expression (or a Grafana label_values query)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, subqueries
    # label lists: by (...), without (...), on (...), ignoring (...), group_x (...)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    # label_values(metric, label): drop the label argument
    e = re.sub(r"label_values\s*\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r" \1 ", e)
    e = re.sub(r"\$\w+|\$\{[^}]*\}", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def alert_exprs(text):
    """The expr values of a rules file (plain or `|` / `>` block scalars)."""
    lines = text.splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        if not m:
            i += 1
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest and rest[0] in "|>":
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            out.append(" ".join(block))
        else:
            out.append(rest.strip("'\""))
            i += 1
    return out


def scrape_families(text):
    fams = set()
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\w+)", line)
        if m:
            fams.add(m.group(1))
            if m.group(2) in ("histogram", "summary"):
                fams.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
    return fams


def check_dashboard(d, problems):
    for key in ("title", "uid", "schemaVersion", "panels", "__inputs", "templating", "time"):
        if key not in d:
            problems.append(f"dashboard: missing key {key!r}")
    if not isinstance(d.get("schemaVersion"), int) or d.get("schemaVersion", 0) < 36:
        problems.append(f"dashboard: schemaVersion {d.get('schemaVersion')!r} is not an integer >= 36")
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("type") == "datasource"
               and i.get("pluginId") == "prometheus" for i in d.get("__inputs", [])):
        problems.append("dashboard: no __inputs entry DS_PROMETHEUS (a prometheus datasource)")
    panels = d.get("panels")
    if not isinstance(panels, list) or not panels:
        problems.append("dashboard: panels is not a non-empty list")
        return []
    exprs = []
    ids = set()
    rects = []
    flat = []
    for p in panels:
        flat.append(p)
        flat.extend(p.get("panels", []) if p.get("type") == "row" else [])
    for p in flat:
        pid = p.get("id")
        where = f"panel {pid!r} ({p.get('title')!r})"
        if not isinstance(pid, int):
            problems.append(f"{where}: id is not an integer")
        elif pid in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(pid)
        if not p.get("type") or not p.get("title"):
            problems.append(f"{where}: missing type or title")
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            problems.append(f"{where}: gridPos needs integer h, w, x, y")
        else:
            if g["x"] < 0 or g["y"] < 0 or g["w"] < 1 or g["h"] < 1 or g["x"] + g["w"] > 24:
                problems.append(f"{where}: gridPos {g} outside the 24-column grid")
            for other, og in rects:
                if (g["x"] < og["x"] + og["w"] and og["x"] < g["x"] + g["w"]
                        and g["y"] < og["y"] + og["h"] and og["y"] < g["y"] + g["h"]):
                    problems.append(f"{where}: gridPos overlaps {other}")
            rects.append((where, g))
        if p.get("type") == "row":
            continue
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("uid") != DS_UID:
            problems.append(f"{where}: datasource is not {{uid: {DS_UID}}}")
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{where}: no targets")
            continue
        refs = set()
        for t in targets:
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: target {t.get('refId')!r} has no expr")
                continue
            if t.get("refId") in refs or not t.get("refId"):
                problems.append(f"{where}: missing or duplicate refId {t.get('refId')!r}")
            refs.add(t.get("refId"))
            if expr.count("(") != expr.count(")"):
                problems.append(f"{where}: unbalanced parentheses in {expr!r}")
            exprs.append((where, expr))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if isinstance(q, str) and q:
            exprs.append((f"templating {v.get('name')!r}", q))
    return exprs


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dashboard")
    ap.add_argument("alerts")
    ap.add_argument("--metrics", required=True, help="a live /metrics scrape (text)")
    a = ap.parse_args()
    problems = []
    try:
        with open(a.dashboard, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        print(f"check-ops: {a.dashboard}: not valid JSON: {e}", file=sys.stderr)
        return 1
    exprs = check_dashboard(d, problems)
    with open(a.alerts, encoding="utf-8") as f:
        alerts = alert_exprs(f.read())
    if not alerts:
        problems.append(f"{a.alerts}: no alert exprs found")
    exprs += [(f"{a.alerts}", e) for e in alerts]
    with open(a.metrics, encoding="utf-8") as f:
        known = scrape_families(f.read())
    if not known:
        problems.append(f"{a.metrics}: no '# TYPE' lines (not a /metrics scrape?)")
    used = set()
    for where, expr in exprs:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric name in {expr!r}")
        for n in sorted(names):
            used.add(n)
            if n not in known and n not in PROMETHEUS_SERIES:
                problems.append(f"{where}: metric {n!r} is not exported by the broker ({expr!r})")
    for p in problems:
        print(f"check-ops: {p}", file=sys.stderr)
    print(f"check-ops: {len(exprs)} exprs, {len(used)} metric names checked against "
          f"{len(known)} exported families; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
