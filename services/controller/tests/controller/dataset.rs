//! A study whose dataset is not in the store fails. (Studies on a raw MSD folder, which wait
//! for the real preprocessor service, are tested across services in `tests/e2e/dataset.rs`.)

use protocol::StudyEventKind;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_dataset_id_fails_the_study() {
    let env = Env::start().await;
    let controller = env.spawn_controller().await;
    env.submit(&spec("ghost", "random", 3, 2)).await;
    let events = final_events(&env.js, "ghost").await;
    let StudyEventKind::Failed { reason } = &events[0].event else {
        panic!("{:?}", brief(&events[0]));
    };
    assert!(
        reason.contains(DATASET) && reason.contains("not in the store"),
        "{reason}"
    );
    controller.stop().await;
}
