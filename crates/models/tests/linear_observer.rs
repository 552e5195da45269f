//! The linear observer: sees every linear layer's name and input in forward
//! order, leaves the model's outputs bit-identical, aborts the forward pass
//! on error, and is gone once removed.

use std::path::Path;
use std::sync::{Arc, Mutex};

use mm_backend_cpu::CpuBackend;
use mm_core::{Device, Error, Tensor};
use mm_formats::open_source;
use mm_models::{load_model, LinearObserver};

type Seen = (String, Vec<usize>, Vec<f32>);

#[test]
fn observer_sees_every_linear_and_changes_nothing() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny/llama");
    let src = open_source(&dir).unwrap();
    let cpu: Arc<dyn mm_core::Backend> = Arc::new(CpuBackend::new());
    let mut model = load_model(src.as_ref(), &Device::new(cpu.clone(), cpu), &|_, _| {}).unwrap();
    let ids: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % 320).collect();
    let run = |m: &mm_models::DecoderModel| {
        let mut cache = m.new_cache(32).unwrap();
        m.forward(&ids, &mut cache, true).unwrap().to_vec().unwrap()
    };
    let plain = run(&model);

    // (name, input shape, input values) per call.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = seen.clone();
    let observer: LinearObserver = Arc::new(move |name: &str, x: &Tensor| {
        s.lock()
            .unwrap()
            .push((name.to_string(), x.shape().to_vec(), x.to_vec()?));
        Ok(())
    });
    model.set_linear_observer(Some(observer));
    let observed = run(&model);
    assert!(
        plain
            .iter()
            .zip(&observed)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "logits changed under the observer"
    );

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let mut want = Vec::new();
    for l in 0..2 {
        for p in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
        ] {
            want.push((format!("model.layers.{l}.{p}.weight"), 64));
        }
        for (p, i) in [("gate_proj", 64), ("up_proj", 64), ("down_proj", 128)] {
            want.push((format!("model.layers.{l}.mlp.{p}.weight"), i));
        }
    }
    want.push(("lm_head.weight".to_string(), 64));
    let got: Vec<(String, usize)> = seen.iter().map(|(n, s, _)| (n.clone(), s[1])).collect();
    assert_eq!(got, want);
    assert!(seen.iter().all(|(_, s, _)| s[0] == ids.len()));
    let names: Vec<&str> = model.linears().iter().map(|l| l.name()).collect();
    assert_eq!(
        names,
        want.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    );
    // q, k and v (and gate and up) see the same input.
    assert_eq!(seen[0].2, seen[1].2);
    assert_eq!(seen[0].2, seen[2].2);
    assert_eq!(seen[4].2, seen[5].2);

    // An observer error aborts the forward pass.
    let failing: LinearObserver = Arc::new(|name: &str, _: &Tensor| {
        if name.contains("down_proj") {
            Err(Error::Other(format!("stop at {name}")))
        } else {
            Ok(())
        }
    });
    model.set_linear_observer(Some(failing));
    let mut cache = model.new_cache(32).unwrap();
    let e = model
        .forward(&ids, &mut cache, true)
        .unwrap_err()
        .to_string();
    assert_eq!(e, "stop at model.layers.0.mlp.down_proj.weight");

    model.set_linear_observer(None);
    let after = run(&model);
    assert!(plain
        .iter()
        .zip(&after)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}
