//! The echo service of the practical-limit measurement, generated with the vendored protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let file = root.join("cpis/bench/v1/echo.proto");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &[&file], &[&root])?;
    println!("cargo:rerun-if-changed={}", file.display());
    Ok(())
}
