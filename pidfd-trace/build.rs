//! Builds the kernel programs (pidfd-trace-ebpf) with the nightly toolchain and bpf-linker,
//! for `loader.rs` to embed. `cargo xtask setup` installs what this needs.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "pidfd-trace-ebpf")
        .ok_or_else(|| anyhow!("pidfd-trace-ebpf package not found"))?;
    let root_dir = ebpf.manifest_path.parent().ok_or_else(|| anyhow!("no parent"))?.as_str().to_owned();
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir: &root_dir, ..Default::default() }],
        Toolchain::default(),
    )
}
