# Helpers for the setups of the doc examples. cli/tests/docs.rs runs every console
# block of README.md and docs/*.md in a fresh directory (the docs' /tmp/xd; HOME is
# their /home/me), with `xcache` on PATH and this file sourced first; a block's
# `setup:` (see cli/tests/common/docblocks.rs) calls them.
#
# Nothing here waits for time: ages are made by dating files back (touch -d), a held
# lock by a process that says when it holds it.

# The README's `cargo run --release -q -p xcache-cli -- ARGS`: the binary under test
# (built already, as the README says).
cargo() {
  case "$*" in
    "run --release -q -p xcache-cli -- "*)
      shift 6
      xcache "$@"
      ;;
    *)
      echo "the doc tests run no cargo command but the README's demo" >&2
      return 1
      ;;
  esac
}

# `python` in the examples: $XCACHE_PYTHON (python3 by default), where the package is.
python() {
  "${XCACHE_PYTHON:-python3}" "$@"
}

# The sources docs/CLI.md's examples are built from: kernels/saxpy.c (which includes
# kernels/defs.h), kernels/dot.cpp, kernels/broken.c (which does not compile) and the
# manifest warm.json shown under `xcache warm`. Dated a minute back: a header written
# in the clock tick a request arrives in is not recorded (it could still change).
kernels() {
  mkdir -p kernels
  printf '#define SCALE 2.0f\n' > kernels/defs.h
  cat > kernels/saxpy.c <<'EOF'
#include "defs.h"
void saxpy(long n, float a, const float *x, float *y) {
    for (long i = 0; i < n; i++) y[i] = SCALE * a * x[i] + y[i];
}
EOF
  cat > kernels/dot.cpp <<'EOF'
extern "C" double dot(long n, const double *x, const double *y) {
    double s = 0;
    for (long i = 0; i < n; i++) s += x[i] * y[i];
    return s;
}
EOF
  printf 'int broken(void) { return x; }\n' > kernels/broken.c
  cat > warm.json <<'EOF'
{"requests": [
  {"template": "elemwise", "params": {"dtype": "float32", "arity": 1, "expr": "exp(a)"}},
  {"template": "elemwise", "params": {"dtype": "float64", "arity": 2, "expr": "a*b+1"}},
  {"source": "kernels/saxpy.c", "flags": ["-O2"], "include": ["kernels/defs.h"]},
  {"source": "kernels/dot.cpp"}
]}
EOF
  settle kernels/* warm.json
}

# k.c, which includes h.h from inc/ (docs/CLI.md's `--explain` and `show` examples).
k_with_header() {
  mkdir -p inc
  printf '#define N 4\n' > inc/h.h
  printf '#include "h.h"\nint k(void) { return N; }\n' > k.c
  settle inc/h.h k.c
}

# Dates files a minute back.
settle() {
  touch -d '1 minute ago' "$@"
}

# The key of a request: `key_of SRC [ARGS...]` compiles it (a hit, if it is cached).
key_of() {
  xcache compile "$@" --json | sed -n 's/.*"key":"\([0-9a-f]*\)".*/\1/p'
}

# The entry directory of a key (or of its first digits) in the current compiledir.
entry_dir() {
  local fan
  fan=$(printf %.2s "$1")
  echo "$(xcache)"/entries/"$fan"/"$1"*
}

# Makes an entry look unused for DAYS: dates its last-use marker back, and removes the
# compiledir's index (which records last uses as xcache writes them; a marker dated by
# hand is seen once a listing rebuilds the index from the entries).
age_entry() {
  touch -d "$2 days ago" "$(entry_dir "$1")/last-use"
  rm -f "$(xcache)/index"
}

# Makes a compiledir (by its path) look unused for DAYS:
# `age_compiledir "$(XCACHE_RUNTIME=cpython-3.10 xcache)" 40`.
age_compiledir() {
  touch -d "$2 days ago" "$1/last-use"
}

# Holds the shared lock of a key (or of its first digits), as a process loading the
# entry does, until the example ends: `flock -s LOCK sleep 3600` in the background,
# returning once it holds the lock.
hold() {
  local lock fifo
  lock=$(echo "$(xcache)"/locks/"$(printf %.2s "$1")"/"$1"*.lock)
  fifo=$(mktemp -u)
  mkfifo "$fifo"
  flock -s "$lock" sh -c 'echo held > "$0"; exec sleep 3600' "$fifo" &
  echo $! >> "$DOCTEST_PIDS"
  read -r _ < "$fifo"
  rm -f "$fifo"
}

# Flips one byte in the middle of KEY's value inside the bundle BUNDLE (a zstd tar):
# the value no longer has the hash the bundle's index gives it.
flip_byte_in_bundle() {
  zstd -q -d -c "$1" > "$1.tar"
  python3 - "$1.tar" "$2" <<'PY'
import sys, tarfile
path, key = sys.argv[1], sys.argv[2]
with tarfile.open(path) as t:
    m = next(m for m in t.getmembers() if m.name.rsplit("/", 1)[-1].startswith(key))
with open(path, "r+b") as f:
    f.seek(m.offset_data + m.size // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0xFF]))
PY
  zstd -q -f "$1.tar" -o "$1"
  rm "$1.tar"
}

# Makes the paths printed so far old news: dates every hand-out record back an hour,
# beyond handout_grace, as if the setup's compiles had run a while ago.
forget_handouts() {
  find "$XCACHE_DIR" -name handed-out -exec touch -d '1 hour ago' {} +
}
