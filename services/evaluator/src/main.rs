#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    segmodel::init_compute_threads();
    runtime::service_main(evaluator::App::connect, evaluator::run).await;
}
