use crate::reference::values;
use candle_core::{Device, Result, Tensor};
use segmodel::{CheckpointError, SegTrainer, TrainConfig, UNetConfig};

fn cfg(channels: &[usize], classes: usize) -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        num_classes: classes,
        channels: channels.to_vec(),
        ..Default::default()
    }
}

fn trainer(c: &UNetConfig, seed: u64) -> SegTrainer {
    SegTrainer::new(c, TrainConfig::default(), seed, &Device::Cpu).unwrap()
}

#[test]
fn checkpoint_round_trip() -> Result<()> {
    // Compares two runs bit for bit: pinned to one SIMD level, which another test forcing
    // levels cannot change in between.
    simd::with_level(simd::detected(), || -> Result<()> {
        let c = cfg(&[4, 8], 2);
        let (a, mut b) = (trainer(&c, 1), trainer(&c, 2));
        let x = Tensor::randn(0f32, 1.0, (1, 1, 4, 6, 8), &Device::Cpu)?;
        assert_ne!(values(&a.predict(&x)?)?, values(&b.predict(&x)?)?);
        let bytes = a.save_checkpoint().unwrap();
        assert_eq!(
            bytes,
            a.save_checkpoint().unwrap(),
            "serialization is deterministic"
        );
        b.load_checkpoint(&bytes).unwrap();
        assert_eq!(values(&a.predict(&x)?)?, values(&b.predict(&x)?)?);
        Ok(())
    })
    .expect("the host's own level")
}

#[test]
fn checkpoint_errors_are_specific_and_leave_the_model_unchanged() -> Result<()> {
    // Compares two runs bit for bit: pinned to one SIMD level, which another test forcing
    // levels cannot change in between.
    simd::with_level(simd::detected(), || -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (1, 1, 4, 4, 4), &Device::Cpu)?;
        let mut target = trainer(&cfg(&[4, 8], 2), 1);
        let before = values(&target.predict(&x)?)?;

        let err = target.load_checkpoint(&trainer(&cfg(&[4, 8], 3), 2).save_checkpoint().unwrap());
        match err {
            Err(CheckpointError::ShapeMismatch {
                name,
                expected,
                found,
            }) => {
                assert_eq!(name, "head.bias");
                assert_eq!((expected, found), (vec![2], vec![3]));
            }
            other => panic!("expected a shape mismatch, got {other:?}"),
        }

        let err =
            target.load_checkpoint(&trainer(&cfg(&[4, 8, 16], 2), 2).save_checkpoint().unwrap());
        match err {
            Err(CheckpointError::UnexpectedTensors(names)) => {
                assert!(
                    names.contains(&"enc.2.conv1.weight".to_string()),
                    "{names:?}"
                )
            }
            other => panic!("expected unexpected tensors, got {other:?}"),
        }

        let err = target.load_checkpoint(&trainer(&cfg(&[4], 2), 2).save_checkpoint().unwrap());
        match err {
            Err(e @ CheckpointError::MissingTensors(_)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("enc.1.conv1.weight") && msg.contains("up.0.weight"),
                    "{msg}"
                );
            }
            other => panic!("expected missing tensors, got {other:?}"),
        }

        assert!(matches!(
            target.load_checkpoint(b"not safetensors"),
            Err(CheckpointError::Format(_))
        ));
        assert_eq!(values(&target.predict(&x)?)?, before);
        Ok(())
    })
    .expect("the host's own level")
}
