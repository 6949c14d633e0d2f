#[tokio::main]
async fn main() {
    runtime::service_main(preprocessor::App::connect, preprocessor::run).await;
}
