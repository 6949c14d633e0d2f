//! The Medical Segmentation Decathlon (MSD) task layout: a folder with `dataset.json`,
//! `imagesTr/*.nii.gz` and `labelsTr/*.nii.gz`.
//!
//! `dataset.json` is read with [`parse_dataset_json`], which checks everything a later stage
//! would otherwise trip over (modality names, label values, duplicate cases, unsafe paths) and
//! names the file and the field in every error.
//!
//! ## Paths
//! MSD writes paths like `./imagesTr/spleen_12.nii.gz`. Parsing normalizes every image and
//! label path: `\` becomes `/`, leading `./` and `.`/empty components are dropped, so the
//! parsed value holds `imagesTr/spleen_12.nii.gz`. Paths must be relative to the task folder
//! (absolute paths and `..` components are rejected) and end in `.nii` or `.nii.gz`.
//!
//! ## Validation split (MONAI datalist convention)
//! An optional top-level `validation` list of `{"image", "label"}` objects fixes the
//! validation split. The cases of a task are the `training` entries followed by any
//! `validation` entries whose image is not in `training`:
//! - a `validation` entry whose image is also in `training` makes that case a validation case
//!   (its label must be the same file, otherwise it is an error);
//! - a `validation` entry not in `training` is an extra case, also for validation;
//! - every other `training` case is for training.
//!
//! A `validation` list that is empty or `null` counts as absent (the caller then makes a
//! seeded split); one that covers every case is an error (nothing left to train on).
//!
//! `test` entries (plain strings in MSD, `{"image": ...}` objects in MONAI datalists) are
//! accepted and kept but not used. Unknown top-level fields are kept in
//! [`DatasetJson::extra`]. nnU-Net v2's `channel_names` is accepted in place of `modality`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// File name of the task description inside a task folder.
pub const DATASET_JSON: &str = "dataset.json";

#[derive(Debug, thiserror::Error)]
pub enum MsdError {
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// One image with its label map, paths relative to the task folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub image: String,
    pub label: String,
}

/// The contents of an MSD `dataset.json`. Build one with [`parse_dataset_json`] (which
/// validates it) or directly (then call [`DatasetJson::validate`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetJson {
    pub name: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(rename = "tensorImageSize", skip_serializing_if = "Option::is_none")]
    pub tensor_image_size: Option<String>,
    /// Channel index (`"0"`, `"1"`, ...) → modality name (`"CT"`, `"MRI"`, `"T2"`, ...).
    pub modality: BTreeMap<String, String>,
    /// Label value (`"0"` ..= `"255"`) → class name.
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "numTraining", skip_serializing_if = "Option::is_none")]
    pub num_training: Option<usize>,
    #[serde(rename = "numTest", skip_serializing_if = "Option::is_none")]
    pub num_test: Option<usize>,
    pub training: Vec<Pair>,
    /// MONAI datalist convention: the cases that form the validation split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<Vec<Pair>>,
    /// Test images (no labels); kept, unused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub test: Vec<String>,
    /// Any other top-level fields, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a channel's intensities are to be read: calibrated Hounsfield units or arbitrary MR
/// units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelModality {
    Ct,
    Mr,
}

impl ChannelModality {
    /// Maps a `dataset.json` modality name: `CT` (also `CECT`, `NCCT`, `CTA`) → CT; MR-like
    /// names (`MRI`, `MR`, `T1`, `T1w`, `T1Gd`, `T2`, `T2w`, `FLAIR`, `ADC`, `DWI`, `PD`,
    /// `bpMRI`, ..., anything starting with `MR`, `T1` or `T2`) → MR. Case, spaces, `-` and
    /// `_` are ignored. Anything else (PET, US, ...) → `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        let n: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .collect();
        match n.as_str() {
            "CT" | "CECT" | "NCCT" | "CTA" => Some(Self::Ct),
            "FLAIR" | "ADC" | "DWI" | "DW" | "PD" | "PDW" | "BPMRI" | "MPMRI" | "SWI" | "DCE"
            | "HBV" | "CINE" | "BOLD" | "DTI" | "STIR" => Some(Self::Mr),
            _ if n.starts_with("MR") || n.starts_with("T1") || n.starts_with("T2") => {
                Some(Self::Mr)
            }
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ct => "CT",
            Self::Mr => "MR",
        }
    }
}

/// One case of a task, paths normalized (relative to the task folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// [`case_id`] of the image path; unique within a task.
    pub id: String,
    pub image: String,
    pub label: String,
    /// True when the `validation` list names this case.
    pub validation: bool,
}

/// The case id of an image path: its file name without `.nii.gz` / `.nii`
/// (`./imagesTr/spleen_12.nii.gz` → `spleen_12`).
pub fn case_id(image_path: &str) -> String {
    let base = image_path.rsplit(['/', '\\']).next().unwrap_or(image_path);
    let lower = base.to_ascii_lowercase();
    for ext in [".nii.gz", ".nii"] {
        if lower.ends_with(ext) && base.len() > ext.len() {
            return base[..base.len() - ext.len()].to_string();
        }
    }
    base.to_string()
}

/// Normalizes a path from `dataset.json` (see the module docs); the error says why it is not
/// acceptable.
pub fn normalize_path(path: &str) -> Result<String, String> {
    let unified = path.replace('\\', "/");
    if unified.starts_with('/') || unified.as_bytes().get(1) == Some(&b':') {
        return Err(format!(
            "{path:?} is absolute; paths must be relative to the task folder"
        ));
    }
    let mut parts = Vec::new();
    for part in unified.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{path:?} leaves the task folder (`..`)")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(format!("{path:?} is not a file path"));
    }
    Ok(parts.join("/"))
}

fn is_nifti_name(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".nii") || lower.ends_with(".nii.gz")
}

/// Reads and validates `dataset.json`; `path` is the file or the task folder holding it.
pub fn read_dataset_json(path: &Path) -> Result<DatasetJson, MsdError> {
    let file = if path.is_dir() {
        path.join(DATASET_JSON)
    } else {
        path.to_path_buf()
    };
    let name = file.display().to_string();
    let bytes = std::fs::read(&file).map_err(|source| MsdError::Io {
        file: name.clone(),
        source,
    })?;
    parse_dataset_json(&bytes, &name)
}

/// Writes `dataset.json` (pretty-printed, deterministic) after validating it.
pub fn write_dataset_json(path: &Path, dataset: &DatasetJson) -> Result<(), MsdError> {
    let name = path.display().to_string();
    dataset.validate(&name)?;
    std::fs::write(path, dataset.to_json_bytes())
        .map_err(|source| MsdError::Io { file: name, source })
}

/// Parses and validates a `dataset.json`. `file` names the file in errors.
pub fn parse_dataset_json(bytes: &[u8], file: &str) -> Result<DatasetJson, MsdError> {
    let bad = |problem: String| MsdError::Invalid {
        file: file.to_string(),
        problem,
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(bad(format!(
            "expected a JSON object at the top level, found {}",
            json_kind(&value)
        )));
    };

    let name = take::<String>(&mut obj, "name", file)?.unwrap_or_default();
    let description = take::<String>(&mut obj, "description", file)?.unwrap_or_default();
    let reference = take::<String>(&mut obj, "reference", file)?;
    let licence = take::<String>(&mut obj, "licence", file)?;
    let release = take::<String>(&mut obj, "release", file)?;
    let tensor_image_size = take::<String>(&mut obj, "tensorImageSize", file)?;
    let num_training = take::<usize>(&mut obj, "numTraining", file)?;
    let num_test = take::<usize>(&mut obj, "numTest", file)?;

    let modality = match take::<BTreeMap<String, String>>(&mut obj, "modality", file)? {
        Some(m) => m,
        // nnU-Net v2 calls the same mapping `channel_names`.
        None => match take::<BTreeMap<String, String>>(&mut obj, "channel_names", file)? {
            Some(m) => m,
            None => return Err(bad("missing field `modality`".into())),
        },
    };

    let labels = match obj.remove("labels") {
        None | Some(Value::Null) => return Err(bad("missing field `labels`".into())),
        Some(Value::Object(map)) => {
            let mut labels = BTreeMap::new();
            for (key, v) in map {
                match v {
                    Value::String(s) => {
                        labels.insert(key, s);
                    }
                    Value::Number(_) => {
                        return Err(bad(format!(
                            "field `labels`: \"{key}\" maps to a number; this looks like \
                             nnU-Net v2's {{\"name\": value}} form, MSD's is \
                             {{\"value\": \"name\"}}"
                        )));
                    }
                    other => {
                        return Err(bad(format!(
                            "field `labels`: \"{key}\" maps to {}, expected a class name",
                            json_kind(&other)
                        )));
                    }
                }
            }
            labels
        }
        Some(other) => {
            return Err(bad(format!(
                "field `labels`: expected an object {{\"0\": \"background\", ...}}, found {}",
                json_kind(&other)
            )));
        }
    };

    let training = match obj.remove("training") {
        None | Some(Value::Null) => return Err(bad("missing field `training`".into())),
        Some(v) => pairs(v, "training", file)?,
    };
    let validation = match obj.remove("validation") {
        None | Some(Value::Null) => None,
        Some(v) => Some(pairs(v, "validation", file)?).filter(|v| !v.is_empty()),
    };
    let test = match obj.remove("test") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => test_entries(v, file)?,
    };

    let mut dataset = DatasetJson {
        name,
        description,
        reference,
        licence,
        release,
        tensor_image_size,
        modality,
        labels,
        num_training,
        num_test,
        training,
        validation,
        test,
        extra: obj,
    };
    dataset.validate(file)?;
    // validate() has checked that every path normalizes.
    let norm = |p: &mut String| {
        if let Ok(n) = normalize_path(p) {
            *p = n;
        }
    };
    for pair in dataset
        .training
        .iter_mut()
        .chain(dataset.validation.iter_mut().flatten())
    {
        norm(&mut pair.image);
        norm(&mut pair.label);
    }
    for t in &mut dataset.test {
        norm(t);
    }
    Ok(dataset)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Removes `key` and decodes it; absent or `null` → `None`.
fn take<T: DeserializeOwned>(
    obj: &mut Map<String, Value>,
    key: &str,
    file: &str,
) -> Result<Option<T>, MsdError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| MsdError::Invalid {
                file: file.to_string(),
                problem: format!("field `{key}`: {e}"),
            }),
    }
}

fn pairs(v: Value, field: &str, file: &str) -> Result<Vec<Pair>, MsdError> {
    let bad = |problem: String| MsdError::Invalid {
        file: file.to_string(),
        problem,
    };
    let Value::Array(items) = v else {
        return Err(bad(format!(
            "field `{field}`: expected a list of {{\"image\", \"label\"}} objects, found {}",
            json_kind(&v)
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(_) => serde_json::from_value::<Pair>(item)
                .map_err(|e| bad(format!("field `{field}[{i}]`: {e}"))),
            other => Err(bad(format!(
                "field `{field}[{i}]`: expected an object {{\"image\": ..., \"label\": ...}}, \
                 found {} (every {field} case needs a label)",
                json_kind(&other)
            ))),
        })
        .collect()
}

fn test_entries(v: Value, file: &str) -> Result<Vec<String>, MsdError> {
    let bad = |problem: String| MsdError::Invalid {
        file: file.to_string(),
        problem,
    };
    let Value::Array(items) = v else {
        return Err(bad(format!(
            "field `test`: expected a list of image paths, found {}",
            json_kind(&v)
        )));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s),
            Value::Object(mut o) => match o.remove("image") {
                Some(Value::String(s)) => Ok(s),
                _ => Err(bad(format!(
                    "field `test[{i}]`: expected a path or {{\"image\": path}}"
                ))),
            },
            other => Err(bad(format!(
                "field `test[{i}]`: expected a path or {{\"image\": path}}, found {}",
                json_kind(&other)
            ))),
        })
        .collect()
}

impl DatasetJson {
    /// Checks everything [`parse_dataset_json`] promises; `file` names the file in errors.
    pub fn validate(&self, file: &str) -> Result<(), MsdError> {
        let bad = |problem: String| MsdError::Invalid {
            file: file.to_string(),
            problem,
        };
        self.modalities_in(file)?;

        if !self.labels.contains_key("0") {
            return Err(bad(
                "field `labels`: no entry for \"0\" (the background label)".into(),
            ));
        }
        for key in self.labels.keys() {
            if key.parse::<u8>().map(|v| v.to_string()).as_deref() != Ok(key.as_str()) {
                return Err(bad(format!(
                    "field `labels`: key \"{key}\" is not a label value 0..=255"
                )));
            }
        }

        if self.training.is_empty() {
            return Err(bad(
                "field `training`: empty list; need at least one case".into()
            ));
        }
        let check = |field: String, path: &str| -> Result<String, MsdError> {
            let n = normalize_path(path).map_err(|e| bad(format!("field `{field}`: {e}")))?;
            if !is_nifti_name(&n) {
                return Err(bad(format!(
                    "field `{field}`: {path:?} is not a NIfTI file (.nii or .nii.gz)"
                )));
            }
            Ok(n)
        };
        let mut images: HashMap<String, (String, usize)> = HashMap::new();
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut add_case = |image: &str, field: &str| -> Result<(), MsdError> {
            let id = case_id(image);
            if id.is_empty() || id == "." || id == ".." {
                return Err(bad(format!(
                    "field `{field}`: {image:?} gives no usable case id"
                )));
            }
            if let Some(other) = ids.insert(id.clone(), image.to_string()) {
                return Err(bad(format!(
                    "field `{field}`: case id \"{id}\" of {image:?} is also the id of {other:?}"
                )));
            }
            Ok(())
        };
        for (i, pair) in self.training.iter().enumerate() {
            let image = check(format!("training[{i}].image"), &pair.image)?;
            let label = check(format!("training[{i}].label"), &pair.label)?;
            if let Some((_, j)) = images.get(&image) {
                return Err(bad(format!(
                    "field `training[{i}].image`: duplicate image {:?} (also training[{j}])",
                    pair.image
                )));
            }
            add_case(&image, &format!("training[{i}].image"))?;
            images.insert(image, (label, i));
        }

        if let Some(validation) = &self.validation {
            let mut seen = HashSet::new();
            let mut extra = 0;
            for (i, pair) in validation.iter().enumerate() {
                let image = check(format!("validation[{i}].image"), &pair.image)?;
                let label = check(format!("validation[{i}].label"), &pair.label)?;
                if !seen.insert(image.clone()) {
                    return Err(bad(format!(
                        "field `validation[{i}].image`: duplicate image {:?}",
                        pair.image
                    )));
                }
                match images.get(&image) {
                    Some((train_label, j)) if *train_label != label => {
                        return Err(bad(format!(
                            "field `validation[{i}].label`: {:?} is training[{j}] with label \
                             {train_label:?}, here with label {label:?}",
                            pair.image
                        )));
                    }
                    Some(_) => {}
                    None => {
                        add_case(&image, &format!("validation[{i}].image"))?;
                        extra += 1;
                    }
                }
            }
            if seen.len() == self.training.len() + extra {
                return Err(bad(
                    "field `validation`: lists every case; nothing is left to train on".into(),
                ));
            }
        }
        Ok(())
    }

    /// Channel modalities ordered by channel index.
    pub fn modalities(&self) -> Result<Vec<ChannelModality>, MsdError> {
        self.modalities_in(DATASET_JSON)
    }

    fn modalities_in(&self, file: &str) -> Result<Vec<ChannelModality>, MsdError> {
        let bad = |problem: String| MsdError::Invalid {
            file: file.to_string(),
            problem,
        };
        if self.modality.is_empty() {
            return Err(bad(
                "field `modality`: empty; need at least channel \"0\"".into()
            ));
        }
        let mut by_index = BTreeMap::new();
        for (key, name) in &self.modality {
            let index = key
                .parse::<usize>()
                .ok()
                .filter(|i| i.to_string() == *key)
                .ok_or_else(|| {
                    bad(format!(
                        "field `modality`: key \"{key}\" is not a channel index (0, 1, ...)"
                    ))
                })?;
            let m = ChannelModality::from_name(name).ok_or_else(|| {
                bad(format!(
                    "modality \"{key}\" is \"{name}\", expected CT or MR-like \
                     (MRI, MR, T1, T2, FLAIR, ADC, ...)"
                ))
            })?;
            by_index.insert(index, m);
        }
        let n = by_index.len();
        if let Some(missing) = (0..n).find(|i| !by_index.contains_key(i)) {
            return Err(bad(format!(
                "field `modality`: channels must be numbered 0..{n} without gaps; \
                 \"{missing}\" is missing"
            )));
        }
        Ok(by_index.into_values().collect())
    }

    /// Class names indexed by label value; values without an entry get `label_N`.
    pub fn label_names(&self) -> Vec<String> {
        let parsed: BTreeMap<u8, &String> = self
            .labels
            .iter()
            .filter_map(|(k, v)| k.parse::<u8>().ok().map(|k| (k, v)))
            .collect();
        let len = parsed.keys().next_back().map_or(0, |&m| m as usize + 1);
        (0..len)
            .map(|i| {
                parsed
                    .get(&(i as u8))
                    .map_or_else(|| format!("label_{i}"), |s| s.to_string())
            })
            .collect()
    }

    /// True when the file fixes the validation split (a non-empty `validation` list).
    pub fn has_validation_list(&self) -> bool {
        self.validation.as_ref().is_some_and(|v| !v.is_empty())
    }

    /// All cases: the `training` entries in order, then `validation` entries that are not
    /// in `training`; see the module docs for which are validation cases. Assumes a
    /// validated value (paths that do not normalize are kept as they are).
    pub fn cases(&self) -> Vec<Case> {
        let norm = |p: &str| normalize_path(p).unwrap_or_else(|_| p.to_string());
        let val: Vec<Pair> = self
            .validation
            .iter()
            .flatten()
            .map(|p| Pair {
                image: norm(&p.image),
                label: norm(&p.label),
            })
            .collect();
        let val_images: HashSet<&str> = val.iter().map(|p| p.image.as_str()).collect();
        let mut cases: Vec<Case> = self
            .training
            .iter()
            .map(|p| {
                let image = norm(&p.image);
                Case {
                    id: case_id(&image),
                    validation: val_images.contains(image.as_str()),
                    label: norm(&p.label),
                    image,
                }
            })
            .collect();
        let train_images: HashSet<String> = cases.iter().map(|c| c.image.clone()).collect();
        for p in val {
            if !train_images.contains(&p.image) {
                cases.push(Case {
                    id: case_id(&p.image),
                    image: p.image,
                    label: p.label,
                    validation: true,
                });
            }
        }
        cases
    }

    /// Pretty-printed JSON with a trailing newline; deterministic.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("DatasetJson serializes");
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of Task09_Spleen's dataset.json (shortened lists).
    const SPLEEN: &str = r#"{
"name": "Spleen",
"description": "Spleen Segmentation",
"reference": "Memorial Sloan Kettering Cancer Center",
"licence":"CC-BY-SA 4.0",
"release":"1.0 06/08/2018",
"tensorImageSize": "3D",
"modality": {
   "0": "CT"
 },
"labels": {
   "0": "background",
   "1": "spleen"
 },
"numTraining": 3,
"numTest": 2,
"training":[{"image":"./imagesTr/spleen_19.nii.gz","label":"./labelsTr/spleen_19.nii.gz"},{"image":"./imagesTr/spleen_31.nii.gz","label":"./labelsTr/spleen_31.nii.gz"},{"image":"./imagesTr/spleen_52.nii.gz","label":"./labelsTr/spleen_52.nii.gz"}],
"test": ["./imagesTs/spleen_15.nii.gz","./imagesTs/spleen_23.nii.gz"]
}"#;

    fn err(json: &str) -> String {
        parse_dataset_json(json.as_bytes(), "dataset.json")
            .expect_err("should be rejected")
            .to_string()
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(SPLEEN).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn parses_msd_spleen() {
        let d = parse_dataset_json(SPLEEN.as_bytes(), "dataset.json").unwrap();
        assert_eq!(d.name, "Spleen");
        assert_eq!(d.tensor_image_size.as_deref(), Some("3D"));
        assert_eq!(d.num_training, Some(3));
        assert_eq!(d.num_test, Some(2));
        assert_eq!(d.modalities().unwrap(), vec![ChannelModality::Ct]);
        assert_eq!(d.label_names(), vec!["background", "spleen"]);
        assert_eq!(d.training[0].image, "imagesTr/spleen_19.nii.gz");
        assert_eq!(d.training[0].label, "labelsTr/spleen_19.nii.gz");
        assert_eq!(
            d.test,
            vec!["imagesTs/spleen_15.nii.gz", "imagesTs/spleen_23.nii.gz"]
        );
        assert!(!d.has_validation_list());
        let cases = d.cases();
        let ids: Vec<&str> = cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["spleen_19", "spleen_31", "spleen_52"]);
        assert!(cases.iter().all(|c| !c.validation));
        assert!(d.extra.is_empty());
    }

    #[test]
    fn serializes_and_reparses() {
        let d = parse_dataset_json(SPLEEN.as_bytes(), "dataset.json").unwrap();
        let bytes = d.to_json_bytes();
        let again = parse_dataset_json(&bytes, "dataset.json").unwrap();
        assert_eq!(d, again);
        assert_eq!(bytes, again.to_json_bytes());
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["numTraining"], 3);
        assert_eq!(v["tensorImageSize"], "3D");
        assert!(v.get("validation").is_none());
    }

    #[test]
    fn case_ids() {
        assert_eq!(case_id("imagesTr/spleen_12.nii.gz"), "spleen_12");
        assert_eq!(case_id("./imagesTr/spleen_12.nii.gz"), "spleen_12");
        assert_eq!(case_id("la_003.nii"), "la_003");
        assert_eq!(case_id("a\\b\\BRATS_001.NII.GZ"), "BRATS_001");
        assert_eq!(case_id("imagesTr/x.v2.nii.gz"), "x.v2");
    }

    #[test]
    fn malformed_json_names_file() {
        let e = err("{\"name\": \"Spleen\",");
        assert!(e.starts_with("dataset.json: not valid JSON"), "{e}");
        assert!(e.contains("line"), "{e}");
        let e = err("[1, 2]");
        assert!(e.contains("dataset.json") && e.contains("top level"), "{e}");
    }

    #[test]
    fn missing_training() {
        let mut v: Value = serde_json::from_str(SPLEEN).unwrap();
        v.as_object_mut().unwrap().remove("training");
        assert_eq!(
            err(&v.to_string()),
            "dataset.json: missing field `training`"
        );
        let e = err(&with("training", "[]"));
        assert!(
            e.starts_with("dataset.json: field `training`: empty"),
            "{e}"
        );
    }

    #[test]
    fn missing_modality_and_labels() {
        for field in ["modality", "labels"] {
            let mut v: Value = serde_json::from_str(SPLEEN).unwrap();
            v.as_object_mut().unwrap().remove(field);
            assert_eq!(
                err(&v.to_string()),
                format!("dataset.json: missing field `{field}`")
            );
        }
    }

    #[test]
    fn unknown_modality() {
        assert_eq!(
            err(&with("modality", r#"{"0": "PET"}"#)),
            "dataset.json: modality \"0\" is \"PET\", expected CT or MR-like \
             (MRI, MR, T1, T2, FLAIR, ADC, ...)"
        );
        let e = err(&with("modality", r#"{"0": "CT", "2": "CT"}"#));
        assert!(
            e.contains("`modality`") && e.contains("\"1\" is missing"),
            "{e}"
        );
        let e = err(&with("modality", r#"{"zero": "CT"}"#));
        assert!(e.contains("`modality`") && e.contains("zero"), "{e}");
    }

    #[test]
    fn mr_modalities_by_channel() {
        let d = parse_dataset_json(
            with(
                "modality",
                r#"{"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w", "10": "ADC",
                    "4": "MRI", "5": "bpMRI", "6": "T2-FLAIR", "7": "PD", "8": "dwi", "9": "CT"}"#,
            )
            .as_bytes(),
            "dataset.json",
        )
        .unwrap();
        use ChannelModality::{Ct, Mr};
        assert_eq!(
            d.modalities().unwrap(),
            vec![Mr, Mr, Mr, Mr, Mr, Mr, Mr, Mr, Mr, Ct, Mr]
        );
        assert_eq!(ChannelModality::from_name("US"), None);
        assert_eq!(ChannelModality::from_name("cect"), Some(Ct));
    }

    #[test]
    fn duplicate_image() {
        let e = err(&with(
            "training",
            r#"[{"image":"./imagesTr/a_1.nii.gz","label":"./labelsTr/a_1.nii.gz"},
                {"image":"imagesTr/a_1.nii.gz","label":"./labelsTr/a_2.nii.gz"}]"#,
        ));
        assert!(
            e.starts_with("dataset.json: field `training[1].image`: duplicate image"),
            "{e}"
        );
        assert!(e.contains("training[0]"), "{e}");
        // Same case id from another folder collides in storage.
        let e = err(&with(
            "training",
            r#"[{"image":"imagesTr/a_1.nii.gz","label":"labelsTr/a_1.nii.gz"},
                {"image":"more/a_1.nii","label":"labelsTr/a_2.nii.gz"}]"#,
        ));
        assert!(
            e.contains("`training[1].image`") && e.contains("case id \"a_1\""),
            "{e}"
        );
    }

    #[test]
    fn bad_entries_and_paths() {
        let e = err(&with("training", r#"["./imagesTr/a.nii.gz"]"#));
        assert!(e.contains("`training[0]`") && e.contains("label"), "{e}");
        let e = err(&with("training", r#"[{"image":"imagesTr/a.nii.gz"}]"#));
        assert!(
            e.contains("`training[0]`") && e.contains("missing field `label`"),
            "{e}"
        );
        let e = err(&with(
            "training",
            r#"[{"image":"../secret/a.nii.gz","label":"labelsTr/a.nii.gz"}]"#,
        ));
        assert!(e.contains("`training[0].image`") && e.contains(".."), "{e}");
        let e = err(&with(
            "training",
            r#"[{"image":"/data/a.nii.gz","label":"labelsTr/a.nii.gz"}]"#,
        ));
        assert!(
            e.contains("`training[0].image`") && e.contains("absolute"),
            "{e}"
        );
        let e = err(&with(
            "training",
            r#"[{"image":"imagesTr/a.mha","label":"labelsTr/a.nii.gz"}]"#,
        ));
        assert!(
            e.contains("`training[0].image`") && e.contains("NIfTI"),
            "{e}"
        );
        let e = err(&with("numTraining", r#""three""#));
        assert!(e.contains("field `numTraining`"), "{e}");
    }

    #[test]
    fn label_keys() {
        let e = err(&with("labels", r#"{"1": "spleen"}"#));
        assert!(e.contains("`labels`") && e.contains("\"0\""), "{e}");
        let e = err(&with("labels", r#"{"0": "background", "256": "x"}"#));
        assert!(e.contains("`labels`") && e.contains("256"), "{e}");
        let e = err(&with("labels", r#"{"background": 0, "spleen": 1}"#));
        assert!(e.contains("`labels`") && e.contains("nnU-Net"), "{e}");
        let d = parse_dataset_json(
            with(
                "labels",
                r#"{"0": "background", "3": "tumour", "1": "edema"}"#,
            )
            .as_bytes(),
            "dataset.json",
        )
        .unwrap();
        assert_eq!(
            d.label_names(),
            ["background", "edema", "label_2", "tumour"]
        );
    }

    #[test]
    fn validation_list() {
        let mut v: Value = serde_json::from_str(SPLEEN).unwrap();
        v["validation"] = serde_json::from_str(
            r#"[{"image":"imagesTr/spleen_31.nii.gz","label":"./labelsTr/spleen_31.nii.gz"},
                {"image":"./imagesTr/spleen_99.nii.gz","label":"./labelsTr/spleen_99.nii.gz"}]"#,
        )
        .unwrap();
        let d = parse_dataset_json(v.to_string().as_bytes(), "dataset.json").unwrap();
        assert!(d.has_validation_list());
        let cases = d.cases();
        let got: Vec<(&str, bool)> = cases
            .iter()
            .map(|c| (c.id.as_str(), c.validation))
            .collect();
        assert_eq!(
            got,
            [
                ("spleen_19", false),
                ("spleen_31", true),
                ("spleen_52", false),
                ("spleen_99", true)
            ]
        );
        assert_eq!(cases[3].label, "labelsTr/spleen_99.nii.gz");

        // Label mismatch with the training entry.
        v["validation"] = serde_json::from_str(
            r#"[{"image":"imagesTr/spleen_31.nii.gz","label":"labelsTr/other.nii.gz"}]"#,
        )
        .unwrap();
        let e = err(&v.to_string());
        assert!(e.contains("`validation[0].label`"), "{e}");

        // Everything in validation.
        v["validation"] = v["training"].clone();
        let e = err(&v.to_string());
        assert!(e.contains("`validation`") && e.contains("nothing"), "{e}");

        // Empty or null list: no fixed split.
        for empty in ["[]", "null"] {
            v["validation"] = serde_json::from_str(empty).unwrap();
            let d = parse_dataset_json(v.to_string().as_bytes(), "dataset.json").unwrap();
            assert!(!d.has_validation_list());
            assert!(d.cases().iter().all(|c| !c.validation));
        }
    }

    #[test]
    fn monai_test_objects_channel_names_and_extra_fields() {
        let mut v: Value = serde_json::from_str(SPLEEN).unwrap();
        v["test"] = serde_json::from_str(r#"[{"image": "./imagesTs/a.nii.gz"}]"#).unwrap();
        let m = v.as_object_mut().unwrap();
        let modality = m.remove("modality").unwrap();
        m.insert("channel_names".into(), modality);
        m.insert("custom".into(), Value::from(7));
        let d = parse_dataset_json(v.to_string().as_bytes(), "x/dataset.json").unwrap();
        assert_eq!(d.test, ["imagesTs/a.nii.gz"]);
        assert_eq!(d.modalities().unwrap(), [ChannelModality::Ct]);
        assert_eq!(d.extra.get("custom"), Some(&Value::from(7)));
    }

    #[test]
    fn reads_and_writes_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = parse_dataset_json(SPLEEN.as_bytes(), "dataset.json").unwrap();
        write_dataset_json(&dir.path().join(DATASET_JSON), &d).unwrap();
        assert_eq!(read_dataset_json(dir.path()).unwrap(), d);
        let e = read_dataset_json(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
    }
}
