import re
src=open('src/config.rs').read()
items=re.findall(r'SettingInfo \{\s*name: "([^"]+)",\s*default: "([^"]*)",\s*doc: "((?:[^"\\]|\\.)*)",',src)
def cell(d):
    return ('`'+d+'`') if d else '(unset)'
rows="\n".join("| `%s` | %s | %s |" % (n, cell(d), doc.replace('\\"','"')) for n,d,doc in items)
doc="""# Configuration

Every setting has one name, one default and one reason, defined once in
`src/config.rs` (`SETTINGS`); this table mirrors it (a test checks that it does).

Sources, lowest to highest precedence:

1. the defaults below;
2. the TOML file named by `$XCACHE_CONFIG`, else `$XDG_CONFIG_HOME/xcache/config.toml`,
   else `~/.config/xcache/config.toml` (a missing default file is fine; a missing
   `$XCACHE_CONFIG` is an error);
3. `XCACHE_RUNTIME` (sets `runtime_tag`);
4. `XCACHE_FLAGS`: `key=value,key=value`, like `THEANO_FLAGS` (values cannot contain commas);
5. `XCACHE_DIR` (sets `base_dir`), and `--dir` on the command line;
6. values set by the embedding program (`Config::set`, `Config::set_base_dir`).

An unknown key, from any source, is an error that lists the known ones; an error in
the file names its line.

Sizes and durations need a unit, the same in the file, in `XCACHE_FLAGS`, through the
API and on the command line: a bare number other than `0` is an error that says how to
write it (`max_size=5` would be five bytes to one reader and five gigabytes to another).

- **Durations**: a number, fractions allowed, and one of `ms`, `s`, `m` (or `min`), `h`,
  `d`, `w`: `250ms`, `30s`, `15m`, `1.5h`, `7d`, `2w`.
- **Sizes**: a number, fractions allowed, and one of `B`; `KiB`, `MiB`, `GiB`, `TiB`
  (powers of 1024; also `Ki`, `Mi`, …); `kB`, `MB`, `GB`, `TB` (powers of 1000; also
  `k`, `M`, `G`, `T`), in any case: `4096B`, `512MiB`, `1.5GiB`, `2GB`.
- **`0`** needs no unit. A `max_size` of `0` means no limit (as ccache's `-M 0`), and so
  does `prune --max-size 0`.

`xcache config` shows each value in the largest unit that divides it, as it can be
written back (`5GiB`, `5GB`, `36h`); `xcache config set KEY VALUE` writes one setting
into the config file, checked as above (`xcache -M SIZE`, as ccache spells it, writes
`max_size`).

| setting | default | what and why |
|---|---|---|
ROWS

Example `~/.config/xcache/config.toml`:

```toml
opt_level = "2"
cc = "clang"
last_use_resolution = "6h"
```

The compiler is also chosen the way the `cc` crate chooses it: `CC`/`CXX`, then
`CFLAGS`/`CXXFLAGS` (and their target-specific forms) are honoured, and all of them
enter the key through the resolved compiler path and argument list — except dependency
flags (`-MMD`, `-MF FILE`, …), which are removed with a warning: xcache writes its own
dependency file (docs/CLI.md, "Compiler flags").

## Headers and the key

What is in the key: the source (or the template and its parameters), the compiler
(path, version text, binary identity), every flag in order, the target (and the CPU's
model and features under `-march=native`, the GPU arch for CUDA), the runtime tag,
explicit extra inputs (`SourceRequest::extra_input`, `xcache compile --include`) — and
**every header the compiler read**, by content: those beside the source, those reached
through `-I`/`-isystem` paths (numpy's, Python's, your own), system headers and the
CUDA toolkit's. xcache writes the compiler's dependency file itself (`-MD -MF`, after
your flags) and records each header it lists with its hash; a request whose headers
changed since its last build compiles again, and one whose headers went back to
earlier contents gets that earlier result. `xcache compile --explain` says which header
changed, `xcache show KEY` lists them. A code generator that writes its own headers
needs to do nothing more than write them before the request.
""".replace("ROWS", rows)
open('docs/CONFIG.md','w').write(doc)
