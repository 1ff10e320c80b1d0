//! The smallest program that embeds xcache: compile (or find) a C source through the
//! cache, load it, look up `kernel`. `benches/process_hit.py` times it as a whole
//! process against a C program that only dlopens and dlsyms the same file.
//!
//! `cargo run --release --example embed_hit -- kernel.c`
fn main() -> Result<(), xcache::Error> {
    let path = std::env::args().nth(1).expect("usage: embed_hit SOURCE.c");
    let jit = xcache::Jit::from_env()?;
    let lib = jit.compile(&xcache::SourceRequest::from_file(std::path::Path::new(
        &path,
    ))?)?;
    // SAFETY: only the address is looked up.
    let f = unsafe { lib.symbol::<*const std::ffi::c_void>("kernel")? };
    std::hint::black_box(*f);
    Ok(())
}
