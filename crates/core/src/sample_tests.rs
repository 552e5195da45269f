use super::*;

fn draw(t: f32, r: f32) -> SampleRow {
    SampleRow {
        temperature: t,
        r,
        ..Default::default()
    }
}

#[test]
fn greedy_takes_the_first_largest_and_skips_nan() {
    let g = SampleRow::default();
    assert_eq!(sample_row(&[0.1, 3.0, 3.0, -1.0], &g).unwrap(), 1);
    assert_eq!(sample_row(&[0.1, f32::NAN, 3.0], &g).unwrap(), 2);
    // The host arg-max keeps a NaN at index 0 (nothing compares larger).
    assert_eq!(sample_row(&[f32::NAN, 1.0, 3.0], &g).unwrap(), 0);
    assert_eq!(sample_row(&[f32::NEG_INFINITY; 3], &g).unwrap(), 0);
    assert_eq!(sample_row(&[0.0, f32::INFINITY, 1.0], &g).unwrap(), 1);
}

#[test]
fn bad_input_is_an_error() {
    assert!(sample_row(&[], &SampleRow::default()).is_err());
    assert!(sample_rows(&[1.0; 6], 0, &[]).is_err());
    assert!(sample_rows(&[1.0; 7], 3, &[]).is_err());
    let row = SampleRow {
        row: 2,
        ..Default::default()
    };
    assert!(sample_rows(&[1.0; 6], 3, &[row]).is_err());
    for bad in [
        SampleRow {
            temperature: f32::NAN,
            ..Default::default()
        },
        SampleRow {
            top_p: 0.0,
            ..Default::default()
        },
        SampleRow {
            min_p: 1.5,
            ..Default::default()
        },
        SampleRow {
            repeat_penalty: 0.0,
            ..Default::default()
        },
        SampleRow {
            frequency_penalty: f32::INFINITY,
            ..Default::default()
        },
        SampleRow {
            logit_bias: vec![(0, f32::NAN)],
            ..Default::default()
        },
        draw(1.0, 1.0),
        draw(1.0, -0.1),
    ] {
        assert!(sample_row(&[1.0, 2.0], &bad).is_err(), "{bad:?}");
    }
    // Nothing to draw from.
    assert!(sample_row(&[f32::NAN, f32::NEG_INFINITY], &draw(1.0, 0.5)).is_err());
}

#[test]
fn draws_skip_nan_and_share_infinity() {
    // r = 0 takes the best candidate; NaN is never drawn.
    assert_eq!(
        sample_row(&[f32::NAN, 1.0, 2.0], &draw(1.0, 0.0)).unwrap(),
        2
    );
    for i in 0..20 {
        let r = i as f32 / 20.0;
        let t = sample_row(&[f32::NAN, 5.0, f32::NAN], &draw(0.7, r)).unwrap();
        assert_eq!(t, 1);
        // Two +inf candidates split the probability, the lower id first.
        let l = [1.0, f32::INFINITY, 3.0, f32::INFINITY];
        let t = sample_row(&l, &draw(1.0, r)).unwrap();
        assert_eq!(t, if r <= 0.5 { 1 } else { 3 }, "r {r}");
    }
    // A tiny temperature overflows to +inf: greedy's pick.
    assert_eq!(sample_row(&[1.0, 2.0, 1.5], &draw(1e-38, 0.9)).unwrap(), 1);
}

#[test]
fn top_k_beyond_the_vocabulary_keeps_everything() {
    let l: Vec<f32> = (0..50).map(|i| ((i * 7) % 13) as f32 * 0.25).collect();
    for k in [0, 50, 51, 1 << 30] {
        for i in 0..10 {
            let r = SampleRow {
                top_k: k,
                ..draw(0.8, i as f32 / 10.0)
            };
            let base = SampleRow {
                top_k: 0,
                ..r.clone()
            };
            assert_eq!(sample_row(&l, &r).unwrap(), sample_row(&l, &base).unwrap());
        }
    }
}

#[test]
fn ties_are_ordered_by_id() {
    // Four equal candidates: r picks them in id order.
    let l = [0.0f32, 2.0, 2.0, -9.0, 2.0, 2.0];
    let picks: Vec<u32> = [0.1f32, 0.3, 0.6, 0.9]
        .iter()
        .map(|&r| {
            let row = SampleRow {
                top_k: 4,
                ..draw(1.0, r)
            };
            sample_row(&l, &row).unwrap()
        })
        .collect();
    assert_eq!(picks, vec![1, 2, 4, 5]);
    // top_k cuts a tie group by id.
    let row = SampleRow {
        top_k: 2,
        ..draw(1.0, 0.99)
    };
    assert_eq!(sample_row(&l, &row).unwrap(), 2);
}

#[test]
fn penalties_apply_in_order() {
    let row = SampleRow {
        logit_bias: vec![(0, 1.0), (0, 0.5), (9, 3.0)],
        repeat_penalty: 2.0,
        repeat_tokens: vec![0, 1, 7],
        presence_penalty: 0.25,
        frequency_penalty: 0.5,
        produced: vec![(1, 2), (2, 1)],
        ..Default::default()
    };
    let mut l = [1.0f32, -1.0, 3.0];
    row.apply_penalties(&mut l);
    assert_eq!(l, [1.25, -3.25, 2.25]);
}
