//! compose.yaml (+ compose.cpu.yaml), deploy/nats.conf and the Dockerfile against the code,
//! so none of them drifts from the binaries or the protocol without a failing test:
//!
//! - every segtune service runs a binary of this workspace that its image builds, with
//!   arguments its clap settings parse (`Settings::command()`, the CLI's `Cli::command()`) and
//!   only `SEGTUNE_*` variables some setting or `runtime` reads (AWS_* ones object_store knows);
//! - the GPU services use the CUDA image with `SEGTUNE_DEVICE=cuda`, the CPU override none;
//!   trainers are scalable (no container name, no host port);
//! - every service logs in to NATS as its role with the password the broker gets, and each
//!   role's permissions allow what the service does on the bus (subjects, streams and
//!   consumers from `protocol`) and deny what it must not do;
//! - and, with a real nats-server started from deploy/nats.conf, a study runs end to end with
//!   every service connected as its role.
//!
//! These checks need no Docker engine. tests/e2e/compose_engine.rs runs the CPU stack under
//! one and checks compose's own reading of both files against this one's; the GPU
//! reservation and the CUDA image are not exercised (no GPU, no CUDA build in CI).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use clap::CommandFactory;
use futures::StreamExt;
use protocol::{
    streams::{CONSUMERS, STREAMS, consumer_spec},
    subjects::{self, durable, stream},
};
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---- compose files -------------------------------------------------------------------------

/// Compose's `${VAR:-default}`, `${VAR-default}`, `${VAR}` and `$$`, resolved as on a host
/// that sets none of the variables (the defaults are what `docker compose up` gets).
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {s:?}"));
            let expr = &r[..end];
            let default = expr
                .split_once(":-")
                .or_else(|| expr.split_once('-'))
                .map(|(_, d)| d)
                .unwrap_or("");
            out.push_str(default);
            rest = &r[end + 1..];
        } else {
            panic!("bare `$` in {s:?}: compose substitutes it; write $$ or ${{VAR}}");
        }
    }
    out.push_str(rest);
    out
}

fn interpolate_all(v: &mut Value) {
    match v {
        Value::String(s) => *s = interpolate(s),
        Value::Sequence(items) => items.iter_mut().for_each(interpolate_all),
        Value::Mapping(m) => m.values_mut().for_each(interpolate_all),
        Value::Tagged(t) => interpolate_all(&mut t.value),
        _ => {}
    }
}

fn load_yaml(rel: &str) -> Value {
    let mut v: Value = serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
    interpolate_all(&mut v);
    v
}

/// Compose's merge of an override file: mappings merge key by key, anything else is
/// replaced; `!reset` removes the key, `!override` replaces it whole.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match v {
                    Value::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "reset" => {
                        b.remove(&k);
                    }
                    Value::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "override" => {
                        b.insert(k, t.value);
                    }
                    v => match b.get_mut(&k) {
                        Some(bv) => merge(bv, v),
                        None => {
                            b.insert(k, v);
                        }
                    },
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The effective configuration of `docker compose up` (`cpu`: with compose.cpu.yaml).
pub(crate) fn compose(cpu: bool) -> BTreeMap<String, Value> {
    let mut v = load_yaml("compose.yaml");
    if cpu {
        merge(&mut v, load_yaml("compose.cpu.yaml"));
    }
    let services = v["services"].as_mapping().expect("services").clone();
    services
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v))
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .map(|i| i.as_str().expect("a string").to_string())
            .collect(),
        Value::Null => vec![],
        other => panic!("expected a list of strings, got {other:?}"),
    }
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let Some(env) = service.get("environment") else {
        return BTreeMap::new();
    };
    env.as_mapping()
        .expect("environment as a mapping")
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("env value {other:?}"),
            };
            (k.as_str().unwrap().to_string(), value)
        })
        .collect()
}

// ---- binaries ------------------------------------------------------------------------------

/// Every binary of the workspace: its settings, the crate that declares it, and its NATS role.
fn binaries() -> Vec<(&'static str, clap::Command, &'static str, &'static str)> {
    vec![
        (
            "segtune-controller",
            controller::Settings::command(),
            "services/controller",
            "controller",
        ),
        (
            "segtune-preprocessor",
            preprocessor::Settings::command(),
            "services/preprocessor",
            "preprocessor",
        ),
        (
            "segtune-trainer",
            trainer::Settings::command(),
            "services/trainer",
            "trainer",
        ),
        (
            "segtune-evaluator",
            evaluator::Settings::command(),
            "services/evaluator",
            "evaluator",
        ),
        (
            "segtune",
            segtune::Cli::command(),
            "services/segtune",
            "admin",
        ),
    ]
}

/// The env vars the (sub)command that `m` matched reads.
fn envs_of(cmd: &clap::Command, m: &clap::ArgMatches) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    if let Some((name, sub)) = m.subcommand() {
        out.extend(envs_of(cmd.find_subcommand(name).unwrap(), sub));
    }
    out
}

/// What the Dockerfile builds into each image.
fn image_binaries() -> BTreeMap<&'static str, BTreeSet<String>> {
    let docker = read("Dockerfile");
    let cpu: BTreeSet<String> = docker
        .lines()
        .find_map(|l| l.trim().strip_prefix("&& for b in "))
        .and_then(|l| l.split_once("; do"))
        .expect("the Dockerfile's `for b in ...; do` list of CPU binaries")
        .0
        .split_whitespace()
        .map(String::from)
        .collect();
    let cuda: BTreeSet<String> = docker
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("target/cuda/release/"))
        .map(String::from)
        .collect();
    for stage in ["AS cpu", "AS cuda"] {
        assert!(docker.contains(stage), "Dockerfile has no stage `{stage}`");
    }
    BTreeMap::from([("segtune:cpu", cpu), ("segtune:cuda", cuda)])
}

/// A segtune service as compose runs it.
struct Service {
    name: String,
    image: String,
    env: BTreeMap<String, String>,
    /// Env vars the invoked binaries read.
    accepted_env: BTreeSet<String>,
    role: &'static str,
    invocations: Vec<Vec<String>>,
    gpu: bool,
}

fn segtune_services(cpu: bool) -> Vec<Service> {
    let bins = binaries();
    let built = image_binaries();
    let mut out = Vec::new();
    for (name, svc) in compose(cpu) {
        let image = svc["image"].as_str().unwrap_or_default().to_string();
        if !image.starts_with("segtune:") {
            continue;
        }
        let target = svc["build"]["target"].as_str().unwrap_or_default();
        assert_eq!(
            Some(target),
            image.strip_prefix("segtune:"),
            "{name}: image {image} must be built from the Dockerfile stage of the same name"
        );
        assert!(
            svc.get("container_name").is_none(),
            "{name}: container_name breaks --scale"
        );
        let command = strings(&svc["command"]);
        assert!(!command.is_empty(), "{name}: no command");
        // `sh -c "a && b"` runs each part; everything else is one invocation.
        let invocations: Vec<Vec<String>> = if command.len() == 3 && command[..2] == ["sh", "-c"] {
            command[2]
                .split("&&")
                .map(|p| p.split_whitespace().map(String::from).collect())
                .collect()
        } else {
            vec![command]
        };
        let mut accepted_env = BTreeSet::new();
        let mut roles = BTreeSet::new();
        for argv in &invocations {
            if ["mkdir", "cp"].contains(&argv[0].as_str()) {
                continue;
            }
            let (bin, cmd, crate_dir, role) = bins
                .iter()
                .find(|b| b.0 == argv[0])
                .unwrap_or_else(|| panic!("{name}: `{}` is not a segtune binary", argv[0]));
            assert!(
                read(&format!("{crate_dir}/Cargo.toml")).contains(&format!("name = \"{bin}\"")),
                "{crate_dir} does not declare the binary {bin}"
            );
            assert!(
                built[image.as_str()].contains(*bin),
                "{name}: image {image} does not contain {bin} (Dockerfile)"
            );
            let m = cmd
                .clone()
                .try_get_matches_from(argv)
                .unwrap_or_else(|e| panic!("{name}: `{}` is refused:\n{e}", argv.join(" ")));
            accepted_env.extend(envs_of(cmd, &m));
            roles.insert(*role);
        }
        assert_eq!(roles.len(), 1, "{name}: one NATS role per service");
        let gpu = match svc.get("deploy") {
            None => false,
            Some(d) => {
                let devices = d["resources"]["reservations"]["devices"]
                    .as_sequence()
                    .expect("deploy.resources.reservations.devices");
                assert_eq!(devices.len(), 1, "{name}: one device request");
                let dev = &devices[0];
                assert_eq!(dev["driver"].as_str(), Some("nvidia"), "{name}");
                assert_eq!(dev["count"].as_u64(), Some(1), "{name}");
                assert_eq!(strings(&dev["capabilities"]), ["gpu"], "{name}");
                true
            }
        };
        out.push(Service {
            env: environment(&svc),
            name,
            image,
            accepted_env,
            role: roles.into_iter().next().unwrap(),
            invocations,
            gpu,
        });
    }
    out
}

#[test]
fn compose_services_run_workspace_binaries_with_settings_they_accept() {
    for cpu in [false, true] {
        let services = segtune_services(cpu);
        let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
        for must in ["controller", "preprocessor", "trainer", "evaluator", "demo"] {
            assert!(names.contains(must), "compose (cpu={cpu}) has no {must}");
        }
        for s in &services {
            let ctx = format!("{} (cpu override: {cpu})", s.name);
            for (k, v) in &s.env {
                if k.starts_with("SEGTUNE_") {
                    assert!(
                        s.accepted_env.contains(k) || runtime::ENV_VARS.contains(&k.as_str()),
                        "{ctx}: {k} is read by none of {:?} (they read {:?} and {:?})",
                        s.invocations.iter().map(|a| &a[0]).collect::<Vec<_>>(),
                        s.accepted_env,
                        runtime::ENV_VARS
                    );
                } else if k.starts_with("AWS_") {
                    assert!(
                        s.accepted_env.contains("SEGTUNE_STORE"),
                        "{ctx}: {k} set on a service without a store"
                    );
                    k.to_ascii_lowercase()
                        .parse::<storage::object_store::aws::AmazonS3ConfigKey>()
                        .unwrap_or_else(|_| panic!("{ctx}: object_store does not read {k}"));
                } else {
                    panic!("{ctx}: {k}={v} is read by nothing in segtune");
                }
            }
            // The file store lives on the shared volume.
            if let Some(store) = s.env.get("SEGTUNE_STORE") {
                assert!(
                    store.starts_with("/data/"),
                    "{ctx}: store {store} off the volume"
                );
            }
            let device = s.env.get("SEGTUNE_DEVICE").map(String::as_str);
            assert_eq!(
                s.gpu,
                s.image == "segtune:cuda",
                "{ctx}: the CUDA image and a GPU reservation go together"
            );
            if s.gpu {
                assert_eq!(device, Some("cuda"), "{ctx}: a GPU service trains on cuda");
            } else {
                assert_ne!(device, Some("cuda"), "{ctx}: cuda without a GPU");
            }
        }
        let gpu: BTreeSet<&str> = services
            .iter()
            .filter(|s| s.gpu)
            .map(|s| s.name.as_str())
            .collect();
        if cpu {
            assert!(
                gpu.is_empty(),
                "the CPU override leaves GPU services: {gpu:?}"
            );
        } else {
            assert!(
                gpu.contains("trainer"),
                "the trainer has no GPU reservation"
            );
        }
    }
    // Trainers scale: no fixed host port, and each replica names itself (hostname-pid).
    let all = compose(false);
    for name in ["trainer", "evaluator"] {
        assert!(
            all[name].get("ports").is_none(),
            "{name}: a host port breaks --scale"
        );
        assert!(
            !environment(&all[name]).contains_key(runtime::ENV_WORKER),
            "{name}: a fixed {} would name every replica alike",
            runtime::ENV_WORKER
        );
    }
}

/// `segtune up` (the CPU stack of the README's first command) and `docker compose -f
/// compose.yaml -f compose.cpu.yaml up` run the same topology: the same long-running
/// binaries, one replica each by default, trainers scaled the same way, each reading the same
/// broker and store settings.
#[test]
fn segtune_up_runs_the_topology_of_the_cpu_compose_stack() {
    let store = Path::new("/data/store");
    let up = segtune::up::plan(1, "nats://127.0.0.1:4222", store);
    let up_bins: BTreeMap<&str, usize> = up.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.binary).or_default() += 1;
        m
    });
    let services = segtune_services(true);
    // Long-running services: one binary each; the one-shot `demo` runs the CLI.
    let long_running: Vec<&Service> = services
        .iter()
        .filter(|s| s.invocations.iter().all(|a| a[0] != "segtune"))
        .collect();
    let mut compose_bins: BTreeMap<&str, usize> = BTreeMap::new();
    let all = compose(true);
    for s in &long_running {
        assert_eq!(s.invocations.len(), 1, "{}: one process", s.name);
        let replicas = all[&s.name]["deploy"]["replicas"].as_u64().unwrap_or(1) as usize;
        *compose_bins
            .entry(s.invocations[0][0].as_str())
            .or_default() += replicas;
        let planned = up
            .iter()
            .find(|p| p.binary == s.invocations[0][0])
            .unwrap_or_else(|| panic!("segtune up does not run {}", s.invocations[0][0]));
        assert_eq!(
            s.invocations[0].len(),
            1,
            "{}: segtune up passes no arguments to {}, compose passes {:?}",
            s.name,
            planned.binary,
            &s.invocations[0][1..]
        );
        for (k, _) in &planned.env {
            if k == runtime::ENV_WORKER {
                continue; // compose replicas name themselves <hostname>-<pid>
            }
            assert!(
                s.env.contains_key(k),
                "{}: segtune up sets {k}, compose does not",
                s.name
            );
        }
        // Both run on the CPU: compose.cpu.yaml sets it, segtune up uses the default.
        if let Some(device) = s.env.get("SEGTUNE_DEVICE") {
            assert_eq!(device, "cpu", "{}", s.name);
        }
    }
    assert_eq!(
        up_bins, compose_bins,
        "segtune up and the CPU compose stack run different services"
    );
    // `--trainers N` adds trainers and nothing else, like `--scale trainer=N`.
    let up3 = segtune::up::plan(3, "nats://127.0.0.1:4222", store);
    let trainers: Vec<&str> = up3
        .iter()
        .filter(|s| s.binary == "segtune-trainer")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(trainers, ["trainer-1", "trainer-2", "trainer-3"]);
    assert_eq!(up3.len(), up.len() + 2);
    // The broker: JetStream on, its store on a volume, as `segtune up` runs it (`-js -sd`).
    let nats = &all["nats"];
    assert!(strings(&nats["command"]).contains(&"-sd".to_string()));
    assert!(read("deploy/nats.conf").contains("jetstream: enabled"));
}

#[test]
fn the_demo_service_synthesizes_the_task_where_the_demo_study_reads_it() {
    let demo = segtune_services(false)
        .into_iter()
        .find(|s| s.name == "demo")
        .expect("a demo service");
    let find = |first: &[&str]| {
        demo.invocations
            .iter()
            .find(|a| a.len() >= first.len() && a[..first.len()] == *first)
            .unwrap_or_else(|| panic!("demo runs no `{}`", first.join(" ")))
            .clone()
    };
    let arg_after = |argv: &[String], flag: &str| {
        argv.iter()
            .position(|a| a == flag)
            .map(|i| argv[i + 1].clone())
            .unwrap_or_else(|| panic!("`{}` has no {flag}", argv.join(" ")))
    };
    let synth_out = arg_after(&find(&["segtune", "data", "synth"]), "--out");
    let submit = find(&["segtune", "study", "submit"]);
    assert!(
        submit.contains(&"--wait".to_string()),
        "demo must follow the study"
    );
    let study_path = submit.iter().find(|a| a.ends_with(".toml")).unwrap();
    // The study file is copied from the image (Dockerfile) to where it is submitted from.
    let cp = find(&["cp"]);
    assert_eq!(&cp[2], study_path);
    let shipped = cp[1]
        .strip_prefix("/opt/segtune/")
        .expect("studies shipped under /opt/segtune");
    assert!(read("Dockerfile").contains("COPY studies/ /opt/segtune/studies/"));
    let text = read(shipped);
    let spec = study::parse_study_file(&text, Path::new(study_path)).unwrap();
    match spec.dataset {
        protocol::DatasetRef::Source {
            source: protocol::DatasetSource::Local { path },
            ..
        } => assert_eq!(
            path, synth_out,
            "{shipped} reads its task where the demo does not write it"
        ),
        other => panic!("{shipped}: dataset {other:?}"),
    }
}

// ---- NATS configuration --------------------------------------------------------------------

/// A value of the NATS config format (the subset deploy/nats.conf uses: maps, lists, quoted
/// and bare strings, `$VAR` references, `#` comments).
#[derive(Debug, Clone)]
enum Conf {
    Str(String),
    List(Vec<Conf>),
    Map(Vec<(String, Conf)>),
}

impl Conf {
    fn get(&self, key: &str) -> Option<&Conf> {
        match self {
            Conf::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> &str {
        match self {
            Conf::Str(s) => s,
            other => panic!("expected a string, got {other:?}"),
        }
    }
    fn strs(&self) -> Vec<String> {
        match self {
            Conf::Str(s) => vec![s.clone()],
            Conf::List(l) => l.iter().map(|c| c.str().to_string()).collect(),
            other => panic!("expected strings, got {other:?}"),
        }
    }
}

struct ConfParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl ConfParser<'_> {
    fn parse(text: &str) -> Conf {
        let mut p = ConfParser {
            s: text.as_bytes(),
            i: 0,
        };
        Conf::Map(p.map_body(None))
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_ascii_whitespace() || c == b',' {
                self.i += 1;
            } else if c == b'#' || self.s[self.i..].starts_with(b"//") {
                while self.peek().is_some_and(|c| c != b'\n') {
                    self.i += 1;
                }
            } else {
                break;
            }
        }
    }
    fn skip_inline(&mut self) {
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.i += 1;
        }
    }
    fn token(&mut self, stop: &[u8]) -> String {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| !c.is_ascii_whitespace() && !stop.contains(&c))
        {
            self.i += 1;
        }
        String::from_utf8(self.s[start..self.i].to_vec()).unwrap()
    }
    fn quoted(&mut self) -> String {
        let q = self.peek().unwrap();
        self.i += 1;
        let start = self.i;
        while self.peek().is_some_and(|c| c != q) {
            self.i += 1;
        }
        let s = String::from_utf8(self.s[start..self.i].to_vec()).unwrap();
        self.i += 1;
        s
    }
    fn map_body(&mut self, close: Option<u8>) -> Vec<(String, Conf)> {
        let mut out = Vec::new();
        loop {
            self.skip();
            match self.peek() {
                None => {
                    assert!(close.is_none(), "unclosed map");
                    return out;
                }
                Some(c) if Some(c) == close => {
                    self.i += 1;
                    return out;
                }
                _ => {}
            }
            let key = match self.peek() {
                Some(b'"' | b'\'') => self.quoted(),
                _ => self.token(b":={"),
            };
            self.skip_inline();
            if matches!(self.peek(), Some(b':' | b'=')) {
                self.i += 1;
            }
            self.skip_inline();
            let value = self.value();
            out.push((key, value));
        }
    }
    fn value(&mut self) -> Conf {
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                Conf::Map(self.map_body(Some(b'}')))
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Conf::List(items);
                    }
                    items.push(self.value());
                }
            }
            Some(b'"' | b'\'') => Conf::Str(self.quoted()),
            _ => Conf::Str(self.token(b",]}#")),
        }
    }
}

struct Role {
    password_var: String,
    publish: (Vec<String>, Vec<String>),
    subscribe: (Vec<String>, Vec<String>),
}

fn nats_roles() -> BTreeMap<String, Role> {
    let conf = ConfParser::parse(&read("deploy/nats.conf"));
    let users = match conf.get("authorization").and_then(|a| a.get("users")) {
        Some(Conf::List(users)) => users.clone(),
        _ => panic!("deploy/nats.conf has no authorization.users list"),
    };
    let rules = |perms: Option<&Conf>| -> (Vec<String>, Vec<String>) {
        match perms {
            None => (vec![], vec![]),
            Some(p @ Conf::Map(_)) => (
                p.get("allow").map(Conf::strs).unwrap_or_default(),
                p.get("deny").map(Conf::strs).unwrap_or_default(),
            ),
            Some(other) => (other.strs(), vec![]),
        }
    };
    users
        .iter()
        .map(|u| {
            let perms = u.get("permissions").expect("every user has permissions");
            let password_var = u.get("password").expect("password").str();
            (
                u.get("user").expect("user").str().to_string(),
                Role {
                    password_var: password_var
                        .strip_prefix('$')
                        .unwrap_or_else(|| panic!("password {password_var:?} not from env"))
                        .to_string(),
                    publish: rules(perms.get("publish")),
                    subscribe: rules(perms.get("subscribe")),
                },
            )
        })
        .collect()
}

/// Whether NATS pattern `pattern` covers every subject `subject` (itself possibly a wildcard
/// subscription) stands for.
fn covers(pattern: &str, subject: &str) -> bool {
    let s: Vec<&str> = subject.split('.').collect();
    let p: Vec<&str> = pattern.split('.').collect();
    for (i, pt) in p.iter().enumerate() {
        let Some(st) = s.get(i) else { return false };
        match *pt {
            ">" => return true,
            "*" if *st == ">" => return false,
            "*" => {}
            literal if literal != *st => return false,
            _ => {}
        }
    }
    p.len() == s.len()
}

fn allowed((allow, deny): &(Vec<String>, Vec<String>), subject: &str) -> bool {
    allow.iter().any(|a| covers(a, subject)) && !deny.iter().any(|d| covers(d, subject))
}

#[derive(Debug, Clone)]
enum Op {
    Pub(String),
    Sub(String),
}

fn api(rest: impl std::fmt::Display) -> Op {
    Op::Pub(format!("$JS.API.{rest}"))
}

/// Pulling from and acking a durable consumer.
fn pull(stream: &str, consumer: &str) -> Vec<Op> {
    vec![
        api(format!("CONSUMER.MSG.NEXT.{stream}.{consumer}")),
        Op::Pub(format!(
            "$JS.ACK.{stream}.{consumer}.1.42.7.1764000000000000000.0"
        )),
    ]
}

fn work_consumer(name: &str) -> Vec<Op> {
    let c = consumer_spec(name).unwrap_or_else(|| panic!("no consumer {name}"));
    pull(c.stream, c.durable)
}

/// What a service of role `role` does on the bus, from the code: `runtime::provision` at start
/// (info of everything; creates what is missing where allowed), its consumers, its outputs.
fn uses(role: &str) -> Vec<Op> {
    const S: &str = "study-1";
    const J: &str = "study-1-job-0";
    let inbox = runtime::inbox_prefix(role);
    let mut ops = vec![
        // async-nats: one muxed request subscription plus one inbox per pull batch.
        Op::Sub(format!("{inbox}.abc.*")),
        Op::Sub(format!("{inbox}.def")),
    ];
    ops.extend(
        STREAMS
            .iter()
            .map(|s| api(format!("STREAM.INFO.{}", s.name))),
    );
    ops.extend(
        CONSUMERS
            .iter()
            .map(|c| api(format!("CONSUMER.INFO.{}.{}", c.stream, c.durable))),
    );
    let provisioning = || {
        let mut ops = Vec::new();
        for s in STREAMS {
            ops.push(api(format!("STREAM.CREATE.{}", s.name)));
            ops.push(api(format!("STREAM.UPDATE.{}", s.name)));
        }
        for c in CONSUMERS {
            ops.push(api(format!(
                "CONSUMER.CREATE.{}.{}.{}",
                c.stream, c.durable, c.filter_subject
            )));
        }
        ops
    };
    // An ordered (ephemeral) consumer on `stream` filtered on `filter`.
    let ordered = |stream: &str, filter: &str| {
        vec![
            api(format!("CONSUMER.CREATE.{stream}.Xq1s9.{filter}")),
            api(format!("CONSUMER.MSG.NEXT.{stream}.Xq1s9")),
            api(format!("CONSUMER.DELETE.{stream}.Xq1s9")),
        ]
    };
    match role {
        "trainer" => {
            ops.extend(work_consumer(durable::TRAINERS));
            ops.push(Op::Pub(subjects::trained(S)));
            ops.push(Op::Pub(subjects::progress(S, J)));
            ops.push(Op::Pub(subjects::deadletter(S)));
            // A study with pruning: validation reports, the job's stop, a pruned reward.
            ops.push(Op::Pub(subjects::validation(S, J)));
            ops.extend(ordered(stream::STOPS, &subjects::stop(S, J)));
            ops.push(Op::Pub(subjects::rewards(S)));
        }
        "evaluator" => {
            ops.extend(work_consumer(durable::EVALUATORS));
            ops.push(Op::Pub(subjects::rewards(S)));
            ops.push(Op::Pub(subjects::deadletter(S)));
            // Predict requests.
            ops.extend(work_consumer(durable::PREDICTORS));
            ops.push(Op::Pub(subjects::predictions("req-1")));
            ops.push(Op::Pub(subjects::DEADLETTER_PREDICT.to_string()));
        }
        "preprocessor" => {
            ops.extend(work_consumer(durable::PREPROCESSORS));
            ops.push(Op::Pub(subjects::dataset("ds-1")));
            ops.push(Op::Pub(subjects::DATASETS_UNKNOWN.to_string()));
            ops.push(Op::Pub(subjects::DEADLETTER_PREPROCESS.to_string()));
        }
        "controller" => {
            ops.extend(provisioning());
            ops.extend(work_consumer(durable::CONTROLLER_SUBMISSIONS));
            for (stream, consumer, filter) in [
                (stream::REWARDS, durable::rewards(S), subjects::rewards(S)),
                (
                    stream::DEADLETTER,
                    durable::deadletter(S),
                    subjects::deadletter(S),
                ),
                (
                    stream::VALIDATION,
                    durable::validation(S),
                    subjects::validation_all(S),
                ),
            ] {
                ops.push(api(format!("CONSUMER.CREATE.{stream}.{consumer}.{filter}")));
                ops.extend(pull(stream, &consumer));
                ops.push(api(format!("CONSUMER.DELETE.{stream}.{consumer}")));
            }
            ops.extend(ordered(stream::DATASETS, &subjects::dataset("*")));
            // controller::max_deliveries.
            ops.extend(work_consumer(durable::CONTROLLER_MAX_DELIVERIES));
            for s in [
                stream::JOBS,
                stream::TRAINED,
                stream::PREPROCESS,
                stream::SUBMISSIONS,
                stream::PREDICT,
            ] {
                ops.push(api(format!("STREAM.MSG.GET.{s}")));
                ops.push(api(format!("STREAM.MSG.DELETE.{s}")));
            }
            ops.push(Op::Pub(subjects::DATASETS_UNKNOWN.to_string()));
            ops.push(api(format!("STREAM.PURGE.{}", stream::JOBS)));
            ops.push(Op::Pub(subjects::jobs(S)));
            ops.push(Op::Pub(subjects::study_events(S)));
            ops.push(Op::Pub(subjects::PREPROCESS_REQUESTS.to_string()));
            ops.push(Op::Pub(subjects::deadletter(S)));
            ops.push(Op::Pub(subjects::stop(S, J)));
            ops.push(Op::Pub(subjects::predictions("req-1")));
            ops.push(Op::Pub(subjects::DEADLETTER_PREDICT.to_string()));
        }
        "admin" => {
            ops.extend(provisioning());
            ops.extend(ordered(stream::EVENTS, &subjects::study_events(S)));
            ops.extend(ordered(stream::REWARDS, &subjects::rewards(S)));
            ops.extend(ordered(stream::DATASETS, &subjects::dataset("*")));
            ops.push(api(format!("STREAM.MSG.GET.{}", stream::REWARDS)));
            ops.push(Op::Pub(subjects::SUBMISSIONS.to_string()));
            ops.push(Op::Pub(subjects::PREPROCESS_REQUESTS.to_string()));
            ops.push(Op::Pub(subjects::PREDICT_REQUESTS.to_string()));
            ops.extend(ordered(
                stream::PREDICTIONS,
                &subjects::predictions("req-1"),
            ));
            ops.push(Op::Sub(subjects::progress_all(S)));
            // `segtune study confirm` publishes its result; the report replays it.
            ops.push(Op::Pub(subjects::confirmations(S)));
            ops.extend(ordered(stream::CONFIRMATIONS, &subjects::confirmations(S)));
        }
        other => panic!("no bus profile for role {other}"),
    }
    ops
}

/// What role `role` must not be able to do.
fn forbidden(role: &str) -> Vec<Op> {
    const S: &str = "study-1";
    let mut ops = vec![
        // Nobody reads a work queue around its consumer, or another role's replies.
        Op::Sub(subjects::jobs(S)),
        Op::Sub(subjects::trained(S)),
        Op::Sub("_INBOX.>".into()),
        Op::Sub(">".into()),
        api(format!("STREAM.DELETE.{}", stream::JOBS)),
        api(format!("STREAM.DELETE.{}", stream::REWARDS)),
    ];
    if role == "admin" {
        ops.push(Op::Pub(subjects::deadletter(S)));
    }
    for other in [
        "controller",
        "preprocessor",
        "trainer",
        "evaluator",
        "admin",
    ] {
        if other != role {
            ops.push(Op::Sub(format!("{}.abc.*", runtime::inbox_prefix(other))));
        }
    }
    let workers = ["preprocessor", "trainer", "evaluator"];
    if role != "controller" {
        ops.push(Op::Pub(subjects::jobs(S)));
        ops.push(Op::Pub(subjects::study_events(S)));
        ops.extend(work_consumer(durable::CONTROLLER_SUBMISSIONS));
        ops.extend(work_consumer(durable::CONTROLLER_MAX_DELIVERIES));
        ops.push(api(format!("STREAM.MSG.DELETE.{}", stream::JOBS)));
    }
    if role != "trainer" {
        ops.push(Op::Pub(subjects::trained(S)));
        ops.extend(work_consumer(durable::TRAINERS));
    }
    if role != "evaluator" {
        ops.extend(work_consumer(durable::EVALUATORS));
        ops.extend(work_consumer(durable::PREDICTORS));
    }
    // Answers to predict requests: the evaluator's, the controller's for a dead evaluator.
    if role != "evaluator" && role != "controller" {
        ops.push(Op::Pub(subjects::predictions("req-1")));
    }
    // Rewards: the evaluator's, and the trainer's for the jobs a pruner stops.
    if role != "evaluator" && role != "trainer" {
        ops.push(Op::Pub(subjects::rewards(S)));
    }
    if role != "controller" {
        ops.push(Op::Pub(subjects::stop(S, "study-1-job-0")));
    }
    if role != "admin" {
        ops.push(Op::Pub(subjects::confirmations(S)));
    }
    if role != "trainer" {
        ops.push(Op::Pub(subjects::validation(S, "study-1-job-0")));
    }
    if role != "preprocessor" {
        ops.push(Op::Pub(subjects::dataset("ds-1")));
        ops.extend(work_consumer(durable::PREPROCESSORS));
    }
    if workers.contains(&role) {
        ops.push(api(format!("STREAM.CREATE.{}", stream::JOBS)));
        ops.push(api(format!("STREAM.UPDATE.{}", stream::JOBS)));
        ops.push(api(format!(
            "CONSUMER.CREATE.{}.{}.>",
            stream::JOBS,
            durable::TRAINERS
        )));
        ops.push(api(format!(
            "CONSUMER.DELETE.{}.{}",
            stream::JOBS,
            durable::TRAINERS
        )));
        ops.push(api(format!("STREAM.PURGE.{}", stream::JOBS)));
        ops.push(Op::Pub(subjects::SUBMISSIONS.to_string()));
        ops.push(Op::Sub(subjects::rewards(S)));
    }
    if role == "admin" {
        // The operator's CLI may call any JetStream API (provision, inspect, replay), but
        // neither acks nor publishes what the services publish.
        ops.retain(|op| !matches!(op, Op::Pub(s) if s.starts_with("$JS.API.")));
    }
    ops
}

#[test]
fn nats_roles_allow_what_each_service_does_and_nothing_it_must_not() {
    let roles = nats_roles();
    let services = segtune_services(false);
    let nats_env = environment(&compose(false)["nats"]);
    // Every service logs in as its role, with the password the broker reads.
    for s in &services {
        let user = s
            .env
            .get(runtime::ENV_NATS_USER)
            .unwrap_or_else(|| panic!("{}: no {}", s.name, runtime::ENV_NATS_USER));
        assert_eq!(user, s.role, "{}: runs as NATS user {user}", s.name);
        let role = roles
            .get(user)
            .unwrap_or_else(|| panic!("{}: user {user} is not in deploy/nats.conf", s.name));
        let broker = nats_env
            .get(&role.password_var)
            .unwrap_or_else(|| panic!("the nats service does not set {}", role.password_var));
        assert_eq!(
            s.env.get(runtime::ENV_NATS_PASSWORD),
            Some(broker),
            "{}: password differs from the broker's {}",
            s.name,
            role.password_var
        );
    }
    let used: BTreeSet<&str> = services.iter().map(|s| s.role).collect();
    let configured: BTreeSet<&str> = roles.keys().map(String::as_str).collect();
    assert_eq!(
        used, configured,
        "users of deploy/nats.conf vs roles in compose"
    );

    let mut failures = Vec::new();
    for (name, role) in &roles {
        for op in uses(name) {
            let ok = match &op {
                Op::Pub(s) => allowed(&role.publish, s),
                Op::Sub(s) => allowed(&role.subscribe, s),
            };
            if !ok {
                failures.push(format!("{name} cannot {op:?}"));
            }
        }
        for op in forbidden(name) {
            let ok = match &op {
                Op::Pub(s) => allowed(&role.publish, s),
                Op::Sub(s) => allowed(&role.subscribe, s),
            };
            if ok {
                failures.push(format!("{name} may {op:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "deploy/nats.conf:\n{}",
        failures.join("\n")
    );
}

#[test]
fn subject_patterns_match_like_nats() {
    assert!(covers("segtune.jobs.*", "segtune.jobs.s1"));
    assert!(covers("segtune.jobs.*", "segtune.jobs.*"));
    assert!(!covers("segtune.jobs.*", "segtune.jobs.>"));
    assert!(!covers("segtune.jobs.*", "segtune.jobs.a.b"));
    assert!(covers(
        "$JS.ACK.JOBS.trainers.>",
        "$JS.ACK.JOBS.trainers.1.2.3.4.5"
    ));
    assert!(!covers("$JS.ACK.JOBS.trainers.>", "$JS.ACK.JOBS.trainers"));
    assert!(!covers("segtune.progress.>", "segtune.progressx.a"));
    assert!(covers(">", "anything.at.all"));
}

// ---- a study through a broker started from deploy/nats.conf -------------------------------

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_runs_with_every_service_logged_in_as_its_role() {
    test_support::init_test_tracing();
    let services = segtune_services(false);
    let nats_env = environment(&compose(false)["nats"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into());
    // The broker's log tells every permission violation; read at the end.
    let log_path = dir.path().join("nats.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _broker = Broker(
        Command::new(&bin)
            .arg("-c")
            .arg(root().join("deploy/nats.conf"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", "0", "-sd"])
            .arg(dir.path().join("js"))
            .envs(&nats_env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}")),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let plain = format!("nats://127.0.0.1:{port}");
    // Each service's URL with the credentials compose gives it (runtime takes them from the
    // URL here, as all services share this process's environment).
    let url_of = |service: &str| {
        let s = services.iter().find(|s| s.name == service).unwrap();
        format!(
            "nats://{}:{}@127.0.0.1:{port}",
            percent_encode(&s.env[runtime::ENV_NATS_USER]),
            percent_encode(&s.env[runtime::ENV_NATS_PASSWORD])
        )
    };

    // No anonymous or wrong-password logins.
    let anonymous = async_nats::ConnectOptions::new().connect(&plain).await;
    assert!(anonymous.is_err(), "anonymous login accepted");
    let wrong = async_nats::ConnectOptions::with_user_and_password("trainer".into(), "x".into())
        .connect(&plain)
        .await;
    assert!(wrong.is_err(), "wrong password accepted");

    let store = dir.path().join("store").display().to_string();
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut stop = || {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        stops.push(tx);
        async move {
            let _ = rx.await;
        }
    };

    // The controller provisions the topology; a trainer started at the same time (it may not
    // create streams) waits for it, as in `docker compose up`.
    let controller_settings = controller::Settings {
        nats: url_of("controller"),
        store: store.clone(),
        ack_wait_secs: 30.0,
        job_ack_wait_secs: 60.0,
        stream_replicas: 1,
    };
    let trainer_settings = trainer::Settings {
        nats: url_of("trainer"),
        store: store.clone(),
        device: "cpu".into(),
        augment_workers: None,
        cache: Default::default(),
    };
    let (controller_app, trainer_app) = tokio::join!(
        controller::App::connect(&controller_settings),
        trainer::App::connect(&trainer_settings)
    );
    tasks.push(tokio::spawn(controller::run(
        controller_app.unwrap(),
        stop(),
    )));
    tasks.push(tokio::spawn(trainer::run(trainer_app.unwrap(), stop())));
    let pre = preprocessor::App::connect(&preprocessor::Settings {
        nats: url_of("preprocessor"),
        store: store.clone(),
        parallel_cases: 2,
        max_voxels: 4_000_000,
    })
    .await
    .unwrap();
    tasks.push(tokio::spawn(preprocessor::run(pre, stop())));
    let eval = evaluator::App::connect(&evaluator::Settings {
        nats: url_of("evaluator"),
        store: store.clone(),
        device: "cpu".into(),
        cache: Default::default(),
    })
    .await
    .unwrap();
    tasks.push(tokio::spawn(evaluator::run(eval, stop())));

    // The demo's role submits a tiny study and follows it, as `segtune study submit --wait`.
    let task = crate::support::synth_task(&dir.path().join("task"), 3);
    let spec = crate::support::random_study(dir.path(), &task, "roles", 2, 1);
    let admin = runtime::connect(&url_of("demo"), "test-admin")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(admin.clone());
    runtime::provision(&js, None).await.unwrap();
    let mut progress = admin
        .subscribe(subjects::progress_all(&spec.study))
        .await
        .unwrap();
    let mut events = crate::support::study_events(&js, &spec.study).await;
    crate::support::submit(&js, &spec).await;
    let outcome = crate::support::study_outcome(
        &mut events,
        Duration::from_secs(240),
        "the study with every service as its role",
    )
    .await;
    assert_eq!(outcome, Ok(2), "the study with every service as its role");
    let got_progress = tokio::time::timeout(Duration::from_secs(1), progress.next()).await;
    assert!(
        matches!(got_progress, Ok(Some(_))),
        "the admin role sees the trainer's progress"
    );

    // The operator's role finalizes the study (the controller publishes the final job for
    // it) and segments a scan over NATS (an evaluator answers), neither of which needs a
    // right to publish jobs or results.
    let segtune = crate::support::build_binaries().join("segtune");
    crate::support::run_ok(
        std::process::Command::new(&segtune)
            .args(["study", "finalize", &spec.study, "--epochs", "1"])
            .args(["--patches-per-epoch", "2", "--timeout-secs", "180"])
            .args(["--nats", &url_of("demo"), "--store", &store]),
        "study finalize as the admin role",
    );
    let scans = dir.path().join("scans");
    std::fs::create_dir_all(&scans).unwrap();
    std::fs::copy(
        task.join("imagesTr").join("ctorgan_000.nii.gz"),
        scans.join("ctorgan_000.nii.gz"),
    )
    .unwrap();
    crate::support::run_ok(
        std::process::Command::new(&segtune)
            .args(["predict", "--bus", "--timeout-secs", "180"])
            .arg("--model")
            .arg(format!("store:studies/{}/final/bundle", spec.study))
            .arg("--input")
            .arg(&scans)
            .arg("--output")
            .arg(dir.path().join("masks"))
            .args(["--nats", &url_of("demo"), "--store", &store]),
        "predict --bus as the admin role",
    );
    assert!(
        dir.path()
            .join("masks")
            .join("ctorgan_000.nii.gz")
            .is_file()
    );

    // A trainer's credentials do not publish a job (the broker drops it: no ack). (They do
    // publish rewards: those of the jobs a study's pruner stops.)
    let trainer_js = async_nats::jetstream::new(
        runtime::connect(&url_of("trainer"), "test-trainer")
            .await
            .unwrap(),
    );
    let forged = async {
        trainer_js
            .publish(subjects::jobs(&spec.study), "forged".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    };
    assert!(
        !matches!(
            tokio::time::timeout(Duration::from_secs(3), forged).await,
            Ok(Ok(_))
        ),
        "a trainer published a job"
    );

    for tx in stops {
        let _ = tx.send(());
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("services stop on shutdown")
            .unwrap()
            .unwrap();
    }

    // The only refusals: workers trying to create the topology before the controller did,
    // and the forged job. Anything else is a permission the config lacks.
    let log = std::fs::read_to_string(&log_path).unwrap();
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{log}");
    }
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Violation"))
        .filter(|l| {
            let startup = ["$JS.API.STREAM.CREATE.", "$JS.API.CONSUMER.CREATE."]
                .iter()
                .any(|p| l.contains(&format!("Subject \"{p}")));
            let forged = l.contains("test-trainer")
                && l.contains(&format!("Subject \"{}\"", subjects::jobs(&spec.study)));
            !(startup || forged)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "permission violations:\n{}",
        unexpected.join("\n")
    );
    assert!(
        log.contains("Publish Violation") && log.contains("segtune.jobs."),
        "the forged job was not refused by the broker:\n{log}"
    );
}
