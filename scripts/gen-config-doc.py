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

An unknown key, from any source, is an error that lists the known ones. Durations
accept `30s`, `15m`, `1h`, `7d`, `2w`; sizes accept `512MiB`, `5GiB`, `2GB`.

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
enter the key through the resolved compiler path and argument list.

## Headers and the key

The key covers the source, explicit extra inputs (`SourceRequest::extra_input`,
`xcache compile --include`) and every flag, but not headers reached through `-I` paths
or system headers: a code generator that includes its own changing headers should pass
them as extra inputs. System headers change with the compiler package, whose binary
identity is in the key.
""".replace("ROWS", rows)
open('docs/CONFIG.md','w').write(doc)
