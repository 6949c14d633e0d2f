#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    segmodel::init_compute_threads();
    runtime::service_main(trainer::App::connect, trainer::run).await;
}
