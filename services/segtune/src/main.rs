use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    runtime::init_tracing();
    let cli = segtune::Cli::parse();
    match simd::configure_from_env() {
        Ok(sel) if sel.capped() => tracing::warn!("{sel}"),
        Ok(sel) => tracing::debug!("{sel}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(64);
        }
    }
    if let Err(e) = segtune::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
