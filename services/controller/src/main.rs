use clap::Parser;

#[tokio::main]
async fn main() {
    runtime::init_tracing();
    let settings = match controller::Settings::try_parse() {
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
    if let Err(e) = settings.validate() {
        eprintln!("segtune-controller: {e:#}");
        std::process::exit(64);
    }
    let app = match controller::App::connect(&settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("segtune-controller: {e:#}");
            std::process::exit(69);
        }
    };
    if let Err(e) = controller::run(app, runtime::shutdown_signal()).await {
        eprintln!("segtune-controller: {e:#}");
        std::process::exit(1);
    }
}
