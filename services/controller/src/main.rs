#[tokio::main]
async fn main() {
    runtime::service_main(controller::App::connect, controller::run).await;
}
