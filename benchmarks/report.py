"""Summaries of the raw runs: medians with min and max, ratios, targets, and the Markdown table."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

PEERS = ("lftp", "lftp-async", "rclone", "curl")
TOOL_TITLES = {
    "pooler": "FTP Pooler (drain)",
    "pooler-stream": "FTP Pooler (tasks arriving)",
    "pooler-nopool": "FTP Pooler, pooling off",
    "lftp": "lftp",
    "lftp-async": "lftp, sync-mode off",
    "rclone": "rclone",
    "curl": "curl",
}
SET_TITLES = {"small": "SMALL", "medium": "MEDIUM", "large": "LARGE"}
# Ratios of FTP Pooler's drain rate to the best peer's the issue asks for: on loopback per
# (set, direction), and for SMALL behind the latency proxy from 5 ms one-way (~10 ms RTT) up.
PEER_TARGETS = {
    ("small", "download"): 0.5,
    ("small", "upload"): 0.5,
    ("large", "download"): 0.8,
    ("large", "upload"): 0.9,
}
LATENCY_TARGET = 1.2
CPU_PER_SMALL_FILE_MS = 0.6
POOLING_TARGET = 4.0


def _metric(record: dict[str, Any], unit: str) -> float:
    return float(record["files_per_s"] if unit == "files/s" else record["mib_per_s"])


def summarize(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per server, set, direction, tool and variant."""
    units = {name: spec["unit"] for name, spec in results["config"]["sets"].items()}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for record in results["runs"]:
        key = (record["server"], record["set"], record["direction"], record["tool"])
        groups[(*key, record.get("variant"))].append(record)
    rows = []
    for (server, set_name, direction, tool, variant), records in groups.items():
        good = [r for r in records if r.get("ok")]
        unit = units[set_name]
        values = [_metric(r, unit) for r in good]
        row: dict[str, Any] = {
            "server": server,
            "set": set_name,
            "direction": direction,
            "tool": tool,
            "variant": variant,
            "unit": unit,
            "runs": len(good),
            "failed_runs": len(records) - len(good),
            "errors": sorted({str(r.get("error", ""))[:200] for r in records if not r.get("ok")}),
        }
        if values:
            row.update(
                median=round(statistics.median(values), 1),
                min=round(min(values), 1),
                max=round(max(values), 1),
                cpu_seconds=round(statistics.median(r.get("cpu_seconds", 0) for r in good), 2),
                peak_rss_mib=round(max(r.get("peak_rss_kib", 0) for r in good) / 1024, 1),
                server_cpu_seconds=round(
                    statistics.median(r.get("server_cpu_seconds", 0) for r in good), 2
                ),
                host_cpu_busy=round(statistics.median(r.get("host_cpu_busy", 0) for r in good), 2),
                load_1min=[
                    min(r["loadavg_before"][0] for r in good),
                    max(r["loadavg_before"][0] for r in good),
                ],
            )
            ftp = [r for r in good if r.get("ftp")]
            if ftp:
                row.update(_ftp_costs(ftp, sessions=results["config"]["sessions_per_server"]))
            if tool.startswith("pooler"):
                row["startup_seconds"] = round(
                    statistics.median(r.get("startup_seconds", 0) for r in good), 2
                )
                row["logins"] = max(r.get("logins", 0) for r in good)
            if tool == "pooler-stream":
                row["latency_ms_p50"] = statistics.median(
                    r["latency_ms"].get("p50", 0) for r in good
                )
                row["latency_ms_p95"] = statistics.median(
                    r["latency_ms"].get("p95", 0) for r in good
                )
        rows.append(row)
    return rows


def _ftp_costs(records: list[dict[str, Any]], sessions: int) -> dict[str, Any]:
    """Per file, from the latency proxy's counts: FTP commands, the client's turns on its control
    connections (commands sent together count once), and the wall time per file per session
    in round trips (what a file really costs, data connections and local work included)."""
    one_way = float(records[0].get("one_way_ms", 0))
    per_file = [{verb: n / r["files"] for verb, n in r["ftp"]["commands"].items()} for r in records]
    verbs = sorted({verb for counts in per_file for verb in counts})
    costs: dict[str, Any] = {
        "one_way_ms": one_way,
        "commands_per_file": round(
            statistics.median(r["ftp"]["commands_total"] / r["files"] for r in records), 2
        ),
        "turns_per_file": round(
            statistics.median(r["ftp"]["turns"] / r["files"] for r in records), 2
        ),
        "think_ms_per_file": round(
            statistics.median(
                1000 * r["ftp"].get("think_seconds", 0) / r["files"] for r in records
            ),
            2,
        ),
        "command_mix": {
            verb: round(statistics.median(c.get(verb, 0) for c in per_file), 2) for verb in verbs
        },
        "control_connections": max(r["ftp"]["control_connections"] for r in records),
    }
    if one_way > 0:
        costs["round_trips_per_file"] = round(
            statistics.median(
                sessions * r["seconds"] / r["files"] / (2 * one_way / 1000) for r in records
            ),
            2,
        )
    return costs


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()) and "median" in row:
            return row
    return None


def best_peer(rows: list[dict[str, Any]], server: str, set_name: str, direction: str) -> Any:
    candidates = [
        r
        for r in rows
        if r["server"] == server
        and r["set"] == set_name
        and r["direction"] == direction
        and r["tool"] in PEERS
        and "median" in r
    ]
    return max(candidates, key=lambda r: r["median"]) if candidates else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue, per FTP Pooler variant, with the figure measured and by how
    much it is met or missed."""
    rows = results["summary"]
    checks = []
    keys = sorted({(r["server"], r["set"], r["direction"]) for r in rows})
    for variant in [v["label"] for v in results["config"]["variants"]]:
        for server, set_name, direction in keys:
            match = {"server": server, "set": set_name, "direction": direction}
            ours = _find(rows, **match, tool="pooler", variant=variant)
            peer = best_peer(rows, server, set_name, direction)
            title = f"{SET_TITLES[set_name]} {direction}s on {server}, {variant}"
            wanted = _peer_target(server, set_name, direction)
            if wanted is not None and ours and peer:
                ratio = ours["median"] / peer["median"]
                checks.append(
                    {
                        "target": f"{title}: drain >= {wanted:.1f}x best peer",
                        "figure": f"{ours['median']} vs {peer['tool']} {peer['median']} "
                        f"{ours['unit']}",
                        "ratio": round(ratio, 2),
                        "wanted": wanted,
                        "met": ratio >= wanted,
                    }
                )
            if set_name == "small" and "+" not in server and ours:
                files = results["config"]["sets"]["small"]["count"]
                per_file = ours["cpu_seconds"] / files * 1000
                checks.append(
                    {
                        "target": f"{title}: worker CPU per file <= {CPU_PER_SMALL_FILE_MS} ms",
                        "figure": f"{per_file:.2f} ms ({ours['cpu_seconds']} s / {files} files)",
                        "ratio": round(per_file / CPU_PER_SMALL_FILE_MS, 2),
                        "wanted": 1.0,
                        "at_most": True,
                        "met": per_file <= CPU_PER_SMALL_FILE_MS,
                    }
                )
            off = _find(rows, **match, tool="pooler-nopool", variant=variant)
            if set_name == "small" and ours and off:
                ratio = ours["median"] / off["median"]
                checks.append(
                    {
                        "target": f"{title}: pooling on >= {POOLING_TARGET:.0f}x pooling off",
                        "figure": f"{ours['median']} vs {off['median']} files/s",
                        "ratio": round(ratio, 2),
                        "wanted": POOLING_TARGET,
                        "met": ratio >= POOLING_TARGET,
                    }
                )
    for memory in results.get("memory") or []:
        peak = memory["peak_rss_mib"]["max"]
        if peak is None:
            continue
        checks.append(
            {
                "target": f"worker peak RSS < {memory['limit_mib']} MiB with "
                f"{memory['shape']['transfers']} transfers at once, {memory['variant']}",
                "figure": f"{peak} MiB (worst of {len(memory['runs'])} runs)",
                "ratio": round(peak / memory["limit_mib"], 2),
                "wanted": 1.0,
                "at_most": True,
                "met": peak < memory["limit_mib"],
            }
        )
    return checks


def _peer_target(server: str, set_name: str, direction: str) -> float | None:
    if "+" in server:  # behind the latency proxy: "vsftpd+5ms"
        one_way = float(server.split("+", 1)[1].removesuffix("ms"))
        return LATENCY_TARGET if set_name == "small" and one_way >= 5 else None
    return PEER_TARGETS.get((set_name, direction))


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if "median" not in row:
        return f"failed ({row['failed_runs']})"
    text = f"{row['median']:,.0f} ({row['min']:,.0f}-{row['max']:,.0f})"
    if row["failed_runs"]:
        text += f" +{row['failed_runs']} failed"
    return text


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    rows = results["summary"]
    variants = [v["label"] for v in results["config"]["variants"]]
    sets = results["config"]["sets"]
    out = [
        f"# FTP Pooler benchmark, {results['started'][:10]}, host `{env['host']}`",
        "",
        f"{env['cpus']} CPUs ({env['cpu_model']}), {env['memory_gib']} GiB RAM, Linux "
        f"{env['kernel']}, Python {env['python']}; FTP Pooler at `{env['git_commit'][:12]}`"
        + (" (with uncommitted changes)" if env["git_dirty_paths"] else "")
        + f"; Kafka on `{env['kafka']}` (same host). Peers: "
        + "; ".join(env["peers"].values())
        + ". Servers: "
        + "; ".join(env["servers"].values())
        + ".",
        "",
        f"Each cell: median of {results['config']['repeats']} runs (min-max). Files/s for SMALL, "
        "MiB/s for MEDIUM and LARGE. Everything on loopback, files read from and written to "
        f"disk, {results['config']['sessions_per_server']} sessions per server for every tool. "
        "FTP Pooler's figure is the drain rate: all tasks on Kafka first, then one worker; from "
        "its first fetch to the last result consumed from Kafka.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    for server in sorted({r["server"] for r in rows if "one_way_ms" not in r}):
        out += [f"## {server}", ""]
        columns: list[tuple[str, str | None]] = []
        for tool in ("pooler", "pooler-stream", "pooler-nopool"):
            for variant in variants:
                if any(
                    r["server"] == server and r["tool"] == tool and r["variant"] == variant
                    for r in rows
                ):
                    columns.append((tool, variant))
        columns += [(peer, None) for peer in PEERS]
        header = ["set", "direction"]
        for tool, variant in columns:
            header.append(
                TOOL_TITLES[tool] + (f" [{variant}]" if len(variants) > 1 and variant else "")
            )
        header.append("best peer")
        header += [
            f"drain / best peer [{v}]" if len(variants) > 1 else "drain / best peer"
            for v in variants
        ]
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        resources = []
        for set_name in ("small", "medium", "large"):
            if set_name not in sets:
                continue
            spec = sets[set_name]
            for direction in ("download", "upload"):
                match = {"server": server, "set": set_name, "direction": direction}
                if not any(all(r[k] == v for k, v in match.items()) for r in rows):
                    continue
                cells = [_cell(_find(rows, **match, tool=t, variant=v)) for t, v in columns]
                peer = best_peer(rows, server, set_name, direction)
                ratios = []
                for variant in variants:
                    ours = _find(rows, **match, tool="pooler", variant=variant)
                    ratios.append(
                        f"{ours['median'] / peer['median']:.2f}" if ours and peer else "-"
                    )
                title = f"{SET_TITLES[set_name]} {spec['count']:,} x {_size(spec['size'])}"
                out.append(
                    f"| {title} | {direction} | "
                    + " | ".join(cells)
                    + f" | {peer['tool'] if peer else '-'} | "
                    + " | ".join(ratios)
                    + " |"
                )
                for tool, variant in columns:
                    if tool in ("pooler", "pooler-nopool", *PEERS):
                        row = _find(rows, **match, tool=tool, variant=variant)
                        if row:
                            resources.append((title, direction, tool, variant, row))
        out += ["", f"CPU seconds and peak RSS per run (median CPU, worst RSS) on {server}:", ""]
        out += [
            "| set | direction | tool | CPU s | peak RSS MiB | server CPU s | host CPU busy |"
            " logins | 1-min load |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for title, direction, tool, variant, row in resources:
            logins = row.get("logins", "")
            name = TOOL_TITLES[tool] + (f" [{variant}]" if len(variants) > 1 and variant else "")
            out.append(
                f"| {title} | {direction} | {name} | {row['cpu_seconds']} | "
                f"{row['peak_rss_mib']} | {row['server_cpu_seconds']} | "
                f"{row['host_cpu_busy']:.0%} | {logins} | "
                f"{row['load_1min'][0]}-{row['load_1min'][1]} |"
            )
        out.append("")
    out += _latency_tables(rows, variants)
    if len(variants) > 1:
        out += ["## Variants", "", "| server | set | direction | tool | " + " | ".join(variants)]
        out[-1] += " |"
        out.append("|" + "---|" * (4 + len(variants)))
        keys = sorted(
            {(r["server"], r["set"], r["direction"], r["tool"]) for r in rows if r["variant"]}
        )
        for server, set_name, direction, tool in keys:
            base = _find(
                rows,
                server=server,
                set=set_name,
                direction=direction,
                tool=tool,
                variant=variants[0],
            )
            cells = []
            for variant in variants:
                row = _find(
                    rows,
                    server=server,
                    set=set_name,
                    direction=direction,
                    tool=tool,
                    variant=variant,
                )
                text = _cell(row)
                if row and base and variant != variants[0]:
                    text += f" ({row['median'] / base['median']:.2f}x)"
                cells.append(text)
            out.append(
                f"| {server} | {set_name} | {direction} | {tool} | " + " | ".join(cells) + " |"
            )
        out.append("")
    for memory in results.get("memory") or []:
        peak = memory["peak_rss_mib"]
        runs = memory["runs"]
        out += [
            f"## Memory, {memory['variant']}",
            "",
            f"{memory['shape']['transfers']} transfers at once on one vsftpd "
            f"({memory['shape']['per_direction']} each way; sparse sources, real data "
            f"connections, hashing and writes): worker peak RSS median {peak['median']} MiB "
            f"(min {peak['min']}, max {peak['max']}), limit {memory['limit_mib']} MiB. "
            "RSS of the idle worker at ready: "
            + ", ".join(f"{r['rss_at_ready_kib'] / 1024:.0f}" for r in runs)
            + " MiB; sessions busy at once (sampled): "
            + ", ".join(str(r["max_busy_sessions_seen"]) for r in runs)
            + "; throughput: "
            + ", ".join(f"{r['mib_per_s']}" for r in runs)
            + " MiB/s; 1-min load before: "
            + ", ".join(f"{r['loadavg_before'][0]}" for r in runs)
            + ".",
            "",
        ]
    if results["targets"]:
        out += ["## Targets", "", "| target | measured | ratio | met |", "|---|---|---|---|"]
        for check in results["targets"]:
            bound = "<=" if check.get("at_most") else ">="
            met = "yes" if check["met"] else f"**no** (ratio wanted {bound} {check['wanted']})"
            out.append(f"| {check['target']} | {check['figure']} | {check['ratio']} | {met} |")
        out.append("")
    failures = [r for r in rows if r["failed_runs"]]
    if failures or results["notes"]:
        out += ["## Notes", ""]
        out += [f"- {note}" for note in results["notes"]]
        for row in failures:
            out.append(
                f"- {row['server']} {row['set']} {row['direction']} {row['tool']}: "
                f"{row['failed_runs']} failed run(s): {'; '.join(row['errors'])}"
            )
        out.append("")
    return "\n".join(out)


def _latency_tables(rows: list[dict[str, Any]], variants: list[str]) -> list[str]:
    """Files/s at each one-way delay, and what each file costs each tool in FTP commands and
    round trips (from the proxy's counts)."""
    proxied = [r for r in rows if "one_way_ms" in r and "median" in r]
    if not proxied:
        return []
    out = [
        "## Behind the latency proxy",
        "",
        "Every chunk delayed by the one-way time both ways, control and data connections "
        "(`benchmarks/latency.py`); RTT = 2 x one-way. Cells: files/s, median (min-max). "
        "`ratio`: FTP Pooler's drain over the best peer at that delay.",
        "",
    ]
    columns: list[tuple[str, str | None]] = [
        ("pooler", v) for v in variants if any(r["variant"] == v for r in proxied)
    ]
    columns += [(t, None) for t in PEERS if any(r["tool"] == t for r in proxied)]
    ours = [c for c in columns if c[0] == "pooler"]

    def title(tool: str, variant: str | None) -> str:
        name = TOOL_TITLES[tool]
        return f"{name} [{variant}]" if variant and len(ours) > 1 else name

    bases = sorted({r["server"].split("+", 1)[0] for r in proxied})
    for base in bases:
        mine = [r for r in proxied if r["server"].startswith(base + "+")]
        delays = sorted({r["one_way_ms"] for r in mine})
        header = ["one-way ms", "direction", *(title(t, v) for t, v in columns), "best peer"]
        header += [f"ratio [{v}]" if len(ours) > 1 else "ratio" for _t, v in ours]
        out += [f"### {base}: files/s", "", "| " + " | ".join(header) + " |"]
        out.append("|" + "---|" * len(header))
        for delay in delays:
            for direction in ("download", "upload"):
                cells = [_cell(_one(mine, delay, direction, t, v)) for t, v in columns]
                peers = [_one(mine, delay, direction, t, None) for t in PEERS]
                best = max((p for p in peers if p), key=lambda p: p["median"], default=None)
                ratios = []
                for _t, v in ours:
                    row = _one(mine, delay, direction, "pooler", v)
                    ratios.append(f"{row['median'] / best['median']:.2f}" if row and best else "-")
                out.append(
                    f"| {delay:g} | {direction} | "
                    + " | ".join(cells)
                    + f" | {best['tool'] if best else '-'} | "
                    + " | ".join(ratios)
                    + " |"
                )
        top = delays[-1]
        out += [
            "",
            f"### {base}: what a file costs (at {top:g} ms one-way)",
            "",
            "Per file: FTP commands; the client's turns on its control connections (commands "
            "sent together count once); round trips = sessions x seconds / files / RTT (all of "
            "a file's wall time, in RTTs: data connections, waits, local work and start-up "
            "included); think ms: the client's own time between a reply reaching it and its "
            "next command, summed (its work, not the network's).",
            "",
            "| tool | direction | commands | turns | round trips | think ms | commands by verb |",
            "|---|---|---|---|---|---|---|",
        ]
        for tool, variant in columns:
            for direction in ("download", "upload"):
                row = _one(mine, top, direction, tool, variant)
                if row is None:
                    continue
                mix = ", ".join(
                    f"{verb} {n:g}" for verb, n in row["command_mix"].items() if n >= 0.01
                )
                out.append(
                    f"| {title(tool, variant)} | {direction} | {row['commands_per_file']} | "
                    f"{row['turns_per_file']} | {row.get('round_trips_per_file', '-')} | "
                    f"{row['think_ms_per_file']} | {mix} |"
                )
        out.append("")
    return out


def _one(
    rows: list[dict[str, Any]], delay: float, direction: str, tool: str, variant: str | None
) -> Any:
    for row in rows:
        if (row["one_way_ms"], row["direction"], row["tool"]) == (delay, direction, tool) and (
            variant is None or row["variant"] == variant
        ):
            return row
    return None


def _size(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"
