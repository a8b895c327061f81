#!/usr/bin/env python3
"""Reads the figures scripts/bench-compare.sh left in one directory and prints
them side by side, with each issue-6 target as a measured ratio (all from the
same run, on the same machine). Also writes summary.md (the tables that go
into BENCHMARKS.md) and summary.json in that directory.
"""

import json
import os
import sys

MIB = 1024 * 1024
SIZES = ["64B", "1KiB", "64KiB", "1MiB"]
SIZE_BYTES = {"64B": 64, "1KiB": 1024, "64KiB": 64 * 1024, "1MiB": MIB}


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def openssl_rates(path):
    """`openssl speed -mr` `+F:` line -> {block size: bytes/s}."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    sizes, rates = None, None
    for line in lines:
        if line.startswith("+H:"):
            sizes = [int(x) for x in line.split(":")[1:]]
        if line.startswith("+F:"):
            rates = [float(x) for x in line.split(":")[3:]]
    if not sizes or not rates:
        return None
    return dict(zip(sizes, rates))


def criterion_ns(root, *parts):
    est = load(os.path.join(root, *parts, "new", "estimates.json"))
    return est["mean"]["point_estimate"] if est else None


def fmt_rate(bps):
    return f"{bps / MIB:,.0f} MiB/s" if bps is not None else "n/a"


def main():
    out, criterion = sys.argv[1], sys.argv[2]
    lines, md, summary, targets = [], [], {}, []

    def say(text=""):
        lines.append(text)

    # --- crypto ---------------------------------------------------------
    aes, hmac = openssl_rates(os.path.join(out, "openssl-aes.mr")), openssl_rates(os.path.join(out, "openssl-hmac.mr"))
    combined = None
    if aes and hmac:
        big = max(set(aes) & set(hmac))
        combined = 1 / (1 / aes[big] + 1 / hmac[big])
        say(f"OpenSSL {big} B blocks: AES-128-CBC {fmt_rate(aes[big])}, HMAC-SHA256 {fmt_rate(hmac[big])}, "
            f"combined (encrypt then MAC, one core) {fmt_rate(combined)}")
        summary["openssl"] = {"block": big, "aes_bps": aes[big], "hmac_bps": hmac[big], "combined_bps": combined}
    py = {r["size"]: r for r in (load(os.path.join(out, "python-fernet.json")) or [])}
    md.append("| size | spyctl seal | spyctl open | Python seal | Python open | spyctl/Python seal |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    summary["fernet"] = {}
    say("Fernet (criterion mean; Python best of 3):")
    for size in SIZES:
        seal_ns, open_ns = criterion_ns(criterion, "fernet", "seal", size), criterion_ns(criterion, "fernet", "open", size)
        n = SIZE_BYTES[size]
        seal = n / (seal_ns * 1e-9) if seal_ns else None
        opened = n / (open_ns * 1e-9) if open_ns else None
        p = py.get(size, {})
        pseal = p.get("seal_mib_per_sec", 0) * MIB or None
        popen = p.get("open_mib_per_sec", 0) * MIB or None
        ratio = f"{seal / pseal:.1f}x" if seal and pseal else "n/a"
        say(f"  {size:>6}: seal {fmt_rate(seal):>12} ({seal_ns or 0:,.0f} ns)  open {fmt_rate(opened):>12}   "
            f"python seal {fmt_rate(pseal):>12} open {fmt_rate(popen):>12}  spyctl/python seal {ratio}")
        md.append(f"| {size} | {fmt_rate(seal)} ({(seal_ns or 0) / 1000:,.2f} µs) | {fmt_rate(opened)} | "
                  f"{fmt_rate(pseal)} | {fmt_rate(popen)} | {ratio} |")
        summary["fernet"][size] = {"seal_bps": seal, "open_bps": opened, "python_seal_bps": pseal, "python_open_bps": popen}
    seal_1m = summary["fernet"]["1MiB"]["seal_bps"]
    open_1m = summary["fernet"]["1MiB"]["open_bps"]
    if seal_1m and combined:
        targets.append(("Fernet seal 1 MiB vs OpenSSL AES-128-CBC+HMAC-SHA256", seal_1m / combined, 0.9,
                        f"{fmt_rate(seal_1m)} / {fmt_rate(combined)}"))
    for name, parts in [("blind index", ("blind_index", "name")), ("Argon2id hash", ("password", "argon2id_hash")),
                        ("parse_request 64 B", ("protocol", "parse_request_64B")),
                        ("decode_message 64 B", ("protocol", "decode_message_64B")),
                        ("parse_reply ACK", ("protocol", "parse_reply_ack"))]:
        ns = criterion_ns(criterion, *parts)
        if ns:
            say(f"  {name}: {ns / 1000:,.2f} µs")
            summary.setdefault("micro_us", {})[name] = ns / 1000

    # --- fsync -----------------------------------------------------------
    fs = [load(os.path.join(out, f)) for f in ("fsync-before.json", "fsync-after.json")]
    fs = [f["fsync_per_sec"] for f in fs if f]
    fsync = sum(fs) / len(fs) if fs else None
    if fsync:
        say(f"fsync rate (write 4 KiB + fsync): {', '.join(f'{x:,.0f}/s' for x in fs)}; mean {fsync:,.0f}/s")
        summary["fsync_per_sec"] = fs

    # --- ingest ----------------------------------------------------------
    say("Durable ingest, 64 B messages (msgs/s; latency p50/p99/max ms):")
    md_ingest = ["| sender -> Boss | mode | conns | msgs/s | p50 ms | p99 ms | max ms | x fsync rate |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    ingest = {}
    for impl, label in [("spyctl", "spyctl -> spyctl"), ("pyboss", "spyctl -> Python"), ("python", "Python -> Python")]:
        for mode in ("persistent", "per-message"):
            for conns in (1, 8, 64):
                r = load(os.path.join(out, f"ingest-{impl}-{mode}-{conns}.json"))
                if not r:
                    continue
                rate, lat = r["msgs_per_sec"], r["latency_us"]
                ingest[(impl, mode, conns)] = rate
                xf = f"{rate / fsync:.1f}" if fsync else "n/a"
                fail = f"  FAILED {r.get('failed')}" if r.get("failed") else ""
                say(f"  {label:<17} {mode:<11} c={conns:<3} {rate:>9,.0f} msgs/s  p50 {lat['p50'] / 1000:7.2f}  "
                    f"p99 {lat['p99'] / 1000:7.2f}  max {lat['max'] / 1000:7.2f}  ({xf} x fsync){fail}")
                md_ingest.append(f"| {label} | {mode} | {conns} | {rate:,.0f} | {lat['p50'] / 1000:.2f} | "
                                 f"{lat['p99'] / 1000:.2f} | {lat['max'] / 1000:.2f} | {xf} |")
    summary["ingest"] = {f"{k[0]}/{k[1]}/{k[2]}": v for k, v in ingest.items()}
    say("spyctl/Python ratios (64 B):")
    for mode in ("persistent", "per-message"):
        for conns in (1, 8):
            s, p = ingest.get(("spyctl", mode, conns)), ingest.get(("python", mode, conns))
            if s and p:
                say(f"  {mode:<11} c={conns}: {s / p:.1f}x")
    s8 = ingest.get(("spyctl", "persistent", 8))
    p8 = ingest.get(("python", "persistent", 8))
    if s8 and p8:
        targets.append(("ingest, 8 persistent: spyctl / Python reference", s8 / p8, 20, f"{s8:,.0f} / {p8:,.0f} msgs/s"))
    if s8 and fsync:
        targets.append(("ingest, 8 persistent: spyctl / fsync rate", s8 / fsync, 5, f"{s8:,.0f} / {fsync:,.0f} per s"))

    # --- file --------------------------------------------------------------
    fspy, fpy = load(os.path.join(out, "file-spyctl.json")), load(os.path.join(out, "file-python.json"))
    if fspy:
        rate = fspy["file_bytes"] / fspy["elapsed_secs"]
        summary["file_spyctl_bps"] = rate
        line = f"64 MiB file: spyctl {fmt_rate(rate)} ({fspy['elapsed_secs']:.2f} s)"
        if fpy:
            prate = fpy["file_bytes"] / fpy["elapsed_secs"]
            summary["file_python_bps"] = prate
            line += f", Python {fmt_rate(prate)} ({fpy['elapsed_secs']:.2f} s): {rate / prate:.1f}x"
        say(line)
        try:
            with open(os.path.join(out, "dsync.txt")) as f:
                dd = f.read().split()
            # "... copied, 1.2 s, 28.0 MB/s": dd's own rate, in its units.
            disk = float(dd[-2]) * {"kB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9}.get(dd[-1], 0)
            summary["dsync_512k_bps"] = disk
            say(f"  durable 512 KiB writes (dd oflag=dsync) {fmt_rate(disk)}: file send is {rate / disk:.2f}x that")
        except (OSError, ValueError, IndexError):
            pass
        if seal_1m:
            crypto = 1 / (1 / seal_1m + 1 / open_1m) if open_1m else seal_1m
            say(f"  single-core crypto rate (Fernet seal 1 MiB) {fmt_rate(seal_1m)}; seal+open on one core "
                f"{fmt_rate(crypto)}")
            targets.append(("file send vs single-core crypto rate (Fernet seal 1 MiB)", rate / seal_1m, 0.5,
                            f"{fmt_rate(rate)} / {fmt_rate(seal_1m)}"))

    # --- cold start, memory ---------------------------------------------------
    cold = load(os.path.join(out, "agent-list.json"))
    if cold:
        say(f"spyctl agent list, cold process: median {cold['median_ms']:.2f} ms (min {cold['min_ms']:.2f}, "
            f"p90 {cold['p90_ms']:.2f}, {cold['runs']} runs, {cold.get('tool', 'loop')})")
        summary["agent_list_ms"] = cold
        targets.append(("agent list cold median (ms), lower is better", cold["median_ms"], 15, "ms"))
    rss = load(os.path.join(out, "rss.json"))
    if rss:
        say(f"Boss RSS: {rss['idle_kib'] / 1024:.1f} MiB started, {rss['loaded_kib'] / 1024:.1f} MiB after the ingest "
            f"runs, {rss['conns_kib'] / 1024:.1f} MiB with {rss['connections']} idle connections "
            f"(threads {rss['threads']}, peak {rss['hwm_kib'] / 1024:.1f} MiB)")
        summary["rss"] = rss
        targets.append((f"Boss RSS (MB) with {rss['connections']} idle connections, lower is better",
                        rss["conns_kib"] * 1024 / 1e6, 30, "MB"))

    say()
    say("Targets (same run, same machine):")
    md_targets = ["| target | measured | goal | met |", "| --- | ---: | ---: | --- |"]
    for name, value, goal, detail in targets:
        lower = "lower is better" in name
        met = value <= goal if lower else value >= goal
        verdict = "met" if met else (f"missed by {value / goal:.2f}x" if lower else f"missed: {value / goal:.0%} of goal")
        say(f"  {'OK  ' if met else 'MISS'} {name}: {value:.2f} (goal {'<=' if lower else '>='} {goal}) [{detail}] {verdict}")
        md_targets.append(f"| {name} | {value:.2f} ({detail}) | {'≤' if lower else '≥'} {goal} | {verdict} |")
        summary.setdefault("targets", []).append({"name": name, "value": value, "goal": goal, "met": met})

    print("\n".join(lines))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(md + [""] + md_ingest + [""] + md_targets) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)


if __name__ == "__main__":
    main()
