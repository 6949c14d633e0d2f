//! Every object key segtune writes: this module is the store's layout.
//!
//! Keys are built from names that come from users: study names, job ids, dataset ids and
//! case names (file names in a user's `dataset.json`). Each such name becomes exactly one
//! key segment, so it must not be able to leave its prefix: [`check_name`] allows
//! 1..=[`MAX_NAME_LEN`] characters from `A-Z a-z 0-9 . _ -`, not starting with `.`, which
//! excludes `..`, `/`, `\`, absolute paths, NUL and other control characters, spaces and
//! non-ASCII. Names are checked where they enter the system (study validation, `dataset.json`,
//! the CLI) with clearer context; the builders here check again as the last line of defence.

/// Longest name accepted in a key segment (bytes).
pub const MAX_NAME_LEN: usize = 128;

/// A user-supplied name that cannot become a key segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field} {value:?} cannot be used in an object key: {problem}; allowed: 1 to 128 \
     characters from A-Z, a-z, 0-9, '.', '_' and '-', not starting with '.'"
)]
pub struct KeyError {
    /// What the name is (`"case name"`, `"study"`, ...).
    pub field: &'static str,
    /// The name, cut to 64 characters (with `...`) so a hostile value cannot flood logs.
    pub value: String,
    pub problem: String,
}

/// Checks that `value` can be one key segment (see the module docs).
pub fn check_name(field: &'static str, value: &str) -> Result<(), KeyError> {
    let problem = if value.is_empty() {
        "it is empty".to_string()
    } else if value.len() > MAX_NAME_LEN {
        format!("it is {} bytes long", value.len())
    } else if value.starts_with('.') {
        "it starts with '.'".to_string()
    } else if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        match c {
            '/' | '\\' => format!("it contains a path separator {c:?}"),
            c if c.is_control() => format!("it contains the control character {c:?}"),
            c => format!("it contains {c:?}"),
        }
    } else {
        return Ok(());
    };
    Err(KeyError {
        field,
        value: truncate(value),
        problem,
    })
}

fn truncate(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_string(),
    }
}

pub fn dataset_prefix(dataset_id: &str) -> Result<String, KeyError> {
    check_name("dataset id", dataset_id)?;
    Ok(format!("datasets/{dataset_id}"))
}
pub fn manifest(dataset_id: &str) -> Result<String, KeyError> {
    Ok(format!("{}/manifest.msgpack", dataset_prefix(dataset_id)?))
}
pub fn case_image(dataset_id: &str, case: &str) -> Result<String, KeyError> {
    check_name("case name", case)?;
    Ok(format!(
        "{}/cases/{case}/image.nii",
        dataset_prefix(dataset_id)?
    ))
}
pub fn case_label(dataset_id: &str, case: &str) -> Result<String, KeyError> {
    check_name("case name", case)?;
    Ok(format!(
        "{}/cases/{case}/label.nii",
        dataset_prefix(dataset_id)?
    ))
}
pub fn checkpoint(study: &str, job: &str) -> Result<String, KeyError> {
    check_name("study", study)?;
    check_name("job id", job)?;
    Ok(format!("studies/{study}/jobs/{job}/model.safetensors"))
}
/// The checkpoint of delivery `attempt` of a job: the first keeps [`checkpoint`]; a
/// redelivery writes its own, so a stale attempt that also finishes never overwrites the
/// weights the accepted result names.
pub fn checkpoint_of_attempt(study: &str, job: &str, attempt: u64) -> Result<String, KeyError> {
    let first = checkpoint(study, job)?;
    Ok(if attempt <= 1 {
        first
    } else {
        format!("studies/{study}/jobs/{job}/model.attempt-{attempt}.safetensors")
    })
}
/// Where each delivery of a job records itself (the trainers' fence: the largest attempt
/// under it is the live delivery).
pub fn deliveries(study: &str, job: &str) -> Result<String, KeyError> {
    check_name("study", study)?;
    check_name("job id", job)?;
    Ok(format!("studies/{study}/jobs/{job}/deliveries"))
}
/// The record of delivery `attempt` of a job; zero-padded so keys sort by attempt.
pub fn delivery(study: &str, job: &str, attempt: u64) -> Result<String, KeyError> {
    Ok(format!("{}/{attempt:06}", deliveries(study, job)?))
}
pub fn controller_state(study: &str) -> Result<String, KeyError> {
    check_name("study", study)?;
    Ok(format!("studies/{study}/controller/state.msgpack"))
}
/// The prefix of the model bundle `study finalize` writes for a study (a bundle is a
/// `bundle.json` and a `model.safetensors` under it).
pub fn final_bundle(study: &str) -> Result<String, KeyError> {
    check_name("study", study)?;
    Ok(format!("studies/{study}/final/bundle"))
}
/// A file of the predict request `request`: its outputs (`<case>.nii.gz`,
/// `<case>_probabilities.nii.gz`), and the inputs `segtune predict --bus` uploads
/// (`inputs/<file>`, `file` checked as one segment).
pub fn prediction(request: &str, file: &str) -> Result<String, KeyError> {
    check_name("predict request", request)?;
    check_name("prediction file", file)?;
    Ok(format!("predictions/{request}/{file}"))
}
pub fn prediction_input(request: &str, file: &str) -> Result<String, KeyError> {
    check_name("predict request", request)?;
    check_name("input file", file)?;
    Ok(format!("predictions/{request}/inputs/{file}"))
}
pub fn report(study: &str, file: &str) -> Result<String, KeyError> {
    check_name("study", study)?;
    check_name("report file", file)?;
    Ok(format!("studies/{study}/report/{file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_design() {
        assert_eq!(
            checkpoint_of_attempt("s", "j", 1).unwrap(),
            "studies/s/jobs/j/model.safetensors"
        );
        assert_eq!(
            checkpoint_of_attempt("s", "j", 2).unwrap(),
            "studies/s/jobs/j/model.attempt-2.safetensors"
        );
        assert_eq!(
            delivery("s", "j", 3).unwrap(),
            "studies/s/jobs/j/deliveries/000003"
        );
        assert!(delivery("s", "../j", 3).is_err());
        assert_eq!(
            case_image("task-1", "spleen_12").unwrap(),
            "datasets/task-1/cases/spleen_12/image.nii"
        );
        assert_eq!(
            case_label("task-1", "la_003.v2").unwrap(),
            "datasets/task-1/cases/la_003.v2/label.nii"
        );
        assert_eq!(manifest("d").unwrap(), "datasets/d/manifest.msgpack");
        assert_eq!(dataset_prefix("d").unwrap(), "datasets/d");
        assert_eq!(
            checkpoint("s", "j").unwrap(),
            "studies/s/jobs/j/model.safetensors"
        );
        assert_eq!(
            controller_state("s").unwrap(),
            "studies/s/controller/state.msgpack"
        );
        assert_eq!(
            report("s", "summary.md").unwrap(),
            "studies/s/report/summary.md"
        );
    }

    /// Asserts that `value` is refused as `field`, with a message naming both and `problem`.
    fn refused(result: Result<String, KeyError>, field: &str, value: &str, problem: &str) {
        let e = result.expect_err(value);
        let msg = e.to_string();
        assert_eq!(e.field, field);
        assert!(
            msg.starts_with(&format!("{field} {:?} cannot be used", e.value)),
            "{msg}"
        );
        assert!(msg.contains(problem), "expected {problem:?} in {msg}");
        assert!(msg.contains("allowed: 1 to 128 characters"), "{msg}");
        if value.len() <= 64 {
            assert_eq!(e.value, value);
        }
    }

    #[test]
    fn traversal_is_refused() {
        for (case, problem) in [
            ("..", "starts with '.'"),
            (".", "starts with '.'"),
            (".hidden", "starts with '.'"),
            ("../x", "starts with '.'"),
            ("../../etc/x", "starts with '.'"),
            ("a/../../b", "path separator '/'"),
            ("/etc/passwd", "path separator '/'"),
            ("a/b", "path separator '/'"),
            ("..\\..\\x", "starts with '.'"),
            ("a\\b", "path separator '\\\\'"),
            ("C:\\x", "contains ':'"),
        ] {
            refused(case_image("d", case), "case name", case, problem);
            refused(case_label("d", case), "case name", case, problem);
        }
    }

    #[test]
    fn control_characters_and_odd_characters_are_refused() {
        for (name, problem) in [
            ("a\0b", "control character '\\0'"),
            ("a\nb", "control character '\\n'"),
            ("a\u{7f}", "control character '\\u{7f}'"),
            ("a b", "contains ' '"),
            ("naïve", "contains 'ï'"),
            ("a*", "contains '*'"),
            ("a%2e%2e", "contains '%'"),
        ] {
            refused(checkpoint(name, "job-1"), "study", name, problem);
            refused(checkpoint("s", name), "job id", name, problem);
            refused(controller_state(name), "study", name, problem);
            refused(manifest(name), "dataset id", name, problem);
            refused(report("s", name), "report file", name, problem);
        }
    }

    #[test]
    fn empty_and_long_names_are_refused() {
        refused(manifest(""), "dataset id", "", "it is empty");
        refused(case_image("d", ""), "case name", "", "it is empty");
        let at_limit = "a".repeat(MAX_NAME_LEN);
        assert!(case_image("d", &at_limit).is_ok());
        let long = "a".repeat(MAX_NAME_LEN + 1);
        refused(
            case_image("d", &long),
            "case name",
            &long,
            "it is 129 bytes long",
        );
        let huge = "x".repeat(10_000);
        let e = controller_state(&huge).unwrap_err();
        assert_eq!(e.value, format!("{}...", "x".repeat(64)));
        assert!(e.to_string().len() < 400, "{e}");
    }

    #[test]
    fn every_built_key_stays_under_its_prefix() {
        for name in ["a", "A-b_c.d", "spleen_12", "0", "x.nii"] {
            for key in [
                case_image("d", name).unwrap(),
                case_label(name, "c").unwrap(),
                checkpoint(name, name).unwrap(),
            ] {
                assert!(
                    !key.split('/').any(|seg| seg.is_empty() || seg == ".."),
                    "{key}"
                );
            }
        }
    }
}
