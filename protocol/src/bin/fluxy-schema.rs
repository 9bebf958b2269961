//! Writes the JSON Schemas of protocol v1 into a directory (default `spec/schema`), and the
//! AsyncAPI 3.0 and OpenAPI 3.1 documents (`asyncapi.yaml`, `openapi.yaml`) into its parent
//! directory (`spec/`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("spec/schema"));
    std::fs::create_dir_all(&dir)?;
    for entry in std::fs::read_dir(&dir)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "json") {
            std::fs::remove_file(p)?;
        }
    }
    let files = fluxy_protocol::schema::generate();
    for (name, text) in &files {
        std::fs::write(dir.join(name), text)?;
    }
    println!("wrote {} schema files to {}", files.len(), dir.display());
    let parent = std::fs::canonicalize(&dir)?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    for (name, text) in fluxy_protocol::api::generate() {
        let path = parent.join(name);
        std::fs::write(&path, text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
