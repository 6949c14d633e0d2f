//! Every object key segtune writes (DESIGN.md section 4).

pub fn dataset_prefix(dataset_id: &str) -> String {
    format!("datasets/{dataset_id}")
}
pub fn manifest(dataset_id: &str) -> String {
    format!("datasets/{dataset_id}/manifest.msgpack")
}
pub fn case_image(dataset_id: &str, case: &str) -> String {
    format!("datasets/{dataset_id}/cases/{case}/image.nii")
}
pub fn case_label(dataset_id: &str, case: &str) -> String {
    format!("datasets/{dataset_id}/cases/{case}/label.nii")
}
pub fn checkpoint(study: &str, job: &str) -> String {
    format!("studies/{study}/jobs/{job}/model.safetensors")
}
pub fn controller_state(study: &str) -> String {
    format!("studies/{study}/controller/state.msgpack")
}
pub fn report(study: &str, file: &str) -> String {
    format!("studies/{study}/report/{file}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn layout_matches_design() {
        assert_eq!(
            super::case_image("task-1", "spleen_12"),
            "datasets/task-1/cases/spleen_12/image.nii"
        );
        assert_eq!(super::manifest("d"), "datasets/d/manifest.msgpack");
        assert_eq!(
            super::checkpoint("s", "j"),
            "studies/s/jobs/j/model.safetensors"
        );
        assert_eq!(
            super::controller_state("s"),
            "studies/s/controller/state.msgpack"
        );
    }
}
