use protocol::{
    Dimension, Scale,
    strategy::{AUGMENTATIONS, LEARNING_RATE, paper_space, routine_strategy},
};
use search::{SearchSpace, SpaceError};

fn dim(name: &str, min: f64, max: f64, scale: Scale) -> Dimension {
    Dimension {
        name: name.to_owned(),
        min,
        max,
        scale,
    }
}

/// The searchers' space is protocol's vocabulary, dimension for dimension: a searcher never
/// proposes an augmentation the pipeline does not know, nor misses one it does.
#[test]
fn default_augmentation_is_the_papers_space() {
    let space = SearchSpace::default_augmentation();
    assert_eq!(space.dimensions(), paper_space());
    let names: Vec<&str> = space.names().collect();
    let mut want: Vec<&str> = AUGMENTATIONS.to_vec();
    want.push(LEARNING_RATE);
    assert_eq!(names, want);
    for d in &space.dimensions()[..8] {
        assert_eq!(
            (d.min, d.max, d.scale),
            (0.0, 1.0, Scale::Linear),
            "{}",
            d.name
        );
    }
    let lr = &space.dimensions()[8];
    assert_eq!((lr.min, lr.max, lr.scale), (1e-4, 1e-2, Scale::Log));
}

#[test]
fn log_and_linear_mappings() {
    let space = SearchSpace::default_augmentation();
    let mut unit = vec![0.25; 9];
    unit[8] = 0.5;
    let values = space.from_unit(&unit).unwrap();
    assert_eq!(values[0], 0.25);
    // Halfway between 1e-4 and 1e-2 on a log scale is 1e-3.
    assert!((values[8] - 1e-3).abs() < 1e-15);
    let back = space.to_unit(&values).unwrap();
    for (a, b) in back.iter().zip(&unit) {
        assert!((a - b).abs() < 1e-12);
    }
    // The ends map exactly to the range, outside values are clamped.
    let v = space.from_unit(&[1.0; 9]).unwrap();
    assert_eq!(v[8], 1e-2);
    let v = space.from_unit(&[-0.5; 9]).unwrap();
    assert_eq!((v[0], v[8]), (0.0, 1e-4));
    let u = space
        .to_unit(&[2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
        .unwrap();
    assert_eq!((u[0], u[8]), (1.0, 1.0));
}

#[test]
fn strategy_names_values_and_unit() {
    let space = SearchSpace::new(vec![
        dim("p_noise", 0.0, 1.0, Scale::Linear),
        dim("lr", 1e-5, 1e-1, Scale::Log),
        dim("epochs", 10.0, 30.0, Scale::Linear),
    ])
    .unwrap();
    let s = space.strategy(&[0.2, 0.25, 1.3]).unwrap();
    assert_eq!(s.values["p_noise"], 0.2);
    assert!((s.values["lr"] - 1e-4).abs() < 1e-18);
    assert_eq!(s.values["epochs"], 30.0);
    assert_eq!(s.unit["epochs"], 1.0);
    assert_eq!(s.unit["lr"], 0.25);
    assert_eq!(
        space.strategy(&[0.1, 0.2]),
        Err(SpaceError::WrongLength {
            expected: 3,
            got: 2
        })
    );
    let err = space.strategy(&[0.1, f64::NAN, 0.3]).unwrap_err();
    assert!(err.to_string().contains("`lr`"), "{err}");
}

#[test]
fn routine_is_half_with_learning_rate_1e4() {
    let space = SearchSpace::default_augmentation();
    let routine = space.routine_unit();
    assert_eq!(&routine[..8], &[0.5; 8]);
    assert_eq!(routine[8], 0.0);
    let s = space.strategy(&routine).unwrap();
    assert!((s.values[LEARNING_RATE] - 1e-4).abs() < 1e-18);
    assert_eq!(s.values["p_flip"], 0.5);
    // The `fixed` searcher's routine is the routine `segtune train` runs without a strategy.
    let want = routine_strategy();
    assert_eq!(
        s.values.keys().collect::<Vec<_>>(),
        want.values.keys().collect::<Vec<_>>()
    );
    for (name, v) in &want.values {
        assert!((s.values[name] - v).abs() < 1e-18, "{name}");
    }
}

#[test]
fn invalid_dimensions_are_named() {
    let cases = [
        (vec![dim("a", 1.0, 1.0, Scale::Linear)], "`a`"),
        (vec![dim("b", 2.0, 1.0, Scale::Linear)], "`b`"),
        (vec![dim("lr", 0.0, 1.0, Scale::Log)], "`lr`"),
        (vec![dim("lr", -1.0, 1.0, Scale::Log)], "`lr`"),
        (vec![dim("c", f64::NEG_INFINITY, 1.0, Scale::Linear)], "`c`"),
        (vec![dim("d", 0.0, f64::NAN, Scale::Linear)], "`d`"),
        (
            vec![
                dim("e", 0.0, 1.0, Scale::Linear),
                dim("e", 0.0, 2.0, Scale::Linear),
            ],
            "`e`",
        ),
    ];
    for (dims, name) in cases {
        let err = SearchSpace::new(dims.clone()).unwrap_err();
        assert!(err.to_string().contains(name), "{dims:?}: {err}");
    }
    assert_eq!(SearchSpace::new(vec![]), Err(SpaceError::Empty));
    assert_eq!(
        SearchSpace::new(vec![dim(" ", 0.0, 1.0, Scale::Linear)]),
        Err(SpaceError::EmptyName { index: 0 })
    );
}
