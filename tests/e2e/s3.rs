//! "Beyond one host" with an S3 store: the four service binaries as processes, configured
//! only by environment variables as a deployment would (`SEGTUNE_STORE=s3://...`,
//! `AWS_ENDPOINT_URL`, credentials), against a real S3-compatible server (moto). A study's
//! dataset is preprocessed into S3 by the preprocessor, trained from S3 and checkpointed to
//! S3 by the trainer, scored from S3 by the evaluator.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use protocol::subjects::{self, stream};
use test_support::{NatsServer, S3Server};

/// A service process, killed on drop so a failed test leaves nothing behind.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_runs_on_an_s3_store_configured_by_environment_only() {
    test_support::init_test_tracing();
    let Some(s3) = S3Server::start() else {
        return;
    };
    let bin = crate::support::build_binaries();
    let bucket = s3.create_bucket("segtune");
    let store_url = format!("{bucket}/store");
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("cwd");
    std::fs::create_dir_all(&work).unwrap();

    // The variables a compose file or a Kubernetes manifest sets; nothing on the command line.
    let env = [
        ("SEGTUNE_NATS", nats.url()),
        ("SEGTUNE_STORE", store_url.clone()),
        ("AWS_ENDPOINT_URL", s3.endpoint()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("SEGTUNE_LOG", "warn".into()),
    ];
    let mut services = Vec::new();
    for name in [
        "segtune-controller",
        "segtune-preprocessor",
        "segtune-trainer",
        "segtune-evaluator",
    ] {
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(bin.join(name));
        crate::support::without_test_env(&mut cmd);
        services.push(Service(
            cmd.env_remove("SEGTUNE_STORE")
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .current_dir(&work)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e}")),
        ));
    }

    // A tiny random-search study on a task folder the preprocessor reads from local disk.
    let task = crate::support::synth_task(&dir.path().join("task"), 11);
    let spec = crate::support::random_study(dir.path(), &task, "s3", 2, 1);
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    runtime::provision(&js, None).await.unwrap();
    let mut events = crate::support::study_events(&js, &spec.study).await;
    let t0 = Instant::now();
    crate::support::submit(&js, &spec).await;
    let outcome =
        crate::support::study_outcome(&mut events, Duration::from_secs(180), "s3 study").await;
    let logs = || {
        ["controller", "preprocessor", "trainer", "evaluator"]
            .iter()
            .map(|n| {
                let p = dir.path().join(format!("segtune-{n}.log"));
                format!(
                    "--- {n}\n{}",
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect::<String>()
    };
    assert_eq!(outcome, Ok(2), "{}", logs());
    eprintln!("s3: study done in {:.1} s", t0.elapsed().as_secs_f64());

    // Everything landed in S3: the dataset (manifest last), both checkpoints.
    let rewards: Vec<protocol::Reward> =
        test_support::stream_payloads(&js, stream::REWARDS, &subjects::rewards(&spec.study))
            .await
            .iter()
            .map(|p| protocol::decode(p).unwrap())
            .collect();
    assert_eq!(rewards.len(), 2);
    let store = storage::open_with(&store_url, s3.options()).unwrap();
    let keys = storage::list(&store, "datasets/").await.unwrap();
    let manifests: Vec<_> = keys
        .iter()
        .filter(|k| k.ends_with("manifest.msgpack"))
        .collect();
    assert_eq!(manifests.len(), 1, "one dataset in S3: {keys:?}");
    let cases = keys.iter().filter(|k| k.ends_with(".nii")).count();
    assert_eq!(cases, 8, "image and label of 4 cases: {keys:?}");
    for r in &rewards {
        assert!(r.mean.is_finite() && (0.0..=1.0).contains(&r.mean), "{r:?}");
        let key = &r.checkpoint_key;
        assert!(
            storage::exists(&store, key).await.unwrap(),
            "checkpoint {key} is not in S3"
        );
    }
    // And nothing fell back to a local folder (the file store's default is ./segtune-data).
    let local: Vec<_> = std::fs::read_dir(&work).unwrap().collect();
    assert!(local.is_empty(), "services wrote locally: {local:?}");

    for s in &mut services {
        if let Ok(Some(status)) = s.0.try_wait() {
            panic!("a service exited during the study ({status}):\n{}", logs());
        }
    }
}
