//! Prints what a fuzz input decodes to, for triage: `cargo run --example show -- TARGET FILE`.
//! (The targets take raw bytes and pick a mode themselves, so `cargo fuzz fmt` cannot do this.)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, file] = args.as_slice() else {
        return Err("usage: show request|response|registry|http2 FILE".into());
    };
    let data = std::fs::read(file)?;
    let shown = match target.as_str() {
        "request" => switchyard_fuzz::request::describe(&data),
        "response" => switchyard_fuzz::response::describe(&data),
        "registry" => switchyard_fuzz::registry::describe(&data),
        "http2" => switchyard_fuzz::http2::describe(&data),
        other => return Err(format!("no target {other:?}").into()),
    };
    println!("{shown}");
    Ok(())
}
