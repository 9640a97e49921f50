"""proccpu.py: what the bench tools share about processes: a free loopback port, and the CPU
time of a process tree from its own /proc counters (steadier than req/s on a shared machine)."""
import os
import socket

HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_table():
    """pid -> (ppid, utime+stime ticks), every process now."""
    t = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = open("/proc/%s/stat" % d).read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        t[int(d)] = (int(f[1]), int(f[11]) + int(f[12]))
    return t


def tree_cpu(root, table=None):
    """CPU seconds (utime+stime) of root and every descendant: a tenkd master and its workers,
    a postmaster and its backends. table: one proc_table() to read several trees at one moment."""
    if table is None:
        table = proc_table()
    kids = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    tot, todo = 0, [root]
    while todo:
        p = todo.pop()
        if p in table:
            tot += table[p][1]
        todo.extend(kids.get(p, []))
    return tot / HZ


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])
