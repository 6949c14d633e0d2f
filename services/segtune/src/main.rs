use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    runtime::init_tracing();
    let cli = segtune::Cli::parse();
    if let Err(e) = segtune::run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
