use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    runtime::init_tracing();
    segmodel::init_compute_threads();
    let settings = match trainer::Settings::try_parse() {
        Ok(s) => s,
        Err(e) if e.use_stderr() => {
            eprintln!("{e}");
            std::process::exit(64);
        }
        Err(e) => {
            print!("{e}");
            return;
        }
    };
    let app = match trainer::App::connect(&settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("segtune-trainer: {e:#}");
            std::process::exit(69);
        }
    };
    if let Err(e) = trainer::run(app, runtime::shutdown_signal()).await {
        eprintln!("segtune-trainer: {e:#}");
        std::process::exit(1);
    }
}
