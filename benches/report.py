"""Shared helpers of the benchmark scripts: machine description and docs/BENCHMARKS.md
sections (each script owns one section, replaced in place on every run)."""
import os, platform, statistics, subprocess, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XCACHE = os.path.join(ROOT, "target", "release", "xcache")


def machine():
    cpu = platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return f"{cpu}, {os.cpu_count()} cores; {cc}"


def median_of(fn, repeats):
    """Median wall time of fn() over `repeats` runs, seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_section(path, heading, section):
    """Replaces the section that starts with `heading` (up to the next `## `), or appends."""
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    open(path, "w").write(text)


VENV = os.path.join(ROOT, "target", "bench-venv")


def reexec_in_venv(script, packages):
    """Runs `script` again under target/bench-venv, installing `packages` there first."""
    import sys
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.prefix) == os.path.abspath(VENV):
        return
    if not os.path.exists(py):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    probe = "import " + ", ".join(p.replace("-", "_") for p in packages)
    if subprocess.run([py, "-c", probe], capture_output=True).returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", *packages], check=True)
    os.execv(py, [py, os.path.abspath(script), *sys.argv[1:]])
