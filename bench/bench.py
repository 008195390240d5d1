#!/usr/bin/env python3
"""xfer benchmark: xfer against raw-TCP baselines measured in the same run.

Runs on loopback with fresh destination directories, a few repetitions per
case (the median is reported), and prints wall seconds, MB/s, CPU seconds and
peak RSS of each side, then the ratios the performance targets are stated in.

    python3 bench/bench.py            # everything (needs ~24 GB of disk, ~10 min)
    python3 bench/bench.py --quick    # smaller inputs, one repetition each
    python3 bench/bench.py --cases 1,3 # only some cases (numbers as printed)

Baselines: one SHA-256 pass (`openssl dgst -sha256`), a raw TCP copy with
`nc`, `tar | nc` for trees, rsync in daemon mode, `dd ... conv=fsync` (a
plain durable copy, reading then writing), and the disk alone: one `dd`
reading the source while another writes and syncs as many zeros, which is
about the least time any tool needs to read a file from this disk and
store a durable copy on it. As root the script installs
rsync and netcat-openbsd with apt-get when they are missing, and drops the
page cache before each timed run (case 8 adds rounds from a warm cache).
As root it also holds back this VM's free page reporting while it runs
(docs/PERFORMANCE.md, "Method", says why).

Every run writes into a directory of its own; a case's directories are
removed (and the removal synced) only after the case, because on some
filesystems deleting a large tree slows down whichever run comes next
(ext4 searches past recently deleted inodes). Case 8's warm 1 GiB rounds
are the exception: each run's single file is removed right after it.
"""

import argparse
import asyncio
import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
XFER = ROOT / "target" / "release" / "xfer"
MIB = 1024 * 1024


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    missing = [t for t in ("rsync", "nc") if shutil.which(t) is None]
    if missing and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "rsync", "netcat-openbsd"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for tool in ("rsync", "nc"):
        if shutil.which(tool) is None:
            print(f"note: {tool} not installed; its baseline is skipped")


# This VM gives memory that was free for a moment back to its host (free
# page reporting); the next touch of such a page is slow, about 1 s per
# GiB, and lands on whichever side of a transfer touches it first. A
# machine of our own has no such cost, so while the benchmark runs,
# memory is reported only after a minute free (docs/PERFORMANCE.md,
# "Method"): the same plain 1 GiB send then takes 1.42-1.47 s, run after
# run, instead of anywhere from 1.4 to 2.6 s.
REPORTING_DELAY = Path("/sys/module/page_reporting/parameters/min_free_ms")


def hold_back_page_reporting():
    """Sets this VM's page-reporting delay to a minute, if it has one and we
    may, until the script exits (SIGTERM and SIGHUP included)."""
    if not REPORTING_DELAY.exists():
        return
    try:
        before = REPORTING_DELAY.read_text().strip()
        REPORTING_DELAY.write_text("60000\n")
    except OSError as e:
        print(f"note: cannot hold back free page reporting ({e}); expect noisy times")
        return
    atexit.register(lambda: REPORTING_DELAY.write_text(before + "\n"))
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _: sys.exit(128 + number))
    print(f"note: free page reporting held back for the run (min_free_ms {before} -> 60000)")
    if before == "60000":
        print(f"note: it was 60000 already: a killed run may have left it so; "
              f"'echo 0 > {REPORTING_DELAY}' restores this VM's default")


def drop_caches():
    subprocess.run(["sync"])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Timed:
    """A process run under /usr/bin/time: wall, user+sys CPU, peak RSS."""

    def __init__(self, argv, stdout=subprocess.DEVNULL, stdin=None, cwd=None, env=None):
        self.stats = tempfile.NamedTemporaryFile(delete=False)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%e %U %S %M", "-o", self.stats.name, *argv],
            stdout=stdout, stdin=stdin, stderr=subprocess.PIPE, cwd=cwd,
            env=None if env is None else {**os.environ, **env})

    def wait(self, limit=600):
        # A blocking wait, with a timer for the limit: `Popen.wait(timeout)`
        # polls with sleeps of up to 50 ms, which put steps of 50 ms into
        # every wall time (a tenth of a 5,000-file send).
        timed_out = threading.Event()

        def kill():
            # What /usr/bin/time runs, then time itself.
            timed_out.set()
            subprocess.run(["pkill", "-KILL", "-P", str(self.proc.pid)])
            self.proc.kill()

        timer = threading.Timer(limit, kill)
        timer.start()
        try:
            self.proc.wait()
        finally:
            timer.cancel()
        if timed_out.is_set():
            os.unlink(self.stats.name)
            raise RuntimeError(f"{self.proc.args} did not finish within {limit} s")
        wall, user, system, rss = Path(self.stats.name).read_text().split()[-4:]
        os.unlink(self.stats.name)
        if self.proc.returncode != 0:
            raise RuntimeError(f"{self.proc.args} failed: {self.proc.stderr.read().decode()[-500:]}")
        return {"wall": float(wall), "cpu": float(user) + float(system), "rss_mb": int(rss) / 1024}


# The code of the coded runs (case 8), passed as XFER_CODE to both sides.
CODE = "4821-orbit-lemon-tiger-brick"


def xfer_once(src_paths, dest, extra_send=(), via=None, code=False):
    """One xfer transfer; returns (sender stats, receiver stats, wall)."""
    coded = ["--code"] if code else []
    env = {"XFER_CODE": CODE} if code else None
    recv = Timed([str(XFER), "recv", "--once", "--quiet", *coded, "--listen", "127.0.0.1:0",
                  "--dir", str(dest)], stdout=subprocess.PIPE, env=env)
    line = recv.proc.stdout.readline().decode()
    port = int(line.rsplit(":", 1)[1])
    target = via(port) if via else port
    started = time.monotonic()
    send = Timed([str(XFER), "send", "--quiet", *coded, *extra_send, *map(str, src_paths),
                  f"127.0.0.1:{target}"], env=env)
    s = send.wait()
    r = recv.wait()
    return s, r, time.monotonic() - started


def nc_copy(src_file, dest):
    port = free_port()
    out = open(dest / src_file.name, "wb")
    recv = Timed(["nc", "-l", "127.0.0.1", str(port)], stdout=out)
    time.sleep(0.2)
    started = time.monotonic()
    with open(src_file, "rb") as f:
        send = Timed(["nc", "-N", "127.0.0.1", str(port)], stdin=f)
        s = send.wait()
    r = recv.wait()
    out.close()
    return s, r, time.monotonic() - started


def tar_nc(src_dir, dest):
    port = free_port()
    recv = Timed(["sh", "-c", f"nc -l 127.0.0.1 {port} | tar xf - -C '{dest}' && sync"])
    time.sleep(0.2)
    started = time.monotonic()
    send = Timed(["sh", "-c", f"tar cf - -C '{src_dir.parent}' '{src_dir.name}' | nc -N 127.0.0.1 {port}"])
    s = send.wait()
    r = recv.wait()
    return s, r, time.monotonic() - started


class Dests:
    """Fresh destination directories, one per run, removed after each case."""

    def __init__(self, root):
        self.root = root
        self.count = 0
        root.mkdir(parents=True, exist_ok=True)

    def fresh(self):
        self.count += 1
        dest = self.root / f"run{self.count:03}"
        dest.mkdir()
        return dest

    def clear(self):
        for child in self.root.iterdir():
            shutil.rmtree(child)
        subprocess.run(["sync"])


class RsyncDaemon:
    def __init__(self, work, module):
        self.port = free_port()
        self.module = module
        conf = work / "rsyncd.conf"
        conf.write_text(f"use chroot = no\n[dst]\npath = {self.module}\nread only = no\nuid = root\ngid = root\n")
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                      f"--port={self.port}", "--address=127.0.0.1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def copy(self, src, dest):
        """Copies `src` into `dest`, a directory inside the module."""
        started = time.monotonic()
        send = Timed(["rsync", "-a", str(src), f"rsync://127.0.0.1:{self.port}/dst/{dest.name}/"])
        s = send.wait()
        subprocess.run(["sync"])
        return s, {"wall": 0, "cpu": 0, "rss_mb": 0}, time.monotonic() - started

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class SshServer:
    """A throwaway sshd on loopback with its own keys, for the scp baseline."""

    def __init__(self, work):
        self.dir = work / "ssh"
        self.dir.mkdir()
        self.port = free_port()
        self.key = self.dir / "id"
        for key in (self.dir / "host", self.key):
            sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        (self.dir / "authorized_keys").write_text((self.dir / "id.pub").read_text())
        os.chmod(self.dir / "authorized_keys", 0o600)
        conf = self.dir / "sshd_config"
        conf.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.dir / 'host'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPermitRootLogin yes\n"
            f"StrictModes no\nUsePAM no\nPidFile {self.dir / 'pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "Subsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)

    def copy(self, src, dest):
        started = time.monotonic()
        send = Timed(["scp", "-q", "-c", "aes128-gcm@openssh.com", "-i", str(self.key),
                      "-P", str(self.port), "-o", "StrictHostKeyChecking=no",
                      "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                      str(src), f"root@127.0.0.1:{dest}/"])
        s = send.wait()
        subprocess.run(["sync"])
        return s, {"wall": 0, "cpu": 0, "rss_mb": 0}, time.monotonic() - started

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def start_sshd(work):
    """An sshd for the scp baseline, installing openssh as root if missing."""
    if not Path("/usr/sbin/sshd").exists() and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "openssh-server", "openssh-client"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not Path("/usr/sbin/sshd").exists() or shutil.which("scp") is None:
        print("note: sshd/scp not installed; the scp baseline is skipped")
        return None
    try:
        return SshServer(work)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"note: cannot start sshd ({e}); the scp baseline is skipped")
        return None


def dd_copy(src_file, dest):
    started = time.monotonic()
    t = Timed(["dd", f"if={src_file}", f"of={dest / src_file.name}", "bs=4M", "conv=fsync"])
    s = t.wait()
    return s, {"wall": 0, "cpu": 0, "rss_mb": 0}, time.monotonic() - started


def disk_alone(src_file, dest):
    """Reads `src_file` and writes as many bytes into `dest` at the same time."""
    started = time.monotonic()
    count = max(1, src_file.stat().st_size // (4 * MIB))
    read = Timed(["dd", f"if={src_file}", "of=/dev/null", "bs=4M"])
    write = Timed(["dd", "if=/dev/zero", f"of={dest / src_file.name}", "bs=4M",
                   f"count={count}", "conv=fsync"])
    r, w = read.wait(), write.wait()
    return r, w, time.monotonic() - started


def hash_pass(path):
    started = time.monotonic()
    s = Timed(["openssl", "dgst", "-sha256", str(path)]).wait()
    return s, {"wall": 0, "cpu": 0, "rss_mb": 0}, time.monotonic() - started


class DelayProxy:
    """Forwards 127.0.0.1:port, delaying every chunk by `delay` each way."""

    def __init__(self, delay):
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def forward(self, upstream_port):
        fut = asyncio.run_coroutine_threadsafe(self._listen(upstream_port), self.loop)
        return fut.result(10)

    async def _listen(self, upstream_port):
        async def handle(cr, cw):
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
            await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return server.sockets[0].getsockname()[1]

    async def _pipe(self, reader, writer):
        queue = asyncio.Queue()

        async def delayed_writer():
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0, due - time.monotonic()))
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        task = asyncio.ensure_future(delayed_writer())
        while True:
            data = await reader.read(256 * 1024)
            queue.put_nowait((time.monotonic() + self.delay, data))
            if not data:
                break
        await task


def make_file(path, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * MIB)
            f.write(os.urandom(n))
            left -= n


def make_tree(root, files, dirs, size):
    for i in range(files):
        d = root / f"d{i % dirs:03}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06}").write_bytes(os.urandom(size) if size else b"")


def median_run(fn, reps, dests):
    """Runs `fn(dest)` `reps` times, each into a fresh directory with the page
    cache dropped; returns the run with the median wall time."""
    runs = []
    for _ in range(reps):
        dest = dests.fresh()
        drop_caches()
        runs.append(fn(dest))
    dests.clear()
    runs.sort(key=lambda r: r[2])
    return runs[len(runs) // 2]


def interleaved(tools, reps, dests, rounds=None, cold=True, discard=False):
    """Runs each of `tools` (name -> fn(dest)) once per round, `reps` rounds,
    starting each round with a different tool, so that slow spells of the
    VM and leftovers of earlier work hit every tool alike; returns name ->
    the run with the median wall time. With `rounds` (a list), appends each
    round's wall times to it (name -> seconds), for ratios taken round by
    round.

    `cold` drops the page cache before every run, so sources come from the
    disk; without it the caller has read them in (`read_through`).
    `discard` removes each run's destination (and syncs) right after the
    run, so the next run's receiver writes into memory just freed rather
    than memory this VM has handed back to its host (see "Method" in
    docs/PERFORMANCE.md); only for runs of a few files, as ext4 makes the
    next run pay for many files deleted just before it."""
    runs = {name: [] for name in tools}
    order = list(tools)
    for i in range(reps):
        for name in order[i % len(order):] + order[:i % len(order)]:
            dest = dests.fresh()
            if cold:
                drop_caches()
            runs[name].append(tools[name](dest))
            if discard:
                shutil.rmtree(dest)
                subprocess.run(["sync"])
        if rounds is not None:
            rounds.append({name: r[-1][2] for name, r in runs.items()})
    dests.clear()
    for r in runs.values():
        r.sort(key=lambda run: run[2])
    return {name: r[len(r) // 2] for name, r in runs.items()}


def read_through(path):
    """Reads a file, or every file of a tree, into the page cache."""
    for p in [path] if path.is_file() else sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(8 * MIB):
                    pass


def paired(rounds, over, under, label, target):
    """The median of `over`/`under` taken within each round (both ran
    minutes apart at most, so a slow spell of the VM that lasts a round
    cancels out), printed with every round's ratio; returns the ratio
    entries: that median, and the ratio of the two medians beside it."""
    each = sorted(r[over] / r[under] for r in rounds)
    middle = each[len(each) // 2]
    walls_over = sorted(r[over] for r in rounds)
    walls_under = sorted(r[under] for r in rounds)
    of_medians = walls_over[len(rounds) // 2] / walls_under[len(rounds) // 2]
    print(f"  {label}, round by round: " + " ".join(f"{x:.2f}" for x in each))
    return [(f"{label}, median of rounds ({target})", middle),
            (f"  {label}, ratio of the medians", of_medians)]


def row(name, run, nbytes):
    s, r, wall = run
    rate = nbytes / wall / 1e6 if wall else 0
    print(f"  {name:<26} {wall:7.2f} s {rate:8.0f} MB/s   cpu send {s['cpu']:5.2f} s recv {r['cpu']:5.2f} s"
          f"   rss send {s['rss_mb']:6.1f} MB recv {r['rss_mb']:6.1f} MB")
    return wall


def main():
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small inputs, one repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="0,1,3,4,5,6,7,8", help="comma-separated case numbers")
    ap.add_argument("--work", default=str(ROOT / "target" / "bench"))
    args = ap.parse_args()
    cases = {int(c) for c in args.cases.split(",")}
    reps = 1 if args.quick else args.reps
    big = (256 if args.quick else 1024) * MIB
    huge = (512 if args.quick else 4096) * MIB
    many = 20_000 if args.quick else 100_000

    sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    ensure_tools()
    hold_back_page_reporting()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    dests = Dests(work / "dests")
    cache = work / "cache"
    os.environ["XFER_CACHE_DIR"] = str(cache)

    have_nc = shutil.which("nc") is not None
    have_rsync = shutil.which("rsync") is not None
    rsyncd = RsyncDaemon(work, dests.root) if have_rsync else None
    ratios = []
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"machine: {os.cpu_count()} cores, {cpu}; reps: {reps} (median shown)")

    if 0 in cases:
        # SHA-256 speed of xfer's hasher against OpenSSL, 16 KiB blocks.
        ours = float(subprocess.run(["cargo", "run", "--release", "--quiet", "--example", "hash_speed"],
                                    cwd=ROOT, capture_output=True, text=True, check=True).stdout)
        speed = subprocess.run(["openssl", "speed", "-seconds", "3", "-bytes", "16384", "-evp", "sha256"],
                               capture_output=True, text=True).stdout.strip().splitlines()[-1]
        theirs = float(speed.split()[-1].rstrip("k")) * 1000 / 1e6
        print(f"\n0. SHA-256 on 16 KiB blocks: xfer {ours:.0f} MB/s, openssl {theirs:.0f} MB/s")
        ratios.append(("SHA-256 speed / openssl (target >= 0.90)", ours / theirs))

    if 1 in cases:
        # One large file, first send and second send (digest cached).
        f = work / "src" / "big.bin"
        make_file(f, big)
        print(f"\n1. one {big // MIB} MiB file")
        xfer_once([f], dests.fresh())  # fills the digest cache
        dests.clear()
        tools = {
            "xfer, first send": lambda d: xfer_once([f], d, ["--no-cache"]),
            "xfer, digest cached": lambda d: xfer_once([f], d),
            "dd + fsync (plain copy)": lambda d: dd_copy(f, d),
            "disk alone: read || write": lambda d: disk_alone(f, d),
            "one SHA-256 pass (openssl)": lambda d: hash_pass(f),
        }
        if have_nc:
            tools["nc (raw TCP, no sync)"] = lambda d: nc_copy(f, d)
        if rsyncd:
            tools["rsync daemon (+sync)"] = lambda d: rsyncd.copy(f, d)
        runs = interleaved(tools, reps, dests)
        walls = {name: row(name, run, big) for name, run in runs.items()}
        first, second = walls["xfer, first send"], walls["xfer, digest cached"]
        floor = walls["disk alone: read || write"]
        plain = walls["dd + fsync (plain copy)"]
        one_hash = walls["one SHA-256 pass (openssl)"]
        if have_nc:
            ratios.append(("1 GiB first send / nc", first / walls["nc (raw TCP, no sync)"]))
        if rsyncd:
            rs = walls["rsync daemon (+sync)"]
            ratios.append(("1 GiB first send / rsync daemon (target <= 1)", first / rs))
            ratios.append(("1 GiB cached send / rsync daemon (target <= 1)", second / rs))
        ratios.append(("1 GiB first send / one SHA-256 pass (target <= 1.25)", first / one_hash))
        ratios.append(("1 GiB cached send / one SHA-256 pass (target <= 1.25)", second / one_hash))
        ratios.append(("  for scale: disk alone / one SHA-256 pass", floor / one_hash))
        ratios.append(("1 GiB first send / disk alone", first / floor))
        ratios.append(("1 GiB cached send / disk alone", second / floor))
        ratios.append(("1 GiB first send / dd + fsync", first / plain))
        f.unlink()

    if 3 in cases:
        # 5,000 files of 16 KiB in 50 directories, plus 5 ms of latency each way.
        tree = work / "src" / "tree"
        make_tree(tree, 5000, 50, 16 * 1024)
        nbytes = 5000 * 16 * 1024
        print("\n3. 5,000 files of 16 KiB in 50 directories")
        tools = {"xfer": lambda d: xfer_once([tree], d, ["--no-cache"])}
        if have_nc:
            tools["tar | nc, then sync"] = lambda d: tar_nc(tree, d)
        if rsyncd:
            tools["rsync daemon (+sync)"] = lambda d: rsyncd.copy(tree, d)
        walls = {name: row(name, run, nbytes) for name, run in interleaved(tools, reps, dests).items()}
        small = walls["xfer"]
        if have_nc:
            ratios.append(("5,000 files / tar|nc+sync (target <= 1.5)", small / walls["tar | nc, then sync"]))
        if rsyncd:
            ratios.append(("5,000 files / rsync daemon (target < 1)", small / walls["rsync daemon (+sync)"]))
        # Latency: the same proxy with and without the delay, runs interleaved,
        # so the proxy's own cost and the VM's drift cancel out.
        rtt = 0.010
        plain, delayed = DelayProxy(0.0), DelayProxy(rtt / 2)
        lat_reps = max(reps, 7)
        runs = interleaved({
            "plain": lambda d: xfer_once([tree], d, ["--no-cache"], via=plain.forward),
            "delayed": lambda d: xfer_once([tree], d, ["--no-cache"], via=delayed.forward),
        }, lat_reps, dests)
        t0, t5 = runs["plain"][2], runs["delayed"][2]
        print(f"  {'xfer via proxy, 0 ms':<26} {t0:7.2f} s   (median of {lat_reps}, interleaved)")
        print(f"  {'xfer via proxy, +5 ms each way':<26} {t5:7.2f} s")
        ratios.append(("5,000 files: extra round trips at 10 ms RTT (target <= ~10)", (t5 - t0) / rtt))
        shutil.rmtree(tree)

    if 4 in cases:
        # A file larger than memory budgets, for flat RSS.
        f = work / "src" / "huge.bin"
        make_file(f, huge)
        print(f"\n4. one {huge // MIB} MiB file (memory)")
        run = median_run(lambda d: xfer_once([f], d, ["--no-cache"]), 1, dests)
        row("xfer", run, huge)
        ratios.append(("huge file: peak RSS MB, max of both sides (target <= 64)",
                       max(run[0]["rss_mb"], run[1]["rss_mb"])))
        f.unlink()

    if 5 in cases:
        # Many empty-to-tiny files.
        tree = work / "src" / "many"
        make_tree(tree, many, 500, 0)
        for i, p in enumerate(sorted(tree.rglob("f*"))):
            if i % 3 == 0:
                p.write_bytes(b"x" * (i % 100))
        print(f"\n5. {many:,} empty-to-tiny files")
        run = median_run(lambda d: xfer_once([tree], d, ["--no-cache"]), 1, dests)
        row("xfer", run, 0)
        ratios.append((f"{many:,} files: peak RSS MB, max of both sides (target <= 64)",
                       max(run[0]["rss_mb"], run[1]["rss_mb"])))
        if have_nc:
            row("tar | nc, then sync", median_run(lambda d: tar_nc(tree, d), 1, dests), 0)
        shutil.rmtree(tree)

    if 6 in cases:
        # 8 concurrent senders into one receiver.
        print("\n6. 8 concurrent senders of 64 MiB each into one receiver")
        srcs = []
        for i in range(8):
            p = work / "src" / f"c{i}.bin"
            make_file(p, 64 * MIB)
            srcs.append(p)
        dest = dests.fresh()
        recv = Timed([str(XFER), "recv", "--quiet", "--listen", "127.0.0.1:0", "--dir", str(dest)],
                     stdout=subprocess.PIPE)
        port = int(recv.proc.stdout.readline().decode().rsplit(":", 1)[1])
        started = time.monotonic()
        senders = [Timed([str(XFER), "send", "--quiet", "--no-cache", str(p), f"127.0.0.1:{port}"])
                   for p in srcs]
        sends = [s.wait() for s in senders]
        wall = time.monotonic() - started
        # SIGTERM the receiver itself, not /usr/bin/time around it.
        subprocess.run(["pkill", "-TERM", "-P", str(recv.proc.pid)])
        r = recv.wait()
        print(f"  {'xfer x8':<26} {wall:7.2f} s {8 * 64 * MIB / wall / 1e6:8.0f} MB/s   "
              f"rss send max {max(s['rss_mb'] for s in sends):6.1f} MB recv {r['rss_mb']:6.1f} MB")
        ratios.append(("8 senders: receiver peak RSS MB (target <= 64)", r["rss_mb"]))
        dests.clear()

    if 7 in cases:
        # Per-session overhead: many sessions of one small, new file each.
        print("\n7. 20 sessions of one small file each, into one receiver")
        dest = dests.fresh()
        recv = Timed([str(XFER), "recv", "--quiet", "--listen", "127.0.0.1:0", "--dir", str(dest)],
                     stdout=subprocess.PIPE)
        port = int(recv.proc.stdout.readline().decode().rsplit(":", 1)[1])
        one = work / "src" / "one.txt"
        started = time.monotonic()
        for i in range(20):
            one.write_text(f"session {i}\n")
            Timed([str(XFER), "send", "--quiet", "--no-cache", str(one), f"127.0.0.1:{port}"]).wait()
        per = (time.monotonic() - started) / 20
        subprocess.run(["pkill", "-TERM", "-P", str(recv.proc.pid)])
        recv.wait()
        print(f"  {'xfer, per session':<26} {per * 1000:7.1f} ms (process start, connect, verify, sync)")
        dests.clear()

    if 8 in cases:
        # Coded sessions against the same sends without a code, and scp,
        # from a cold page cache like every other case; then the same
        # from a warm one, where nothing waits on the source disk.
        f = work / "src" / "coded.bin"
        make_file(f, big)
        sshd = start_sshd(work)
        print(f"\n8. with a code: one {big // MIB} MiB file, 5,000 files of 16 KiB, 20 sessions")
        plain_and_coded = {
            "xfer, no code": lambda d: xfer_once([f], d, ["--no-cache"]),
            "xfer --code": lambda d: xfer_once([f], d, ["--no-cache"], code=True),
        }
        tools = dict(plain_and_coded)
        if sshd:
            tools["scp -c aes128-gcm (+sync)"] = lambda d: sshd.copy(f, d)
        # Round-by-round ratios need more rounds than the other cases' medians.
        coded_reps = reps if args.quick else max(reps, 7)
        rounds = []
        walls = {name: row(name, run, big)
                 for name, run in interleaved(tools, coded_reps, dests, rounds).items()}
        ratios.extend(paired(rounds, "xfer --code", "xfer, no code",
                             "1 GiB with a code / without, cold cache", "target <= 1.15"))
        if sshd:
            ratios.append(("1 GiB with a code / scp aes128-gcm (target < 1)",
                           walls["xfer --code"] / walls["scp -c aes128-gcm (+sync)"]))
            sshd.stop()
        print("  the same from a warm page cache, each copy removed at once:")
        read_through(f)
        # One untimed send first: the first run's receiver would otherwise
        # be alone in writing into memory no earlier run has freed.
        warm_up = dests.fresh()
        xfer_once([f], warm_up, ["--no-cache"])
        shutil.rmtree(warm_up)
        subprocess.run(["sync"])
        rounds = []
        for name, run in interleaved(plain_and_coded, coded_reps, dests, rounds,
                                     cold=False, discard=True).items():
            row(name + ", warm", run, big)
        ratios.extend(paired(rounds, "xfer --code", "xfer, no code",
                             "1 GiB with a code / without, warm cache", "no target"))
        f.unlink()
        tree = work / "src" / "coded-tree"
        make_tree(tree, 5000, 50, 16 * 1024)
        rounds = []
        runs = interleaved({
            "xfer 5,000 files, no code": lambda d: xfer_once([tree], d, ["--no-cache"]),
            "xfer 5,000 files --code": lambda d: xfer_once([tree], d, ["--no-cache"], code=True),
        }, coded_reps, dests, rounds)
        for name, run in runs.items():
            row(name, run, 5000 * 16 * 1024)
        ratios.extend(paired(rounds, "xfer 5,000 files --code", "xfer 5,000 files, no code",
                             "5,000 files with a code / without", "target <= 1.1"))
        shutil.rmtree(tree)
        one = work / "src" / "one.txt"
        one.write_text("a session\n")
        # Sessions in pairs, plain then coded, so a slow spell hits both;
        # the median of each kind.
        per = {False: [], True: []}
        for _ in range(20):
            for coded in (False, True):
                per[coded].append(xfer_once([one], dests.fresh(), ["--no-cache"], code=coded)[2])
        dests.clear()
        per = {coded: sorted(walls)[len(walls) // 2] for coded, walls in per.items()}
        print(f"  {'one small file, no code':<26} {per[False] * 1000:7.1f} ms per session "
              "(both processes, median of 20)")
        print(f"  {'one small file, --code':<26} {per[True] * 1000:7.1f} ms per session")
        ratios.append(("ms a code adds to a session (handshake, on loopback)",
                       (per[True] - per[False]) * 1000))

    if rsyncd:
        rsyncd.stop()
    print("\nratios (same run):")
    for name, value in ratios:
        print(f"  {name:<62} {value:6.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
