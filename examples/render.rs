//! Prints what a template renders to: `cargo run --example render -- elemwise dtype=float32 arity=1 expr='exp(a)'`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or("usage: render TEMPLATE [KEY=VALUE]...")?;
    let mut req = xcache::TemplateRequest::new(name);
    for kv in args {
        let (k, v) = kv.split_once('=').ok_or("parameters are KEY=VALUE")?;
        req = req.param(k, v);
    }
    let jit = xcache::Jit::from_env()?;
    let src = jit.render(&req)?;
    print!("{}", String::from_utf8_lossy(&src.source));
    Ok(())
}
