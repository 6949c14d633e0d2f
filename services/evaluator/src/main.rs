use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    runtime::init_tracing();
    segmodel::init_compute_threads();
    let settings = match evaluator::Settings::try_parse() {
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
    let app = match evaluator::App::connect(&settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("segtune-evaluator: {e:#}");
            std::process::exit(69);
        }
    };
    if let Err(e) = evaluator::run(app, runtime::shutdown_signal()).await {
        eprintln!("segtune-evaluator: {e:#}");
        std::process::exit(1);
    }
}
