"""Start, stop and inspect N cnnviz (Streamlit) replicas behind HAProxy on one machine.

    python deploy/cluster.py start [--replicas N] [--port P] [--bind ADDR] [--run-dir DIR]
    python deploy/cluster.py status [--run-dir DIR]
    python deploy/cluster.py stop [--run-dir DIR]

Replicas listen on 127.0.0.1 only (ports P+1..P+N unless --replica-ports says otherwise);
HAProxy listens on ADDR:P (127.0.0.1 by default; 0.0.0.0 for a class on the LAN) and its
statistics on 127.0.0.1:--stats-port. Every replica gets the same `server.cookieSecret`
(read from --secret-file, or made once into <run dir>/cookie_secret, mode 0600, and kept),
given through the environment so it never shows in `ps`. The run folder holds one PID file
and one log per process and the generated haproxy.cfg. `stop` ends exactly the processes
whose PID files it finds (each started in its own session, so its process group is its
own), checking first that the PID still belongs to the process that was started; never by
name. Nothing here imports cnnviz: only the Python standard library and the haproxy binary.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TEMPLATE = HERE / "haproxy.cfg.template"
DEFAULT_RUN = HERE / "run"
START_TIMEOUT = 90.0  # seconds for every replica and the proxy to report healthy


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


# ---------------------------------------------------------------- PID files

def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), None if it is gone.
    Kept in the PID file: a recycled PID has another start time, so it is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _write_pid(path: Path, pid: int) -> None:
    path.write_text(json.dumps({"pid": pid, "start": _start_time(pid)}))


def _read_pid(path: Path) -> int | None:
    """The PID in `path` if that process is still the one that was started."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = int(info["pid"])
    return pid if _start_time(pid) is not None and _start_time(pid) == info["start"] else None


def pids(run_dir: Path) -> dict[str, int]:
    """Name -> PID of every process of the set that is still running."""
    out = {}
    for f in sorted(run_dir.glob("*.pid")):
        pid = _read_pid(f)
        if pid is not None:
            out[f.stem] = pid
    return out


def _alive(pid: int) -> bool:
    st = _start_time(pid)
    if st is None:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- start

def _spawn(cmd: list[str], log: Path, pid_file: Path, env: dict | None = None) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    _write_pid(pid_file, proc.pid)
    return proc.pid


def _secret(run_dir: Path, secret_file: str | None) -> str:
    if secret_file:
        value = Path(secret_file).read_text().strip()
        if len(value) < 32:
            raise SystemExit(f"{secret_file}: the cookie secret must be at least 32 characters")
        return value
    path = run_dir / "cookie_secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def render_config(bind: str, port: int, stats_port: int, replicas: list[tuple[str, str, int]]) -> str:
    servers = "\n".join(f"    server {name} {host}:{p} check cookie {name}" for name, host, p in replicas)
    return string.Template(TEMPLATE.read_text()).substitute(bind=bind, port=port, stats_port=stats_port,
                                                            servers=servers)


def _get(url: str, timeout: float = 2.0) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError:
        return None


def replica_states(stats_port: int) -> dict[str, str]:
    """Replica name -> HAProxy's state for it (UP, DOWN, ...), from the statistics CSV."""
    body = _get(f"http://127.0.0.1:{stats_port}/stats;csv")
    if body is None:
        return {}
    rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
    return {r["svname"]: r["status"] for r in rows if r["pxname"] == "streamlit" and r["svname"] not in
            ("FRONTEND", "BACKEND")}


def start(args) -> int:
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if pids(run_dir):
        print(f"already running in {run_dir} (stop it first): {pids(run_dir)}", file=sys.stderr)
        return 1
    haproxy = haproxy_binary()
    if haproxy is None:
        print("haproxy is not installed (Debian: apt-get install -y haproxy)", file=sys.stderr)
        return 1
    ports = ([int(p) for p in args.replica_ports.split(",")] if args.replica_ports
             else [args.port + 1 + i for i in range(args.replicas)])
    stats_port = args.stats_port or args.port + 1000
    secret = _secret(run_dir, args.secret_file)
    env = {**os.environ, "STREAMLIT_SERVER_COOKIE_SECRET": secret}
    replicas = []
    for i, p in enumerate(ports, 1):
        name = f"r{i}"
        _spawn([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                "--server.address", "127.0.0.1", "--server.port", str(p), "--server.fileWatcherType", "none",
                "--browser.gatherUsageStats", "false"],
               run_dir / f"{name}.log", run_dir / f"{name}.pid", env)
        replicas.append((name, "127.0.0.1", p))
    cfg = run_dir / "haproxy.cfg"
    cfg.write_text(render_config(args.bind, args.port, stats_port, replicas))
    check = subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode:
        print(f"haproxy rejected {cfg}: {check.stderr.strip()}", file=sys.stderr)
        stop(args)
        return 1
    _spawn([haproxy, "-db", "-f", str(cfg)], run_dir / "haproxy.log", run_dir / "haproxy.pid")
    (run_dir / "cluster.json").write_text(json.dumps({"port": args.port, "bind": args.bind, "stats_port": stats_port,
                                                      "replicas": {n: p for n, _, p in replicas}}))
    deadline = time.time() + START_TIMEOUT
    while time.time() < deadline:
        states = replica_states(stats_port)
        if len(states) == len(replicas) and all(s == "UP" for s in states.values()):
            print(f"cnnviz on http://{args.bind}:{args.port} ({len(replicas)} replicas: "
                  + ", ".join(f"{n}=127.0.0.1:{p}" for n, _, p in replicas) + f"); logs in {run_dir}")
            return 0
        gone = [n for n, pid in _all_pid_files(run_dir).items() if pid is None]
        if gone:
            print(f"{', '.join(gone)} exited during start-up; see the logs in {run_dir}", file=sys.stderr)
            stop(args)
            return 1
        time.sleep(0.5)
    print(f"not every replica was healthy after {START_TIMEOUT:.0f} s: {replica_states(stats_port)}; "
          f"see the logs in {run_dir}", file=sys.stderr)
    stop(args)
    return 1


def _all_pid_files(run_dir: Path) -> dict[str, int | None]:
    return {f.stem: _read_pid(f) for f in sorted(run_dir.glob("*.pid"))}


# ---------------------------------------------------------------- stop, status

def stop(args) -> int:
    run_dir = Path(args.run_dir)
    running = pids(run_dir)
    # The proxy first, so no new request reaches a replica that is going away.
    order = sorted(running, key=lambda n: n != "haproxy")
    for name in order:
        try:
            os.killpg(running[name], signal.SIGTERM)  # its own group: start_new_session
        except ProcessLookupError:
            pass
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in running.values()):
        time.sleep(0.2)
    for name, pid in running.items():
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for f in run_dir.glob("*.pid"):
        f.unlink()
    if running:
        print("stopped " + ", ".join(f"{n} (PID {p})" for n, p in running.items()))
    else:
        print(f"nothing running in {run_dir}")
    return 0


def status(args) -> int:
    run_dir = Path(args.run_dir)
    try:
        info = json.loads((run_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        info = {}
    files = _all_pid_files(run_dir)
    states = replica_states(info["stats_port"]) if info and files.get("haproxy") else {}
    for name, pid in files.items():
        port = info.get("replicas", {}).get(name, info.get("port"))
        print(f"{name:8} {'running' if pid else 'gone':8} PID {pid or '-':<8} port {port}  "
              + (f"proxy: {states.get(name, '?')}" if name != "haproxy" else ""))
    if not files:
        print(f"nothing running in {run_dir}")
    return 0 if files and all(files.values()) else 3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="deploy/cluster.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("start", "stop", "status"))
    ap.add_argument("--replicas", type=int, default=2, help="number of Streamlit replicas (default 2)")
    ap.add_argument("--port", type=int, default=8500, help="the proxy's port (default 8500)")
    ap.add_argument("--bind", default="127.0.0.1", help="the proxy's address (0.0.0.0: every interface)")
    ap.add_argument("--replica-ports", help="comma-separated replica ports (default: port+1 ... port+N)")
    ap.add_argument("--stats-port", type=int, help="HAProxy statistics on 127.0.0.1 (default port+1000)")
    ap.add_argument("--secret-file", help="file holding server.cookieSecret (the same on every machine)")
    ap.add_argument("--run-dir", default=str(DEFAULT_RUN), help="PID files, logs, haproxy.cfg (default deploy/run)")
    args = ap.parse_args(argv)
    if args.replicas < 1 or args.replicas > 64:
        ap.error("--replicas must be between 1 and 64")
    return {"start": start, "stop": stop, "status": status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
