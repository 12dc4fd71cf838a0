//! Generates the Rust code for every `.proto` file under `proto/cpis`, with the protoc binary
//! vendored by `protoc-bin-vendored`: a fresh machine needs no system protoc.

use std::path::{Path, PathBuf};

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let mut files = Vec::new();
    proto_files(&root.join("cpis"), &mut files)?;
    files.sort();

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Handlers not yet written answer UNIMPLEMENTED instead of failing to compile.
        .generate_default_stubs(true)
        .file_descriptor_set_path(out_dir.join("cpis_descriptor.bin"))
        .compile_with_config(config, &files, &[root.clone(), well_known])?;

    println!("cargo:rerun-if-changed=cpis");
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    Ok(())
}
