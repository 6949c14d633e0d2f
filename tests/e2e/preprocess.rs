//! The preprocessor service over NATS: same output as `segtune data preprocess`, reuse of
//! an existing dataset, and every kind of bad input refused with a clear error while the
//! datasets already in the store stay untouched.

use std::{io::Read, path::Path};

use clap::Parser;
use protocol::DatasetEvent;

use crate::support::{Stack, manifest_without_time, synth_task, tree};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_output_equals_cli_output_and_is_reused() {
    let stack = Stack::start().await;
    let raw = tempfile::tempdir().unwrap();
    let task = synth_task(raw.path(), 3);

    // In-process, exactly as a user types it.
    let cli_store = tempfile::tempdir().unwrap();
    let cli = segtune::Cli::parse_from([
        "segtune",
        "data",
        "preprocess",
        task.to_str().unwrap(),
        "--store",
        cli_store.path().to_str().unwrap(),
    ]);
    segtune::run(cli).await.unwrap();

    // Over NATS.
    let ev = stack.request(&task).await;
    let DatasetEvent::Ready(ready) = ev else {
        panic!("expected DatasetReady, got {ev:?}");
    };
    assert!(!ready.reused);
    assert_eq!(ready.train_cases + ready.validation_cases, 4);

    let a = tree(cli_store.path());
    let b = tree(Path::new(&stack.store_url));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same files"
    );
    let case_files = a.keys().filter(|k| k.ends_with(".nii")).count();
    assert_eq!(case_files, 8, "an image and a label per case");
    for (k, va) in &a {
        if k.ends_with("manifest.msgpack") {
            assert_eq!(manifest_without_time(va), manifest_without_time(&b[k]));
            assert!(k.starts_with(&format!("datasets/{}/", ready.dataset_id)));
        } else {
            assert!(*va == b[k], "{k} differs between CLI and service");
        }
    }

    // A second request finds it done and recomputes nothing.
    let before = tree(Path::new(&stack.store_url));
    let DatasetEvent::Ready(again) = stack.request(&task).await else {
        panic!("second request failed")
    };
    assert!(again.reused);
    assert_eq!(again.dataset_id, ready.dataset_id);
    assert_eq!(before, tree(Path::new(&stack.store_url)));
    stack.stop().await;
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Rewrites a .nii.gz header field in place.
fn patch_header(path: &Path, edit: impl Fn(&mut Vec<u8>)) {
    let mut raw = gunzip(&std::fs::read(path).unwrap());
    edit(&mut raw);
    std::fs::write(path, gzip(&raw)).unwrap();
}

fn set_i16(b: &mut [u8], off: usize, v: i16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn set_f32(b: &mut [u8], off: usize, v: f32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_i32(b: &mut [u8], off: usize, v: i32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
// NIfTI-1 header offsets.
const DIM: usize = 40;
const DATATYPE: usize = 70;
const BITPIX: usize = 72;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
const SCL_SLOPE: usize = 112;
const SFORM_CODE: usize = 254;
const MAGIC: usize = 344;

/// Replaces the case's image path in dataset.json (every occurrence) with `to`.
fn rename_image(dir: &Path, case: &str, to: &str) {
    let p = dir.join("dataset.json");
    let json = std::fs::read_to_string(&p).unwrap();
    let from = format!("\"./imagesTr/{case}.nii.gz\"");
    assert!(json.contains(&from), "{json}");
    std::fs::write(&p, json.replace(&from, &format!("\"{to}\""))).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in tree(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

type Corruption = (
    &'static str,
    &'static str,
    &'static [&'static str],
    fn(&Path, &str),
);

fn read_f32(p: &Path) -> volume::Volume<f32> {
    volume::read_nifti(p, &Default::default()).unwrap().volume
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_stored_datasets_are_untouched() {
    let stack = Stack::start().await;
    let raw = tempfile::tempdir().unwrap();
    let good = synth_task(&raw.path().join("good"), 5);
    let DatasetEvent::Ready(_) = stack.request(&good).await else {
        panic!("the good dataset must preprocess")
    };
    let snapshot = tree(Path::new(&stack.store_url));
    // The store's parent: a key escaping the store would land here.
    let outside = Path::new(&stack.store_url).parent().unwrap().to_path_buf();
    let outside_snapshot = tree(&outside);

    let case = "ctorgan_000";
    let img = format!("imagesTr/{case}.nii.gz");
    let lab = format!("labelsTr/{case}.nii.gz");
    // (name, file the error must name, words one of which the reason must contain, corruption)
    let cases: Vec<Corruption> = vec![
        (
            "truncated gzip",
            "imagesTr",
            &["truncated", "unexpected end", "corrupt"],
            |d, c| {
                let p = d.join(format!("imagesTr/{c}.nii.gz"));
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() / 2]).unwrap();
            },
        ),
        ("not gzip", "imagesTr", &["gzip"], |d, c| {
            std::fs::write(
                d.join(format!("imagesTr/{c}.nii.gz")),
                b"plain text, not a volume",
            )
            .unwrap();
        }),
        ("dim[0] = 9", "imagesTr", &["dim[0]"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_i16(b, DIM, 9)
            })
        }),
        ("dim[0] = 0", "imagesTr", &["dim[0]"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_i16(b, DIM, 0)
            })
        }),
        ("zero dim", "imagesTr", &["dim[2]"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_i16(b, DIM + 4, 0)
            })
        }),
        ("negative dim", "labelsTr", &["dim[1]"], |d, c| {
            patch_header(&d.join(format!("labelsTr/{c}.nii.gz")), |b| {
                set_i16(b, DIM + 2, -5)
            })
        }),
        ("voxel cap", "imagesTr", &["exceeds the limit"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                for i in 1..=3 {
                    set_i16(b, DIM + 2 * i, 2000);
                }
            })
        }),
        ("zero pixdim", "imagesTr", &["pixdim[1]"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_f32(b, PIXDIM + 4, 0.0)
            })
        }),
        ("negative pixdim", "imagesTr", &["pixdim[2]"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_f32(b, PIXDIM + 8, -1.0)
            })
        }),
        ("NaN pixdim", "labelsTr", &["pixdim[3]"], |d, c| {
            patch_header(&d.join(format!("labelsTr/{c}.nii.gz")), |b| {
                set_f32(b, PIXDIM + 12, f32::NAN)
            })
        }),
        ("shape mismatch", "labelsTr", &["shape"], |d, c| {
            let p = d.join(format!("labelsTr/{c}.nii.gz"));
            let v = read_f32(&p);
            let dims = [v.dims[0] + 1, v.dims[1], v.dims[2]];
            let n = dims[0] * dims[1] * dims[2];
            volume::write_nifti(&p, &volume::Volume::new(vec![0u8; n], dims, 1, v.geometry))
                .unwrap();
        }),
        ("affine mismatch", "labelsTr", &["affine"], |d, c| {
            let p = d.join(format!("labelsTr/{c}.nii.gz"));
            let mut v = read_f32(&p).map(|x| x as u8);
            v.geometry.origin[0] += 5.0;
            volume::write_nifti(&p, &v).unwrap();
        }),
        (
            "non-integer label",
            "labelsTr",
            &["not an integer"],
            |d, c| {
                let p = d.join(format!("labelsTr/{c}.nii.gz"));
                let mut v = read_f32(&p);
                v.data[7] = 0.5;
                volume::write_nifti(&p, &v).unwrap();
            },
        ),
        ("NaN voxels", "imagesTr", &["NaN"], |d, c| {
            let p = d.join(format!("imagesTr/{c}.nii.gz"));
            let mut v = read_f32(&p);
            v.data[3] = f32::NAN;
            v.data[9] = f32::INFINITY;
            volume::write_nifti(&p, &v).unwrap();
        }),
        ("missing file", "labelsTr", &["missing"], |d, c| {
            std::fs::remove_file(d.join(format!("labelsTr/{c}.nii.gz"))).unwrap();
        }),
        // The rest of the malformed-NIfTI corpus (shared/volume/tests/corpus) that the rows
        // above do not cover, one row per kind of check, through the bus.
        ("sizeof_hdr", "imagesTr", &["sizeof_hdr = 1234"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_i32(b, 0, 1234)
            })
        }),
        (
            "NIfTI-2",
            "imagesTr",
            &["NIfTI-2 is not supported"],
            |d, c| {
                patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                    set_i32(b, 0, 540)
                })
            },
        ),
        ("bad magic", "labelsTr", &["magic"], |d, c| {
            patch_header(&d.join(format!("labelsTr/{c}.nii.gz")), |b| {
                b[MAGIC..MAGIC + 4].copy_from_slice(b"abc\x01")
            })
        }),
        ("bitpix", "imagesTr", &["bitpix = 3"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_i16(b, BITPIX, 3)
            })
        }),
        (
            "unknown datatype",
            "imagesTr",
            &["datatype = 999"],
            |d, c| {
                patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                    set_i16(b, DATATYPE, 999)
                })
            },
        ),
        (
            "NaN vox_offset",
            "imagesTr",
            &["vox_offset = NaN"],
            |d, c| {
                patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                    set_f32(b, VOX_OFFSET, f32::NAN)
                })
            },
        ),
        (
            "extension esize",
            "imagesTr",
            &["extension[0].esize = 20"],
            |d, c| {
                patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                    set_f32(b, VOX_OFFSET, 384.0);
                    b[348] = 1;
                    let mut ext = 20i32.to_le_bytes().to_vec();
                    ext.extend_from_slice(&6i32.to_le_bytes());
                    ext.resize(32, 0);
                    b.splice(352..352, ext);
                })
            },
        ),
        ("qfac", "imagesTr", &["pixdim[0] (qfac) = 0.5"], |d, c| {
            patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                set_i16(b, SFORM_CODE, 0);
                set_f32(b, PIXDIM, 0.5)
            })
        }),
        (
            "infinite scl_slope",
            "imagesTr",
            &["scl_slope = inf"],
            |d, c| {
                patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                    set_f32(b, SCL_SLOPE, f32::INFINITY)
                })
            },
        ),
        ("gzip CRC", "labelsTr", &["corrupt gzip stream"], |d, c| {
            let p = d.join(format!("labelsTr/{c}.nii.gz"));
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 8] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        }),
        (
            "gzip bomb",
            "imagesTr",
            &["gzip stream continues past the voxel data"],
            |d, c| {
                // A valid image followed by 64 MiB of zeros in the same stream (64 KB).
                patch_header(&d.join(format!("imagesTr/{c}.nii.gz")), |b| {
                    b.resize(b.len() + (64 << 20), 0)
                })
            },
        ),
        // Case names become object-key segments (storage::keys).
        (
            "traversing case name",
            "dataset.json",
            &["leaves the task folder"],
            |d, c| rename_image(d, c, "../../etc/x.nii.gz"),
        ),
        (
            "case name with a control character",
            "dataset.json",
            &["case name \"evil\\u{1}\" cannot be used in an object key"],
            |d, c| rename_image(d, c, "./imagesTr/evil\\u0001.nii.gz"),
        ),
        (
            "malformed dataset.json",
            "dataset.json",
            &["dataset.json", "JSON", "json"],
            |d, _| {
                std::fs::write(d.join("dataset.json"), b"{\"name\": \"x\", training: [").unwrap();
            },
        ),
    ];

    let mut failed_requests = Vec::new();
    for (name, file, words, corrupt) in cases {
        let dir = raw.path().join(name.replace([' ', '[', ']', '='], "_"));
        copy_dir(&good, &dir);
        corrupt(&dir, case);
        let ev = stack.request(&dir).await;
        let DatasetEvent::Failed(failed) = ev else {
            panic!("{name}: expected DatasetFailed, got {ev:?}");
        };
        assert!(!failed.errors.is_empty(), "{name}: no error listed");
        failed_requests.push((name, failed.request_id.clone(), file));
        let text = failed
            .errors
            .iter()
            .map(|e| format!("{} | {} | {}", e.case, e.file, e.reason))
            .collect::<Vec<_>>()
            .join("\n");
        eprintln!("{name}: {text}");
        assert!(
            text.contains(file),
            "{name}: error does not name {file}:\n{text}"
        );
        if file != "dataset.json" {
            assert!(
                text.contains(&img) || text.contains(&lab),
                "{name}: error does not name the case's file:\n{text}"
            );
        }
        assert!(
            words.iter().any(|w| text.contains(w)),
            "{name}: error does not say {words:?}:\n{text}"
        );
        assert_eq!(
            snapshot,
            tree(Path::new(&stack.store_url)),
            "{name}: the store changed (a dataset was written, or an existing one touched)"
        );
        assert_eq!(
            outside_snapshot,
            tree(&outside),
            "{name}: something was written next to the store"
        );
    }

    // Each refused request also left one dead letter, naming its request and the file.
    let js = async_nats::jetstream::new(stack.client.clone());
    let dead: Vec<protocol::JobFailed> = test_support::stream_payloads(
        &js,
        protocol::subjects::stream::DEADLETTER,
        protocol::subjects::DEADLETTER_PREPROCESS,
    )
    .await
    .iter()
    .map(|p| protocol::decode(p).unwrap())
    .collect();
    assert_eq!(dead.len(), failed_requests.len(), "{dead:#?}");
    for (name, request_id, file) in &failed_requests {
        let d = dead
            .iter()
            .find(|d| d.job_id == *request_id)
            .unwrap_or_else(|| panic!("{name}: no dead letter for {request_id}"));
        assert_eq!(d.original_subject, protocol::subjects::PREPROCESS_REQUESTS);
        assert_eq!(d.deliveries, 1, "{name}");
        assert!(d.reason.contains(file), "{name}: {}", d.reason);
    }
    stack.stop().await;
}
