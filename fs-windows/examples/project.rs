//! Projects an OCI image-layout directory into a directory with ProjFS until
//! Ctrl-C: the Windows backend on its own, without the `ocifs` CLI.
//!
//! ```text
//! cargo run -p ocifs-fs-windows --example project -- oci:examples\hello C:\mnt\hello
//! ```
//!
//! On other platforms it builds, and says that ProjFS is Windows-only.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use ocifs_core::{
    ContentReader, DirectReader, Error, LayoutSource, Reader, Reference, Tree, Verify, ViewOptions,
    resolve,
};
use ocifs_fs_windows::MountOptions;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, dir] = args.as_slice() else {
        eprintln!("usage: project oci:LAYOUT[:TAG] DIR");
        return ExitCode::from(2);
    };
    match run(reference, Path::new(dir)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("project: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(reference: &str, dir: &Path) -> ocifs_core::Result<()> {
    let reference: Reference = reference.parse()?;
    let Reference::Layout(layout) = &reference else {
        return Err(Error::InvalidReference {
            input: reference.to_string(),
            reason: "this example reads OCI layout directories only (oci:DIR)".into(),
        });
    };
    let source = Arc::new(LayoutSource::open(layout.path.clone())?);
    let resolution = resolve(source.as_ref(), &reference, None).await?;
    let tree = Arc::new(Tree::from_artifact(
        &resolution.manifest,
        &ViewOptions::default(),
    )?);
    let reader: Arc<dyn Reader> = Arc::new(ContentReader::new(Arc::new(DirectReader::new(
        source,
        Verify::Strict,
    ))));
    let mount = ocifs_fs_windows::mount(
        tree,
        reader,
        dir,
        MountOptions::default(),
        tokio::runtime::Handle::current(),
    )?;
    eprintln!(
        "{} is projected at {}; Ctrl-C stops",
        resolution.digest,
        mount.mountpoint().display()
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::io("waiting for Ctrl-C", e))?;
    mount.stop()
}
