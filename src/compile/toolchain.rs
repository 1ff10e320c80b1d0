//! One resolver for every toolchain: the host C/C++ compiler ([`super::host`]) or nvcc
//! ([`super::nvcc`]), with the resolution recorded in `toolchains/` of the compiledir.
//!
//! Finding a compiler runs it (the `cc` crate tells gcc from clang by running it, and
//! `--version` runs it again): process spawns that a cache hit must not pay. So the
//! resolution is recorded, keyed by everything that can change it (language, target, opt
//! level, the `cc`/`cxx`/`nvcc` settings, and the environment variables the `cc` crate
//! reads, `PATH` included), and trusted only while the compiler binary's size and mtime
//! are unchanged (and only if nobody else could have written the record: it names a
//! program xcache runs).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::host::{self, HostTool, HOST_TARGET};
use super::{nvcc, Language};
use crate::config::{CompilerCheck, Config};
use crate::error::Result;
use crate::store::Store;

#[derive(Debug, Serialize, Deserialize)]
struct ToolRecord {
    inputs: String,
    tool: HostTool,
    size: u64,
    mtime_ns: i128,
}

/// The name of the record of `lang`'s resolution under these inputs.
fn record_name(lang: Language, inputs: &str) -> String {
    format!("host-{}-{inputs}.json", lang.name().replace('+', "x"))
}

fn resolution_inputs(lang: Language, config: &Config) -> String {
    let mut h = blake3::Hasher::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    // v3: the compiler's own search directories are recorded (`search_dirs`), and
    // dependency flags from the environment are removed from the arguments (an older
    // record may hold a -MMD from CFLAGS).
    put("host-tool-v3");
    put(lang.name());
    put(HOST_TARGET);
    put(&config.opt_level);
    put(config.cc.as_deref().unwrap_or(""));
    put(config.cxx.as_deref().unwrap_or(""));
    put(config.nvcc.as_deref().unwrap_or(""));
    put(match config.compiler_check {
        CompilerCheck::Mtime => "mtime",
        CompilerCheck::Content => "content",
    });
    for (k, v) in host::relevant_env() {
        put(&k);
        put(&v);
    }
    h.finalize().to_hex()[..32].to_string()
}

fn mtime_ns(md: &std::fs::Metadata) -> i128 {
    md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128
}

/// Finds the compiler for `lang`: from the store's record when it is still valid, else
/// afresh (the `cc` crate for C/C++, [`nvcc::discover`] for CUDA), recording the
/// result in the store when one is given and writable.
pub fn resolve(lang: Language, config: &Config, records: Option<&Store>) -> Result<HostTool> {
    let inputs = resolution_inputs(lang, config);
    let name = record_name(lang, &inputs);
    if let Some(store) = records {
        if let Some(tool) = read_record(store, &name, &inputs, config) {
            return Ok(with_arch(lang, tool, config));
        }
    }
    let tool = match lang {
        Language::Cuda => nvcc::resolve_fresh(config, &resolve(Language::Cxx, config, records)?)?,
        _ => host::resolve_fresh(lang, config)?,
    };
    if let Some(store) = records {
        let md = std::fs::metadata(&tool.toolchain.path);
        if let Ok(md) = md {
            let rec = ToolRecord {
                inputs,
                tool: tool.clone(),
                size: md.len(),
                mtime_ns: mtime_ns(&md),
            };
            let json = serde_json::to_vec_pretty(&rec).expect("serialises");
            if let Err(e) = store.write_toolchain_record(&name, &json) {
                log::debug!("not caching the compiler resolution: {e}");
            }
        }
    }
    Ok(with_arch(lang, tool, config))
}

/// The GPU arch is decided per process (setting, else the local GPU), not recorded:
/// a machine's GPU can change under an unchanged nvcc.
fn with_arch(lang: Language, mut tool: HostTool, config: &Config) -> HostTool {
    if lang == Language::Cuda {
        tool.cuda_arch = Some(nvcc::arch(config));
    }
    tool
}

fn read_record(store: &Store, name: &str, inputs: &str, config: &Config) -> Option<HostTool> {
    let bytes = store.read_toolchain_record(name)?;
    let rec: ToolRecord = serde_json::from_slice(&bytes).ok()?;
    if rec.inputs != inputs {
        return None;
    }
    let md = std::fs::metadata(&rec.tool.toolchain.path).ok()?;
    if md.len() != rec.size || mtime_ns(&md) != rec.mtime_ns {
        return None; // the compiler was upgraded: resolve again
    }
    let mut tool = rec.tool;
    if config.compiler_check == CompilerCheck::Content {
        tool.toolchain.binary =
            host::binary_id(Path::new(&tool.toolchain.path), config.compiler_check).ok()?;
    }
    Some(tool)
}
