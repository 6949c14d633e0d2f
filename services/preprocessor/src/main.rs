use clap::Parser;

#[tokio::main]
async fn main() {
    runtime::init_tracing();
    let settings = match preprocessor::Settings::try_parse() {
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
    let app = match preprocessor::App::connect(&settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("segtune-preprocessor: {e:#}");
            std::process::exit(69);
        }
    };
    if let Err(e) = preprocessor::run(app, runtime::shutdown_signal()).await {
        eprintln!("segtune-preprocessor: {e:#}");
        std::process::exit(1);
    }
}
